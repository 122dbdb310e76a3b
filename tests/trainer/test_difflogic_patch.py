"""deploy/patch_difflogic.py on difflogic 0.1.0's real CUDA sources (a copy of the sdist's
files under difflogic_src/, MIT): what the Dockerfile and bench/gpu_check.sh compile has no
device sync, no exit(), no Tensor.type() and no launch off torch's current stream."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "patch_difflogic.py"
SHIPPED = Path(__file__).resolve().parent / "difflogic_src"


def patcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("patch_difflogic", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    root = tmp_path / "difflogic-0.1.0"
    shutil.copytree(SHIPPED, root)
    return root


def test_the_shipped_sources_are_unpatched() -> None:
    """The copy is what PyPI ships: every defect the patch removes is in it."""
    kernel = (SHIPPED / "difflogic/cuda/difflogic_kernel.cu").read_text(encoding="utf-8")
    assert kernel.count("gpuErrchk(cudaDeviceSynchronize());") == 6
    assert "exit(code);" in kernel
    assert len(re.findall(r"<<<blocks_per_grid, threads_per_block>>>", kernel)) == 6
    assert set(patcher().remaining(kernel)) == {
        "cudaDeviceSynchronize", "exit(", "Tensor.type()", "a launch without a stream",
    }  # fmt: skip


def test_patch_leaves_nothing_forbidden(sources: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(sources)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    kernel = (sources / "difflogic/cuda/difflogic_kernel.cu").read_text(encoding="utf-8")
    bindings = (sources / "difflogic/cuda/difflogic.cpp").read_text(encoding="utf-8")
    for text in (kernel, bindings):
        assert "cudaDeviceSynchronize" not in text
        assert not re.search(r"\bexit\s*\(", text)
        assert ".type()" not in text
    assert kernel.count("C10_CUDA_KERNEL_LAUNCH_CHECK();") == 6
    assert kernel.count(", 0, c10::cuda::getCurrentCUDAStream()>>>") == 6
    assert "#include <c10/cuda/CUDAStream.h>" in kernel
    assert "TORCH_CHECK(code == cudaSuccess" in kernel
    # The kernels themselves are untouched: only host code changed.
    original = (SHIPPED / "difflogic/cuda/difflogic_kernel.cu").read_text(encoding="utf-8")
    body = original[original.index("template <typename scalar_t>\n__global__") :]
    first_host = body.index("torch::Tensor logic_layer_cuda_forward(")
    assert body[:first_host] in kernel


def test_patch_fails_loudly_on_sources_it_does_not_know(sources: Path) -> None:
    kernel = sources / "difflogic/cuda/difflogic_kernel.cu"
    kernel.write_text(kernel.read_text().replace("cudaPeekAtLastError", "cudaGetLastError"))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(sources)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "sync after launch" in result.stderr


def test_patch_is_what_the_builds_run() -> None:
    """One definition: the Dockerfile and the device check both run the script, and neither
    patches difflogic's sources another way."""
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    check = (REPO / "bench" / "gpu_check.sh").read_text(encoding="utf-8")
    assert "COPY deploy/patch_difflogic.py" in dockerfile
    assert "patch_difflogic.py" in dockerfile.split("pip wheel", 1)[0]
    assert "deploy/patch_difflogic.py" in check
    for text in (dockerfile, check):
        assert "sed -i" not in text
