"""Fused distillation loss kernels (installed as `mdist.kernels`; never imports the rest of mdist).

Each op has a plain PyTorch reference (`reference.py`) that tests and benchmarks import. The Triton
ops run on CUDA tensors, or on the CPU under the Triton interpreter: TRITON_INTERPRET=1 must be in the
environment before this package is imported (kernels are bound to the interpreter when defined).
Without Triton installed the fused names are None and `TRITON_AVAILABLE` is False, so callers can
fall back to the references (the `kernels: torch` path).
"""
if __name__ == "kernels":
    # Found as the top-level `kernels`: the repository root is on sys.path (`python -m ...` run from the root puts it
    # first). That name belongs to Hugging Face's `kernels`, which transformers imports whenever it is installed. Hand
    # the import over to the installed package, as if the root were not on the path, or fail as a missing module does;
    # the import system returns whatever a module leaves in sys.modules under its name.
    import importlib.util
    import os
    import sys
    from importlib.machinery import PathFinder

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = PathFinder.find_spec(__name__, [p for p in sys.path if os.path.abspath(p or os.curdir) != _root])
    if _spec is None:
        raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
    sys.modules[__name__] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[__name__])
else:
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
