"""Build mdist's Triton kernels for the H100 (sm_90) on a machine without a GPU, and read their resources.

Triton's compiler and the ptxas it ships need no GPU. A real call of an op runs with its kernels
swapped for recorders (`recorded_launches`), so the launches built here are exactly the ones the op
makes: the same argument dtypes, block sizes and warps. `build_for_hopper` then compiles each for
sm_90 and reads the cubin's resource usage with the bundled cuobjdump. What this proves: the kernels
compile for the GPU the benchmarks target, fit its shared memory, and keep their registers (no
local-memory spills). What it cannot: speed; and a GPU machine's Triton may be an older release.

Why a subprocess: under TRITON_INTERPRET=1 (the CPU tests) Triton binds its own language library
(tl.sum, ...) to the interpreter at import, so that process can no longer compile for a GPU.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

H100_SHARED_BYTES = 232_448  # opt-in shared memory per block on sm_90 (227 KiB)
_TRITON_TYPES = {
    torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
    torch.int8: "i8", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1",
}
_LAUNCH_OPTIONS = ("num_warps", "num_stages")


def cuobjdump() -> Path | None:
    """The cuobjdump Triton ships with its NVIDIA backend (None: this Triton has no NVIDIA toolchain)."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return path if path.exists() else None


@dataclass(frozen=True)
class Launch:
    module: str  # where the @triton.jit function is defined
    kernel: str
    signature: dict  # argument name -> Triton type
    constexprs: dict
    options: dict  # num_warps, num_stages
    divisible_by_16: list  # argument names Triton's launch marks as multiples of 16 (pointers: 16-byte aligned)


@dataclass(frozen=True)
class HopperBuild:
    kernel: str
    registers: int
    local_bytes: int  # > 0: registers spilled to local memory
    shared_bytes: int  # dynamic shared memory Triton asks for at launch
    wide_loads: int  # 16-byte global loads in the PTX (ld.global.v4, cp.async of 16): vectorised reads


def _signature_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TRITON_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for argument {value!r}")


class _Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` is recorded, not run."""

    def __init__(self, kernel, launches: list[Launch]):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            fn = self.kernel.fn
            constexprs = {k: v for k, v in kwargs.items() if k not in _LAUNCH_OPTIONS}
            named = dict(zip(self.kernel.arg_names, args))
            # Triton's launch-time specialisation: integers equal to 1 become constants, and integers
            # and pointers that are multiples of 16 are marked so (what lets loads vectorise)
            constexprs.update({name: 1 for name, value in named.items() if type(value) is int and value == 1})
            signature = {name: _signature_type(value) for name, value in named.items() if name not in constexprs}
            signature.update({name: "constexpr" for name in constexprs})
            divisible = [
                name for name, value in named.items() if name not in constexprs and
                (value.data_ptr() % 16 == 0 if isinstance(value, torch.Tensor) else type(value) is int and value % 16 == 0)
            ]
            options = {k: v for k, v in kwargs.items() if k in _LAUNCH_OPTIONS}
            self.launches.append(Launch(fn.__module__, fn.__name__, signature, constexprs, options, divisible))

        return record


@contextmanager
def recorded_launches(module, *kernel_names: str):
    """Within the block, `module`'s kernels are recorded instead of run (outputs stay uninitialised).

    The device check is lifted too: the op gets CPU tensors but builds its launches as for a GPU
    (no interpreter-only upcasts), which is the point.
    """
    launches: list[Launch] = []
    saved = {name: getattr(module, name) for name in (*kernel_names, "check_device")}
    try:
        for name in kernel_names:
            setattr(module, name, _Recorder(saved[name], launches))
        module.check_device = lambda *args: None
        yield launches
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def build_for_hopper(launches: list[Launch]) -> list[HopperBuild]:
    """Compile the launches for sm_90 in a fresh process without the interpreter; their resources."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, __file__], input=json.dumps([asdict(launch) for launch in launches]),
        capture_output=True, text=True, env=env,
    )
    if done.returncode:
        raise RuntimeError(f"building for sm_90 failed:\n{done.stderr[-4000:]}")
    return [HopperBuild(**build) for build in json.loads(done.stdout)]


def _build(launch: Launch) -> HopperBuild:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    index = {name: i for i, name in enumerate(fn.arg_names)}
    constexprs = {(index[name],): value for name, value in launch.constexprs.items()}
    attrs = {(index[name],): [["tt.divisibility", 16]] for name in launch.divisible_by_16}
    source = ASTSource(fn=fn, signature=launch.signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=launch.options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(cuobjdump()), "-res-usage", cubin.name], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:\d+ SHARED:\d+ LOCAL:(\d+)", usage)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage for {launch.kernel}:\n{usage}")
    wide_loads = len(re.findall(r"ld\.global[\w:.]*\.v4\.|cp\.async\.\w+\.shared\.global \[[^\]]*\], \[[^\]]*\], 0x10", compiled.asm["ptx"]))
    return HopperBuild(launch.kernel, int(found.group(1)), int(found.group(2)), compiled.metadata.shared, wide_loads)


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its current default
    builds = [_build(Launch(**launch)) for launch in json.load(sys.stdin)]
    json.dump([asdict(build) for build in builds], sys.stdout)
