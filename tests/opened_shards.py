"""`python -m mdist` that records the shard files this process opens: an audit hook sees every `open`
(run it with data.num_workers=0, so the rank itself reads its shards) and, at exit, the paths of the
.tar files go to DIR/<host>-<SLURM_PROCID>.json (tests/test_multinode.py). Usage: opened_shards.py DIR ARGS..."""
import atexit
import json
import os
import socket
import sys
from pathlib import Path

from mdist.cli import main

report, opened = Path(sys.argv.pop(1)) / f"{socket.gethostname()}-{os.environ['SLURM_PROCID']}.json", set()
sys.addaudithook(lambda event, args: opened.add(str(args[0])) if event == "open" and str(args[0]).endswith(".tar") else None)
atexit.register(lambda: report.write_text(json.dumps(sorted(opened))))
sys.exit(main())
