"""Zero-shot transfer strategies for monolingual students (thesis §3.3), as data.

A strategy says on which student the English task data trains (`trains`), which parameters train
(`part`; the task head always does), and how the result reaches the evaluated target student:
- FULL-SRC / FULL-TRG: all of S_src / S_trg; evaluated with that same model (FULL-SRC is evaluated
  on target-language data with the source student: the thesis's naive baseline);
- FREEZE +k: S_src frozen, k fresh layers on top + head train, then move onto S_trg;
- ADAPT-* / BitFit-*: adapters / biases (+ head); SRC trains on S_src and moves them onto S_trg,
  TRG trains on S_trg, JOINT trains one shared set on both students with the averaged loss;
- SFT: all of S_src but the (frozen, shared) embeddings; every update Δθ is also added to S_trg.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from mdist.errors import ConfigError

PARTS = ("all", "top", "adapters", "bias", "all-but-embeddings")


@dataclass(frozen=True)
class TransferStrategy:
    name: str
    trains: str  # "src" | "trg" | "joint"
    part: str  # one of PARTS
    extra_layers: int = 0
    mirror: bool = False  # SFT: source updates are added to the target as they happen

    @property
    def evaluates(self) -> str:
        """The student that answers on target-language data."""
        return "src" if self.trains == "src" and self.part == "all" else "trg"

    @property
    def moves(self) -> bool:
        """Trained parameters are copied from S_src onto S_trg after training."""
        return self.trains == "src" and self.evaluates == "trg" and not self.mirror

    @property
    def parameter_efficient(self) -> bool:
        """New or few parameters train: the thesis's higher learning rate (1e-4 instead of 2e-5)."""
        return self.part in ("top", "adapters", "bias")

    @property
    def adapters(self) -> bool:
        return self.part == "adapters"

    def trains_parameter(self, name: str, base_layers: int) -> bool:
        """Whether the TaskModel parameter `name` trains (names as in `TaskModel.named_parameters`)."""
        if name.startswith("head."):
            return True
        if self.part == "all":
            return True
        if self.part == "all-but-embeddings":
            return not name.startswith("encoder.embeddings.")
        if self.part == "adapters":
            return ".adapter." in name
        if self.part == "bias":
            return name.endswith(".bias")
        match = re.match(r"encoder\.encoder\.layer\.(\d+)\.", name)  # "top": the fresh layers
        return bool(match) and int(match.group(1)) >= base_layers


STRATEGIES: dict[str, TransferStrategy] = {
    s.name: s
    for s in (
        TransferStrategy("full-src", "src", "all"),
        TransferStrategy("full-trg", "trg", "all"),
        TransferStrategy("adapter-src", "src", "adapters"),
        TransferStrategy("adapter-trg", "trg", "adapters"),
        TransferStrategy("adapter-joint", "joint", "adapters"),
        TransferStrategy("bitfit-src", "src", "bias"),
        TransferStrategy("bitfit-trg", "trg", "bias"),
        TransferStrategy("bitfit-joint", "joint", "bias"),
        TransferStrategy("sft", "src", "all-but-embeddings", mirror=True),
        *(TransferStrategy(f"freeze+{k}", "src", "top", extra_layers=k) for k in (0, 1, 2)),
    )
}
_FREEZE = re.compile(r"^freeze\+(\d+)$")


def get_strategy(name: str) -> TransferStrategy:
    """A strategy by name; `freeze+k` takes any k ≥ 0 (the thesis reports 0, 2 and 4)."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    match = _FREEZE.match(name)
    if match:
        return TransferStrategy(name, "src", "top", extra_layers=int(match.group(1)))
    raise ConfigError(f"unknown transfer strategy '{name}' (known: {', '.join(STRATEGIES)}, freeze+k for any k)")
