"""`python -m mdist` with one rank that never arrives: rank $STALL_RANK sleeps where it would read its
held-out text, just before the run's first barrier (tests/test_multirank.py)."""
import os
import sys
import time

import mdist.run
from mdist.cli import main

if os.environ["RANK"] == os.environ["STALL_RANK"]:
    mdist.run.read_heldout = lambda cfg: time.sleep(600)
sys.exit(main())
