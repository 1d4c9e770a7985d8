import sys

from mdist.cli import main

sys.exit(main())
