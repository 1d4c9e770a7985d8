"""A real one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd from
Debian's packages (slurmctld slurmd slurm-client munge), started as root in a private directory.

Everything the cluster writes (munge key and socket, slurm.conf, state, spool, pid and log files) is
in that directory and its ports are free ones, so it touches no system SLURM or munge. Clients find
it through SLURM_CONF (`LocalSlurm.env`). The node declares the machine's real CPUs and memory, as
`slurmd -C` prints them. `stop()` cancels what is still queued and stops each daemon by its pid.

Two settings make the tests quick where a production cluster is patient: `cred_expire=5` (a
requeued job may start again after 6 s, not 121 s) and `sched_interval=1` (the scheduler looks at
pending jobs every second, not every minute).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from mdist.engine import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")
NODE_FIELDS = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class SlurmUnavailable(RuntimeError):
    """Why SLURM cannot run here (one line)."""


def missing_requirement() -> str | None:
    """One line saying why no local cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"SLURM not installed (missing {', '.join(missing)}): apt-get install slurmctld slurmd slurm-client munge"
    return None


def node_resources() -> str:
    """`CPUs=.. Boards=.. ... RealMemory=..` of this machine, from `slurmd -C`."""
    printed = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", printed.splitlines()[0]))
    return " ".join(f"{key}={fields[key]}" for key in NODE_FIELDS)


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._daemons: list[tuple[str, subprocess.Popen]] = []

    def start(self, timeout: float = 30) -> "LocalSlurm":
        """Start munged, slurmctld and slurmd; return once the node takes jobs (else SlurmUnavailable)."""
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        socket = self.root / "munge.sock"
        self.conf.write_text(self._slurm_conf(socket, node_resources()))
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={socket}", f"--key-file={key}",
                               f"--pid-file={self.root / 'munged.pid'}", f"--seed-file={self.root / 'munged.seed'}",
                               f"--log-file={self.root / 'munged.log'}"])
        self._wait_for(socket.exists, timeout, "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait_for(lambda: self._node_state() in ("idle", "mixed", "allocated"), timeout, "the node did not become idle")
        return self

    def _slurm_conf(self, socket: Path, resources: str) -> str:
        root = self.root
        return f"""\
ClusterName=mdisttest
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket},cred_expire=5
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 {resources} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / f"{name}.out", "wb")
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

    def _node_state(self) -> str:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def stop(self) -> None:
        """Cancel every job left, then stop slurmd, slurmctld and munged, each by its pid."""
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
