"""The representations retrieval is scored on: every single layer, and the thesis's layer sets.

Hidden state k is `hidden_states[k]` of a Hugging Face encoder: k = 0 is the embedding output,
k = 1..N the outputs of the N transformer layers. The layer sets take transformer layers only
(never the embedding output), over layers 1..N:

- `all`:               1, 2, ..., N
- `every_second_odd`:  1, 3, 5, ... (thesis §4.3.1: "every second layer representation, i.e. the 1th, 3th,
                       5th, 7th, 9th and 11th layer", read in this 1-based numbering)
- `every_second_even`: 2, 4, ... (the same words read 0-based; the uniform mapping's layers, with the
                       top layer when N is even; N = 1: layer 1)
- `top4`:              the top min(4, N) layers, N-3 .. N (all layers when N <= 4, likewise below)
- `middle4`:           min(4, N) consecutive layers centred in 1..N, starting at (N - 4) // 2 + 1
                       (N = 12: 5..8; N = 6: 2..5)
- `bottom4`:           the bottom min(4, N) layers, 1 .. 4

A token's vector for a set is the mean of its hidden states over the set's layers.
"""
from __future__ import annotations

LAYER_SETS = ("all", "every_second_odd", "every_second_even", "top4", "middle4", "bottom4")


def layer_sets(num_layers: int) -> dict[str, list[int]]:
    """The set name -> hidden-state indices, for an encoder with `num_layers` transformer layers."""
    if num_layers < 1:
        raise ValueError(f"an encoder needs at least one transformer layer, got {num_layers}")
    n, k = num_layers, min(4, num_layers)
    middle_start = max(1, (n - k) // 2 + 1)
    return {
        "all": list(range(1, n + 1)),
        "every_second_odd": list(range(1, n + 1, 2)),
        "every_second_even": list(range(2, n + 1, 2)) or [1],
        "top4": list(range(n - k + 1, n + 1)),
        "middle4": list(range(middle_start, middle_start + k)),
        "bottom4": list(range(1, k + 1)),
    }


def representations(num_layers: int) -> dict[str, list[int]]:
    """Every scored representation in report order: layer_0 .. layer_N, then the layer sets."""
    single = {f"layer_{k}": [k] for k in range(num_layers + 1)}
    return single | layer_sets(num_layers)
