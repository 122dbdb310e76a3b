"""trainer.device without a GPU: the peak memory figure, the GPU model in checkpoint headers,
the out-of-memory types on torch versions without torch.OutOfMemoryError, and the optimizer
(the CPU's unchanged bit for bit, the fused one on CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from trainer import checkpoint
from trainer.cli import is_out_of_memory
from trainer.device import gpu_model, gpu_peak_mib, make_optimizer, out_of_memory_errors

MiB = 1 << 20


def test_no_gpu_figures_on_the_cpu() -> None:
    assert gpu_peak_mib("cpu") is None
    assert gpu_peak_mib(torch.device("cpu")) is None
    assert gpu_model("cpu") is None


def test_gpu_peak_is_the_reserved_high_water_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def reserved(device: torch.device) -> int:
        asked.append(device)
        return 1536 * MiB + 52429  # 1536.05 MiB

    monkeypatch.setattr(torch.cuda, "max_memory_reserved", reserved)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 1)
    assert gpu_peak_mib("cuda:0") == 1536.1
    assert asked == [torch.device("cuda:0")]


def test_checkpoint_headers_name_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    fields = dict(
        epoch=1, step=0, hyperparameters={}, backend="torch", threads=1, steps_per_epoch=3
    )
    assert checkpoint.header_fields(device="cuda", **fields)["gpu"] == "NVIDIA H100 80GB HBM3"  # type: ignore[arg-type]
    assert checkpoint.header_fields(device="cpu", **fields)["gpu"] is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("saved", "here", "warned"),
    [
        ("NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", None),
        (None, "NVIDIA H100 80GB HBM3", None),  # a CPU checkpoint, or one without the field
        ("NVIDIA H100 80GB HBM3", None, None),  # resumed on the CPU: the device warning says so
    ],
)
def test_a_resume_on_another_gpu_model_is_named(
    saved: str | None, here: str | None, warned: str | None
) -> None:
    fields = {} if saved is None else {"gpu": saved}
    header = checkpoint.Header(Path("c"), 1, 0, {}, "", 0, 0, 0, fields)
    assert checkpoint.other_gpu(header, here) == warned


def test_out_of_memory_without_torch_out_of_memory_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch < 2.5 (which pyproject's torch>=2.3 allows) has only torch.cuda's class."""
    cuda_oom = torch.cuda.OutOfMemoryError
    monkeypatch.delattr(torch, "OutOfMemoryError")
    assert cuda_oom in out_of_memory_errors()
    assert is_out_of_memory(cuda_oom("CUDA error: tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    # what the patched difflogic kernels raise (deploy/patch_difflogic.py's gpuAssert)
    assert is_out_of_memory(RuntimeError("difflogic CUDA error: out of memory (k.cu:290)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def test_the_cpu_optimizer_is_torch_default_adam_bit_for_bit() -> None:
    ours, theirs = _net(), _net()
    opts = [
        make_optimizer(ours.parameters(), 0.01, "cpu"),
        torch.optim.Adam(theirs.parameters(), lr=0.01),
    ]
    assert not opts[0].defaults["fused"] and not opts[0].defaults["capturable"]
    x = torch.randn(8, 6)
    for _ in range(3):
        for net, opt in zip((ours, theirs), opts, strict=True):
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            opt.step()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_cuda_optimizer_is_fused_and_capturable_on_request() -> None:
    net = _net()
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = net.to("cuda")
        fused = make_optimizer(net.parameters(), 0.01, torch.device("cuda"))
        captured = make_optimizer(net.parameters(), 0.01, "cuda", capturable=True)
    assert fused.defaults["fused"] and not fused.defaults["capturable"]
    assert captured.defaults["fused"] and captured.defaults["capturable"]
