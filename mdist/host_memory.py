"""CPU ranks: a freed tensor's memory goes back to the system, so that a rank's resident memory is its live
tensors, which is what `mdist plan` models.

glibc serves an allocation above its mmap threshold with a mapping of its own, returned to the system when
freed; smaller ones come from the heap, whose freed chunks stay resident. The threshold starts at 128 KiB
and rises to the size of every larger mapping freed, up to 32 MiB, so after the teacher's loading and the
first steps every tensor up to 32 MiB comes from the heap and stays resident once freed:
benchmarks/real_size.py measured 0.9-1.4 GiB of free heap per rank, peaks 1.32-1.37 × the plan. A fixed
threshold (setting it also stops the rising) removes that slack. At 1 MiB the tiny recipe took as many
page faults as with glibc's default (152 k in 600 steps); at 64 KiB 3.5 times as many and about 12 %
longer (ad-hoc interleaved timings on a 2-core CPU, 2026-12-07, not a benchmark row). GPU ranks keep tensors in CUDA memory: nothing to do there.
"""
from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 1024 * 1024


def return_freed_tensors_to_the_system() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD; False where the C library is not glibc (nothing changed)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
