"""Real SLURM clusters on this machine for the tests: munged, slurmctld and one slurmd per node from
Debian's packages (slurmctld slurmd slurm-client munge), started as root in a private directory.

- `LocalSlurm(root)`: one node, `localhost`, in the machine's own network.
- `LocalSlurm(root, nodes=2)`: each node a network namespace (`NodeNetwork`) with its own address on
  a bridge, its own hostname and hosts file and no loopback address at all: anything that reaches a
  rank over 127.0.0.1 fails there, so a test passing on it used the bridge. slurmctld runs beside the
  nodes on the bridge's address; the machine's real CPUs and memory are split between the nodes.

Everything the cluster writes (munge key and socket, slurm.conf, state, spool, pid and log files) is
in that directory and its ports are free ones, so it touches no system SLURM or munge. Clients find
it through SLURM_CONF (`LocalSlurm.env`). `stop()` cancels what is still queued, stops each daemon
by its pid and removes the namespaces and the bridge.

Two settings make the tests quick where a production cluster is patient: `cred_expire=5` (a
requeued job may start again after 6 s, not 121 s) and `sched_interval=1` (the scheduler looks at
pending jobs every second, not every minute); `SlurmdTimeout=10` declares a lost node down within
about 15 s.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mdist.engine import free_port, without_launcher_variables

ROOT = Path(__file__).resolve().parents[1]  # the checkout under test: the nodes import mdist from it
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")
NETWORK_TOOLS = ("ip", "nsenter", "unshare")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class SlurmUnavailable(RuntimeError):
    """Why SLURM cannot run here (one line)."""


def missing_requirement(nodes: int = 1) -> str | None:
    """One line saying why a local cluster of `nodes` nodes cannot be started here, or None."""
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"SLURM not installed (missing {', '.join(missing)}): apt-get install slurmctld slurmd slurm-client munge"
    if nodes > 1:
        missing = [name for name in NETWORK_TOOLS if shutil.which(name) is None]
        if missing:
            return f"no tools for network namespaces (missing {', '.join(missing)}): apt-get install iproute2 util-linux"
        if nodes > os.cpu_count():
            return f"{nodes} nodes need as many CPUs; this machine has {os.cpu_count()}"
    return None


def machine_resources() -> dict[str, int]:
    """This machine's CPUs and memory (MB), as `slurmd -C` prints them."""
    printed = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", printed.splitlines()[0]))
    return {"CPUs": int(fields["CPUs"]), "RealMemory": int(fields["RealMemory"])}


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    namespace: str | None = None  # its network namespace (None: the machine's own network)


