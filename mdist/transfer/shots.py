"""Few-shot samples: every k is a prefix of one seeded shuffle of the shots file, so the samples are
nested (the 10 shots lie inside the 100, inside the 500) and a larger k only adds examples."""
from __future__ import annotations

import random


def nested_shots(pool: list, ks: list[int], seed: int) -> dict[int, list[int]]:
    """Indices into `pool` of the k examples of every k: the first k of one shuffle seeded with `seed`."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return {k: order[:k] for k in ks}
