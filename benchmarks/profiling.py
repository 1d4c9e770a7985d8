"""One call of a function under torch.profiler: the time of each kernel it ran (device time on a GPU,
CPU op time elsewhere), self time only, so nothing is counted twice. Shared by throughput.py
(`--profile`: a step by category) and loss_kernels.py (`--profile`: one op's largest kernels); both
record what they print in one table per run (`HEADER`), so figures quoted from a profile are in
benchmarks/RESULTS.md like every other."""
from __future__ import annotations

from typing import Callable

import torch

from recording import markdown_header, markdown_row

HEADER = ("date (UTC)", "device", "commit", "profiled", "work or kernel", "ms", "calls")


def kernel_times(run: Callable[[], object], cuda: bool) -> list[tuple[str, float, int]]:
    """(kernel or op name, ms, calls) of everything `run()` launched, largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    times = []
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0 and (not cuda or event.device_type == torch.autograd.DeviceType.CUDA):
            times.append((event.key, us / 1e3, event.count))
    return sorted(times, key=lambda kernel: -kernel[1])


def print_largest(times: list[tuple[str, float, int]], count: int, what: str) -> list[list[str]]:
    """Print the `count` largest kernels; returns them as (kernel, ms, calls) cells."""
    print(f"the {min(count, len(times))} largest {what}:")
    print(markdown_header(["kernel", "ms", "calls"]))
    cells = [[name[:120].replace("|", "/"), f"{ms:.2f}", str(calls)] for name, ms, calls in times[:count]]
    for row in cells:
        print(markdown_row(row))
    return cells
