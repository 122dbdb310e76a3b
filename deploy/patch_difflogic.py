#!/usr/bin/env python3
"""Patch difflogic's CUDA sources before they are compiled (the Dockerfile and
bench/gpu_check.sh both run this one script on the unpacked sdist).

    python3 deploy/patch_difflogic.py DIFFLOGIC_SOURCE_DIR

difflogic 0.1.0's `difflogic/cuda/difflogic_kernel.cu` as shipped:

- follows every launch with `gpuErrchk(cudaDeviceSynchronize())`: a host sync per kernel
  (12 per step of a 4-layer network), and a CUDA graph cannot capture a sync;
- answers any CUDA error with `exit(code)`: the trainer dies without a traceback, without
  its exit status 71 and without a checkpoint (a GPU missing from the arch list ends so,
  with "no kernel image is available");
- launches on the legacy default stream, not torch's current one;
- passes `Tensor::type()` to AT_DISPATCH and CHECK_CUDA, which torch >= 2.7 rejects.

Here: a launch check (`C10_CUDA_KERNEL_LAUNCH_CHECK`, which raises a C++ exception that
pybind turns into a RuntimeError) instead of the sync, a TORCH_CHECK instead of exit, every
launch on `c10::cuda::getCurrentCUDAStream()` (from c10/cuda/CUDAStream.h, which needs no
cuBLAS headers), and `scalar_type()` / `is_cuda()`. Each
rewrite must find what it rewrites, and the result is checked for what must not remain:
another difflogic release fails here, loudly, instead of compiling unpatched.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

KERNEL = Path("difflogic/cuda/difflogic_kernel.cu")
BINDINGS = Path("difflogic/cuda/difflogic.cpp")

_INCLUDES = (
    "#include <torch/extension.h>\n"
    "#include <c10/cuda/CUDAException.h>\n"
    "#include <c10/cuda/CUDAStream.h>\n"
)
# difflogic's gpuErrchk/gpuAssert, replaced by an error torch reports as a RuntimeError.
_GPU_ASSERT = re.compile(
    r"#define gpuErrchk\(ans\).*?\n\}\n",
    re.DOTALL,
)
_GPU_CHECK = (
    "inline void gpuAssert(const cudaError_t code, const char *const file, const int line) {\n"
    '    TORCH_CHECK(code == cudaSuccess, "difflogic CUDA error: ", cudaGetErrorString(code),\n'
    '                " (", file, ":", line, ")");\n'
    "}\n"
    "#define gpuErrchk(ans) gpuAssert((ans), __FILE__, __LINE__)\n"
)
_SYNC_AFTER_LAUNCH = re.compile(
    r"gpuErrchk\(cudaPeekAtLastError\(\)\);\s*\n(\s*)gpuErrchk\(cudaDeviceSynchronize\(\)\);"
)
_LAUNCH = re.compile(r"<<<\s*([A-Za-z_]\w*)\s*,\s*([A-Za-z_]\w*)\s*>>>")
_TYPE_IS_CUDA = re.compile(r"\b([A-Za-z_]\w*)\.type\(\)\.is_cuda\(\)")
_DISPATCH_TYPE = re.compile(r"(AT_DISPATCH_[A-Z_]+\(\s*[A-Za-z_]\w*)\.type\(\)")

# What must not remain in any compiled source once patched.
FORBIDDEN = (
    ("cudaDeviceSynchronize", re.compile(r"cudaDeviceSynchronize")),
    ("exit(", re.compile(r"\bexit\s*\(")),
    ("Tensor.type()", re.compile(r"\.type\(\)")),
    ("a launch without a stream", re.compile(r"<<<[^>;]*?>>>")),
)


class PatchError(RuntimeError):
    pass


def _sub(pattern: re.Pattern[str], repl: str, text: str, what: str, *, at_least: int = 1) -> str:
    out, n = pattern.subn(repl, text)
    if n < at_least:
        raise PatchError(f"{what}: found {n}, expected at least {at_least}")
    return out


def patch_kernel(text: str) -> str:
    """The patched difflogic_kernel.cu."""
    if "#include <torch/extension.h>\n" not in text:
        raise PatchError("torch/extension.h include not found")
    text = text.replace("#include <torch/extension.h>\n", _INCLUDES, 1)
    text = _sub(_GPU_ASSERT, _GPU_CHECK, text, "gpuErrchk/gpuAssert definition")
    text = _sub(_SYNC_AFTER_LAUNCH, "C10_CUDA_KERNEL_LAUNCH_CHECK();", text, "sync after launch")
    text = _sub(
        _LAUNCH, r"<<<\1, \2, 0, c10::cuda::getCurrentCUDAStream()>>>", text, "kernel launch"
    )
    return patch_types(text)


def patch_types(text: str) -> str:
    """Tensor::type() -> is_cuda() / scalar_type(), where present."""
    text = _TYPE_IS_CUDA.sub(r"\1.is_cuda()", text)
    return _DISPATCH_TYPE.sub(r"\1.scalar_type()", text)


def remaining(text: str) -> list[str]:
    """What FORBIDDEN still finds in `text` (empty when the source is fit to compile)."""
    # A launch with a stream argument has four configuration values; only bare ones count.
    launches = [m.group(0) for m in re.finditer(r"<<<[^;]*?>>>", text)]
    found = [name for name, pattern in FORBIDDEN[:-1] if pattern.search(text)]
    if any(launch.count(",") < 3 for launch in launches):
        found.append(FORBIDDEN[-1][0])
    return found


def patch_tree(root: Path) -> list[Path]:
    """Patch difflogic's sources under `root` in place; returns the files written."""
    kernel, bindings = root / KERNEL, root / BINDINGS
    kernel.write_text(patch_kernel(kernel.read_text(encoding="utf-8")), encoding="utf-8")
    bindings.write_text(patch_types(bindings.read_text(encoding="utf-8")), encoding="utf-8")
    for path in (kernel, bindings):
        left = remaining(path.read_text(encoding="utf-8"))
        if left:
            raise PatchError(f"{path}: still has {', '.join(left)}")
    return [kernel, bindings]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIFFLOGIC_SOURCE_DIR", file=sys.stderr)
        return 2
    try:
        for path in patch_tree(Path(argv[1])):
            print(f"patched {path}")
    except (OSError, PatchError) as exc:
        print(f"patch_difflogic: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
