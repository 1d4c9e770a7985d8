"""Named distillation strategies (thesis table 3.1) and layer mappings g(m).

Terms: `mlm` (hard CE), `kl` (Hinton soft targets), `hid` (hidden MSE or COS), `att` (pre-softmax
attention-score MSE), `emb` (embedding-output MSE). Default weights are the equal convex combination
of a strategy's terms (the thesis writes every loss as a convex combination); each can be overridden,
as long as the result stays convex (`resolve_weights`).
"""
from __future__ import annotations

from dataclasses import dataclass

from mdist.errors import ConfigError

WEIGHT_SUM_TOLERANCE = 1e-6  # the authors' 0.0005 + 0.0005 + 3 × 0.333 is 1 only up to float rounding


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
INIT_MAPPINGS = ("uniform", "top", "bottom")  # those that give every student layer a teacher layer to copy (baselines)


def resolve_weights(strategy: str, overrides: dict[str, float] | None) -> dict[str, float]:
    """The strategy's default weights with `overrides` merged in. Refused unless every override names a
    term of the strategy and the result is convex (each >= 0, sum 1): a partial override would otherwise
    sum past 1 silently, and rescaling it would change the values the user wrote."""
    terms = STRATEGIES[strategy].terms
    weights = STRATEGIES[strategy].default_weights()
    for term, weight in (overrides or {}).items():
        if term not in terms:
            raise ConfigError(f"config key 'loss.weights.{term}': strategy '{strategy}' has no term '{term}' (its terms: {', '.join(terms)})")
        if not weight >= 0:  # NaN too: it would pass the sum check below
            raise ConfigError(f"config key 'loss.weights.{term}' must be >= 0, got {weight}")
        weights[term] = weight
    total = sum(weights.values())
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        listed = ", ".join(f"{term}={weight:g}" for term, weight in weights.items())
        raise ConfigError(
            f"config key 'loss.weights': the weights ({listed}; unset terms keep 1/{len(terms)}) sum to {total:g}, "
            f"not 1; give every term of strategy '{strategy}' ({', '.join(terms)}) so that they sum to 1"
        )
    return weights


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