class NodeNetwork:
    """`count` nodes, each a network namespace joined to a bridge by a veth pair.

    Inside each namespace the veth is called `INTERFACE` (as every node of a real cluster names its
    NIC alike, so one GLOO_SOCKET_IFNAME fits all), there is no default route (a reverse lookup with
    nowhere to go would wait ~10 s in gloo's rendezvous) and the loopback is up without an address.
    Names carry this process's id and the subnet is one no interface uses yet, so two test sessions
    never meet."""

    INTERFACE = "eth0"

    def __init__(self, root: Path, count: int):
        subnet = _unused_subnet()
        tag = f"md{os.getpid()}"
        self.bridge = f"{tag}br"
        self.gateway = str(subnet.network_address + 1)
        self.prefix = subnet.prefixlen
        self.nodes = [Node(f"n{i}", str(subnet.network_address + 10 + i), f"{tag}n{i}") for i in range(1, count + 1)]
        self.hosts = root / "hosts"
        self.controller = socket.gethostname()
        self._created: list[str] = []  # namespaces, then the bridge, in order of creation

    def create(self) -> None:
        self.hosts.write_text("".join(f"{addr} {name}\n" for addr, name in ((self.gateway, self.controller), *((n.address, n.name) for n in self.nodes))))
        _ip("link", "add", self.bridge, "type", "bridge")
        self._created.append(self.bridge)
        _ip("addr", "add", f"{self.gateway}/{self.prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for node in self.nodes:
            _ip("netns", "add", node.namespace)
            self._created.append(node.namespace)
            _ip("link", "add", node.namespace, "type", "veth", "peer", "name", self.INTERFACE, "netns", node.namespace)
            _ip("link", "set", node.namespace, "master", self.bridge, "up")
            inside = ("-n", node.namespace)
            _ip(*inside, "addr", "add", f"{node.address}/{self.prefix}", "dev", self.INTERFACE)
            _ip(*inside, "link", "set", self.INTERFACE, "up")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "flush", "dev", "lo")  # 127.0.0.1 and ::1 gone: local traffic only to the node's own address

    def enter(self, node: Node) -> list[str]:
        """A command prefix that runs the rest inside `node`: its network, hostname and hosts file.
        nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup tree slurmd insists on."""
        return ["nsenter", f"--net=/run/netns/{node.namespace}", "unshare", "--uts", "--mount", "--propagation", "private",
                "sh", "-c", f'hostname {node.name} && mount --bind {self.hosts} /etc/hosts && exec "$@"', "sh"]

    def pids(self, node: Node) -> list[int]:
        """Every process in `node`'s network namespace."""
        return [int(pid) for pid in _ip("netns", "pids", node.namespace).split()]

    def remove(self) -> None:
        """Delete the namespaces and the bridge; wait until the kernel has freed their links (it does so
        asynchronously: a new network made at once would meet the old names)."""
        for name in reversed(self._created):
            if name == self.bridge:
                subprocess.run(["ip", "link", "del", name], capture_output=True)
            else:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        deadline = time.monotonic() + 30
        while self._created and time.monotonic() < deadline:
            links = _ip("-br", "link")
            if not any(name in links for name in self._created):
                break
            time.sleep(0.2)
        self._created = []


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _unused_subnet() -> ipaddress.IPv4Network:
    """The first 10.213.X.0/24 that no interface of this machine has an address in."""
    used = _ip("-4", "-o", "addr")
    for third in range(256):
        if f" 10.213.{third}." not in used:
            return ipaddress.IPv4Network(f"10.213.{third}.0/24")
    raise SlurmUnavailable("every 10.213.X.0/24 is in use")


