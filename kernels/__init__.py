"""Fused distillation loss kernels (installed as `mdist.kernels`; never imports the rest of mdist).

Each op has a plain PyTorch reference (`reference.py`) that tests and benchmarks import.
"""
from .reference import attention_score_mse_reference, fused_linear_distill_loss_reference

__all__ = ["attention_score_mse_reference", "fused_linear_distill_loss_reference"]
