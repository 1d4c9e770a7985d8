"""Pfeiffer bottleneck adapters after each layer's feed-forward block (thesis §2.3.1, §3.3.3).

The placement and wiring follow the `SeqBnConfig` ("Pfeiffer") of the adapters library:
original LayerNorm before and after, residual taken before it, ReLU, reduction factor 16:

    f = dropout(W_out · ffn)                 # the layer's own FFN output
    h = LN(f + x)                            # the layer's own LayerNorm
    out = LN(f + up(relu(down(h))) + x)      # the same LayerNorm again

With `up` initialised near zero, a layer with an adapter computes what it computed before, so the
frozen student starts from its pre-trained function. Pre-LN layers (XLM-R XL, no LayerNorm in the
output block) take the adapter on the residual branch: out = f + up(relu(down(f))) + x.
"""
from __future__ import annotations

import torch
from torch import nn

REDUCTION_FACTOR = 16
INIT_STD = 0.02  # the adapters library's default `init_weights="bert"` of `BnConfig`: normal(0, 0.02) weights, zero biases


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, reduction_factor: int = REDUCTION_FACTOR):
        super().__init__()
        self.down = nn.Linear(hidden, max(1, hidden // reduction_factor))
        self.up = nn.Linear(self.down.out_features, hidden)
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=INIT_STD)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(hidden)))


class OutputWithAdapter(nn.Module):
    """A layer's output block (dense, dropout, [LayerNorm]) with an adapter after the FFN.

    The wrapped block keeps its own parameters under `.block`, so they stay the student's weights.
    """

    def __init__(self, block: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.block = block
        self.adapter = adapter

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        f = self.block.dropout(self.block.dense(hidden_states))
        norm = getattr(self.block, "LayerNorm", None)
        if norm is None:
            return f + self.adapter(f) + input_tensor
        return norm(f + self.adapter(norm(f + input_tensor)) + input_tensor)


def insert_adapters(layers: nn.ModuleList, adapters: nn.ModuleList) -> None:
    """Put adapter i after the FFN of layer i (the same module objects: joint training shares them)."""
    if len(layers) != len(adapters):
        raise ValueError(f"{len(adapters)} adapters for {len(layers)} layers")
    for layer, adapter in zip(layers, adapters):
        layer.output = OutputWithAdapter(layer.output, adapter)


def new_adapters(num_layers: int, hidden: int, reduction_factor: int = REDUCTION_FACTOR) -> nn.ModuleList:
    return nn.ModuleList(BottleneckAdapter(hidden, reduction_factor) for _ in range(num_layers))
