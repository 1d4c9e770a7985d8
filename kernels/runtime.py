"""Where the Triton kernels can run: CUDA tensors, or any tensors when the kernels were bound to the interpreter."""
from __future__ import annotations


def interpreted(kernel) -> bool:
    """True when `kernel` was defined under TRITON_INTERPRET=1 (decided at import, not by the current environment)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel, tensor, op: str) -> None:
    """Fail clearly instead of deep inside Triton when a compiled kernel gets CPU tensors."""
    if not tensor.is_cuda and not interpreted(kernel):
        raise ValueError(
            f"{op} runs Triton kernels: give it CUDA tensors, or set TRITON_INTERPRET=1 before importing "
            "mdist.kernels to run on the CPU (slow), or use the *_reference op (the `kernels: torch` path)"
        )
