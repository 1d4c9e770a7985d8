"""Named distillation strategies (thesis table 3.1) and layer mappings g(m).

Terms: `mlm` (hard CE), `kl` (Hinton soft targets), `hid` (hidden MSE or COS), `att` (pre-softmax
attention-score MSE), `emb` (embedding-output MSE). Default weights are the equal convex combination
of a strategy's terms (the thesis writes every loss as a convex combination); each can be overridden.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    terms: tuple[str, ...]
    mapping: str = "uniform"
    hidden_loss: str = "mse"  # mse | cos

    def default_weights(self) -> dict[str, float]:
        return {term: 1.0 / len(self.terms) for term in self.terms}


_FULL = ("mlm", "kl", "hid", "att", "emb")

STRATEGIES: dict[str, Strategy] = {
    "hinton": Strategy(("mlm", "kl")),
    "hinton_hid": Strategy(("mlm", "kl", "hid")),
    "hinton_hid_att": Strategy(("mlm", "kl", "hid", "att")),
    "monoshot": Strategy(_FULL, mapping="uniform"),
    "tinybert": Strategy(("hid", "att", "emb")),
    "hinton_hidcos_att_emb": Strategy(_FULL, hidden_loss="cos"),
    "hinton_hidcos_att_emb_bottom": Strategy(_FULL, mapping="bottom", hidden_loss="cos"),
    "hinton_hid_att_emb_top": Strategy(_FULL, mapping="top"),
    "hinton_hid_att_emb_bottom": Strategy(_FULL, mapping="bottom"),
    "monoalignment": Strategy(_FULL, mapping="last"),
}

MAPPINGS = ("uniform", "top", "bottom", "last")


def layer_mapping(name: str, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Pairs (m, g(m)) of student layer m (1..M) and teacher layer g(m) (1..N); 0 is the embedding output."""
    M, N = student_layers, teacher_layers
    if M > N:
        raise ValueError(f"a student with {M} layers cannot be mapped onto a teacher with {N}")
    if name == "uniform":
        return [(m, round(m * N / M)) for m in range(1, M + 1)]
    if name == "top":
        return [(m, m + N - M) for m in range(1, M + 1)]
    if name == "bottom":
        return [(m, m) for m in range(1, M + 1)]
    if name == "last":
        return [(M, N)]
    raise ValueError(f"unknown mapping '{name}' (known: {', '.join(MAPPINGS)})")