class LocalSlurm:
    def __init__(self, root: Path, nodes: int = 1):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.network = NodeNetwork(root, nodes) if nodes > 1 else None
        self.nodes = self.network.nodes if self.network else [Node("localhost", "127.0.0.1")]
        self._daemons: list[tuple[str, subprocess.Popen]] = []

    def start(self, timeout: float = 30) -> "LocalSlurm":
        """Start munged, slurmctld and a slurmd per node; return once every node takes jobs (else SlurmUnavailable)."""
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            (self.root / "spool" / node.name).mkdir(exist_ok=True)  # slurmd does not create its %n directory
        if self.network:
            self.network.create()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        socket_path = self.root / "munge.sock"
        self.conf.write_text(self._slurm_conf(socket_path))
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
                               f"--pid-file={self.root / 'munged.pid'}", f"--seed-file={self.root / 'munged.seed'}",
                               f"--log-file={self.root / 'munged.log'}"])
        self._wait_for(socket_path.exists, timeout, "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for node in self.nodes:
            self.start_node(node)
        self.wait_until_idle(timeout)
        return self

    def start_node(self, node: Node) -> None:
        """Start `node`'s slurmd (again, after `kill_node`)."""
        command = ["slurmd", "-D", "-N", node.name, "-f", str(self.conf)]
        self._spawn(f"slurmd-{node.name}", self.network.enter(node) + command if self.network else command)

    def kill_node(self, node: Node) -> list[int]:
        """SIGKILL every process of `node` (its slurmd, step daemons and tasks), as a power cut would; their pids."""
        pids = self.network.pids(node)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for name, proc in self._daemons:
            if name == f"slurmd-{node.name}":
                proc.wait()
        self._daemons = [(name, proc) for name, proc in self._daemons if name != f"slurmd-{node.name}"]
        return pids

    def _slurm_conf(self, socket_path: Path) -> str:
        root, machine = self.root, machine_resources()
        cpus, memory = machine["CPUs"] // len(self.nodes), machine["RealMemory"] // len(self.nodes)
        controller = f"{self.network.controller}({self.network.gateway})" if self.network else "localhost"
        nodes = "".join(f"NodeName={n.name} NodeAddr={n.address} CPUs={cpus} RealMemory={memory} State=UNKNOWN\n" for n in self.nodes)
        return f"""\
ClusterName=mdisttest
SlurmctldHost={controller}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path},cred_expire=5
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool' / '%n'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd-%n.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd-%n.log'}
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=10
SlurmctldTimeout=10
KillWait=10
{nodes}PartitionName=debug Nodes={','.join(n.name for n in self.nodes)} Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self._daemons.append((name, subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)))
        log.close()

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self._daemons:
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with {proc.returncode}: {self._tail(name)}")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"{what} within {timeout:.0f} s: {self._tail(self._daemons[-1][0])}")
            time.sleep(0.2)

    def _tail(self, name: str) -> str:
        logs = [self.root / f"{name}.out", self.root / f"{name}.log"]
        lines = [line for log in logs if log.exists() for line in log.read_text(errors="replace").splitlines()]
        return " | ".join(lines[-3:]) or "(no output)"

    def _idle_nodes(self) -> int:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return sum(state in ("idle", "mix", "alloc") for state in proc.stdout.split()) if proc.returncode == 0 else 0

    def wait_until_idle(self, timeout: float = 30) -> None:
        """Until every node takes jobs again (a restarted slurmd registers within a second or two)."""
        self._wait_for(lambda: self._idle_nodes() == len(self.nodes), timeout, "the nodes did not become idle")

    def stop(self) -> None:
        """Cancel every job left, stop the slurmds, slurmctld and munged, each by its pid, then kill what
        is left in the nodes' namespaces (tasks of a lost node) and remove the network."""
        try:
            if self._daemons:
                subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True, timeout=30)
                deadline = time.monotonic() + 30
                while self.queued() and time.monotonic() < deadline:
                    time.sleep(0.5)
            for name, proc in reversed(self._daemons):
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._daemons = []
        finally:
            if self.network:
                namespaces = _ip("netns", "list")
                for node in self.nodes:
                    for pid in self.network.pids(node) if node.namespace in namespaces else []:
                        os.kill(pid, signal.SIGKILL)
                self.network.remove()

    def user_env(self) -> dict:
        """What a user's shell exports to sbatch / srun: this cluster, the checkout under test, the
        interpreter, DeepSpeed's CPU accelerator; on namespace nodes, the interface gloo must use."""
        env = without_launcher_variables(os.environ)
        env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
        env.update(SLURM_CONF=str(self.conf), PYTHON=sys.executable, DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        if self.network:
            env["GLOO_SOCKET_IFNAME"] = NodeNetwork.INTERFACE
        return env

    def queued(self) -> list[str]:
        return subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True).stdout.split()

    def sbatch(self, *args: str, env: dict, cwd: Path) -> str:
        """Submit with `env` (which names this cluster's SLURM_CONF); return the job id."""
        proc = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ...); kept MinJobAge (300 s) after the job's end."""
        printed = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True, text=True, check=True).stdout
        return dict(re.findall(r"(\w+)=(\S*)", printed))

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """Poll until the job has ended for good (a requeued job passes through PENDING again); its last `job()`."""
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["JobState"] not in FINAL_STATES:
            assert time.monotonic() < deadline, f"job {job_id} still {job['JobState']} after {timeout:.0f} s"
            time.sleep(0.2)
        return job
