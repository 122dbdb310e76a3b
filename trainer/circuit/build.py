"""Find a C compiler, build network.c into a shared library, and call it through ctypes.

The compiler is `$CC` when set, else the first of cc, gcc, clang on PATH. The library is
built with -O3 -march=native (the machine's widest SIMD) and, should the compiler reject
that, with plain -O3. Its file name carries a hash of the source and flags: a process can
load a rebuilt circuit beside an old one (the dynamic loader caches libraries by name).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import environment
from trainer.circuit.errors import CircuitError
from trainer.cpuinfo import cpu_flags

COMPILERS: tuple[str, ...] = ("cc", "gcc", "clang")
BASE_FLAGS: tuple[str, ...] = ("-std=gnu11", "-shared", "-fPIC", "-pthread")
FLAG_SETS: tuple[tuple[str, ...], ...] = (("-O3", "-march=native"), ("-O3",))


def find_compiler() -> str:
    """The C compiler's path: $CC if set, else cc, gcc or clang, whichever is found first."""
    env = environment.c_compiler()
    candidates = [env] if env else list(COMPILERS)
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    tried = f"$CC={env!r}" if env else ", ".join(COMPILERS)
    raise CircuitError(
        f"no C compiler found (tried {tried} on PATH); install gcc or clang, or set CC"
    )


def simd_level() -> str:
    """The widest SIMD of this CPU, for reports: avx512, avx2, sse2, or unknown."""
    flags = set(cpu_flags().split())
    for name, flag in (
        ("avx512", "avx512f"),
        ("avx2", "avx2"),
        ("sse2", "sse2"),
        ("neon", "asimd"),
    ):
        if flag in flags:
            return name
    return "unknown"


@dataclass(frozen=True)
class BuildResult:
    library: Path
    compiler: str
    flags: tuple[str, ...]
    seconds: float


def build_library(source: Path, out_dir: Path, stem: str = "network") -> BuildResult:
    """Compile `source` into out_dir/<stem>.<hash>.so, unless that file is already there."""
    cc = find_compiler()
    text = source.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        all_flags = (*flags, *BASE_FLAGS)
        key = hashlib.sha256(
            b"\0".join([text, cc.encode(), " ".join(all_flags).encode(), cpu_flags().encode()])
        )
        target = out_dir / f"{stem}.{key.hexdigest()[:12]}.so"
        if target.exists():
            return BuildResult(target, cc, all_flags, 0.0)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".so", dir=out_dir)
        os.close(fd)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [cc, *all_flags, str(source), "-o", tmp],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode == 0:
                os.replace(tmp, target)
                for stale in out_dir.glob(f"{stem}.*.so"):
                    if stale != target:  # a process that loaded it keeps its mapping
                        stale.unlink(missing_ok=True)
                return BuildResult(target, cc, all_flags, time.perf_counter() - start)
            errors.append(f"{cc} {' '.join(all_flags)}:\n{proc.stderr.strip()[-2000:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise CircuitError(f"compiling {source} failed:\n" + "\n".join(errors))


class Library:
    """A loaded circuit library: predictions and class scores for (n, in_dim) bit arrays."""

    def __init__(self, path: Path) -> None:
        try:
            self._lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise CircuitError(f"cannot load {path}: {exc}") from exc
        for name in ("gq_predict", "gq_scores"):
            fn = getattr(self._lib, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
            fn.restype = ctypes.c_int
        info = (ctypes.c_int64 * 8)()
        self._lib.gq_info(info)
        self.path = path
        self.in_dim, self.classes, self.outputs, self.gates, self.words = (int(v) for v in info[:5])

    def _bytes(self, x: np.ndarray) -> np.ndarray:
        """x as C-ordered bytes, 0 = false: bool and uint8 go through without a copy."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"inputs must be (n, {self.in_dim}), got {x.shape}")
        if x.dtype == np.bool_:
            x = x.view(np.uint8)
        elif x.dtype != np.uint8:
            x = (x != 0).view(np.uint8)
        return np.ascontiguousarray(x)

    def predict(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """(n,) int32 classes: the first class with the highest score, as trainer.export."""
        data = self._bytes(x)
        out = np.empty(len(data), np.int32)
        if self._lib.gq_predict(data.ctypes.data, len(data), out.ctypes.data, threads):
            raise CircuitError("gq_predict failed: out of memory or threads")
        return out

    def scores(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """(n, classes) int32: ones among each class's outputs."""
        data = self._bytes(x)
        out = np.empty((len(data), self.classes), np.int32)
        if self._lib.gq_scores(data.ctypes.data, len(data), out.ctypes.data, threads):
            raise CircuitError("gq_scores failed: out of memory or threads")
        return out
