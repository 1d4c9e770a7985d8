"""One rank of a launcher test: joins the process group as mdist does, then writes what it saw to
DIR/rank<R>.json (a file per rank: prints on a shared pipe interleave): rank, world size, local
rank, host, every rank's (rank, local rank, host), the rendezvous address and where it resolves, and
the TCP connections the rank holds after a collective (the store's and gloo's pairs) as (local,
remote) addresses (tests/test_slurm.py, tests/test_multinode.py)."""
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path

import psutil
import torch

from mdist.engine import gather_objects, init_distributed, shutdown_distributed



def _ipv4(address: str) -> str:
    """`::ffff:10.0.0.1` (an IPv4 peer of a dual-stack socket, as the store's) as 10.0.0.1."""
    return str(getattr(ipaddress.ip_address(address), "ipv4_mapped", None) or address)


rank, world = init_distributed()
host, local_rank = socket.gethostname(), int(os.environ["LOCAL_RANK"])
group = gather_objects((rank, local_rank, host))  # a collective: gloo's pairs are connected now
connections = sorted({(_ipv4(c.laddr.ip), _ipv4(c.raddr.ip)) for c in psutil.Process().net_connections("tcp") if c.raddr})
report = {"rank": rank, "world": world, "local_rank": local_rank, "host": host, "group": group, "master": os.environ["MASTER_ADDR"],
          "master_ip": socket.gethostbyname(os.environ["MASTER_ADDR"]), "connections": connections}
(Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(report))
shutdown_distributed()
