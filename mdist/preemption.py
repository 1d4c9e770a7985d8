"""Pre-emption signals: SIGTERM / SIGUSR1 (SLURM, `scancel --signal`, a time limit) ask the run to stop.

They only set a flag; the training loop saves at the next step boundary, every rank agrees on
stopping (a MAX all-reduce of the flag, as the signal may reach ranks at different times) and the
run exits with code 0. Schedulers signal every process of a task, data-loader workers included: a
worker killed by the signal would take the run down before it saves, so workers ignore them
(`ignore_stop_signals`) and stop when the trainer closes its loader.
"""
from __future__ import annotations

import signal

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(*_) -> None:
    """For child processes (a DataLoader's `worker_init_fn`): leave stopping to the trainer."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopFlag:
    """SIGTERM / SIGUSR1 set a flag; the training loop checks it at step boundaries."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self) -> bool:
        """True on every rank when any rank has been signalled (a collective: call on all ranks)."""
        local = self.signum is not None
        if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
            return local
        flag = torch.tensor([1 if local else 0], dtype=torch.int32, device="cuda" if torch.cuda.is_available() else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
