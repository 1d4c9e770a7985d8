"""Fused distillation loss kernels (installed as `mdist.kernels`; never imports the rest of mdist).

Each op has a plain PyTorch reference (`reference.py`) that tests and benchmarks import. The Triton
ops run on CUDA tensors, or on the CPU under the Triton interpreter: TRITON_INTERPRET=1 must be in the
environment before this package is imported (kernels are bound to the interpreter when defined).
Without Triton installed the fused names are None and `TRITON_AVAILABLE` is False, so callers can
fall back to the references (the `kernels: torch` path).
"""
from .reference import attention_score_mse_reference, fused_linear_distill_loss_reference, hidden_mse_reference

try:
    import triton  # noqa: F401
except ImportError:
    TRITON_AVAILABLE = False
    attention_score_mse = attention_score_mse_multi = None
    attention_score_mse_gram = fused_linear_distill_loss = hidden_mse = hidden_mse_multi = None
else:
    TRITON_AVAILABLE = True
    from .attention_mse import (
        attention_score_mse,
        attention_score_mse_gram,
        attention_score_mse_multi,
    )
    from .hidden_state_mse import hidden_mse, hidden_mse_multi
    from .linear_distill import fused_linear_distill_loss

__all__ = [
    "TRITON_AVAILABLE",
    "attention_score_mse",
    "attention_score_mse_gram",
    "attention_score_mse_multi",
    "attention_score_mse_reference",
    "fused_linear_distill_loss",
    "fused_linear_distill_loss_reference",
    "hidden_mse",
    "hidden_mse_multi",
    "hidden_mse_reference",
]
