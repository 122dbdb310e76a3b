"""Build (once, cached) and load the C++ CPU kernel of the logic layer.

The kernel is plain C ABI compiled by the machine's g++ and called through ctypes, so the
build needs no torch headers and takes about a second. The shared object is cached under a
key of the source, the compiler and the CPU's flags (it is built with -march=native).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from trainer import environment
from trainer.cpuinfo import cpu_flags

SOURCE = Path(__file__).with_name("logic_cpu.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp", "-shared", "-fPIC", "-pthread")


class KernelUnavailable(RuntimeError):
    """The C++ kernel could not be built or loaded; the message says why."""


def cache_dir() -> Path:
    """Where built kernels live: $GATEQUEUE_KERNEL_CACHE, else the user's cache folder."""
    return environment.kernel_cache()


def _compiler() -> str:
    cxx = environment.cxx_compiler()
    path = shutil.which(cxx)
    if path is None:
        raise KernelUnavailable(f"no C++ compiler: {cxx!r} is not on PATH")
    return path


def _build(cxx: str) -> Path:
    version = subprocess.run(
        [cxx, "--version"], capture_output=True, text=True, check=False
    ).stdout.split("\n", 1)[0]
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), cxx, version, " ".join(FLAGS), cpu_flags()]).encode()
    ).hexdigest()[:16]
    out_dir = cache_dir()
    target = out_dir / f"logic_cpu_{key}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so concurrent runs never load a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=".build_", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise KernelUnavailable(f"compiling {SOURCE.name} failed:\n{proc.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@dataclass(frozen=True)
class CpuKernel:
    """The loaded library; see logic_cpu.cpp for the two entry points' contracts."""

    lib: ctypes.CDLL
    path: Path

    def coefficients(self, probs: int, gates: int, coef: int, threads: int) -> None:
        self.lib.gq_coefficients(probs, gates, coef, threads)

    def forward(
        self, x: int, batch: int, ia: int, ib: int, coef: int, gates: int, y: int, threads: int
    ) -> None:
        self.lib.gq_forward(x, batch, ia, ib, coef, gates, y, threads)

    def backward(
        self,
        x: int,
        in_dim: int,
        batch: int,
        ia: int,
        ib: int,
        coef: int,
        gates: int,
        gy: int,
        gx: int | None,
        gcoef: int,
        gprobs: int,
        scratch: int,
        threads: int,
    ) -> None:
        self.lib.gq_backward(
            x, in_dim, batch, ia, ib, coef, gates, gy, gx, gcoef, gprobs, scratch, threads
        )


def _load(path: Path) -> CpuKernel:
    lib = ctypes.CDLL(str(path))
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.gq_forward.argtypes = [p, i64, p, p, p, i64, p, c_int]
    lib.gq_forward.restype = None
    lib.gq_coefficients.argtypes = [p, i64, p, c_int]
    lib.gq_coefficients.restype = None
    lib.gq_backward.argtypes = [p, i64, i64, p, p, p, i64, p, p, p, p, p, c_int]
    lib.gq_backward.restype = None
    return CpuKernel(lib=lib, path=path)


_lock = threading.Lock()
_loaded: CpuKernel | None = None
_error: KernelUnavailable | None = None


def load_kernel() -> CpuKernel:
    """The kernel, built on first use; raises KernelUnavailable (remembered) on failure."""
    global _loaded, _error
    with _lock:
        if _loaded is not None:
            return _loaded
        if _error is not None:
            raise _error
        try:
            _loaded = _load(_build(_compiler()))
        except KernelUnavailable as exc:
            _error = exc
            raise
        except OSError as exc:
            _error = KernelUnavailable(f"loading the C++ kernel failed: {exc}")
            raise _error from exc
        return _loaded


