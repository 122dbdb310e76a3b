"""The logic layer: fixed random connections, 16 gate logits per neuron, three backends.

Activations are feature-major, `(features, batch)`: a gate reads two whole rows, which makes
gathers contiguous for every backend. The relaxed gate mix is computed as the affine form
`c0 + c1*a + c2*b + c3*a*b` with `c = probs @ COEFFS` (see trainer.gates), by

- `cpp`: our C++ kernel (trainer/kernels/logic_cpu.cpp), CPU only;
- `torch`: a custom autograd function of plain tensor ops, any device;
- `difflogic`: difflogic's CUDA kernel, fed our probabilities, where it imports.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.gates import coefficient_matrix
from trainer.kernels.cpu import CpuKernel, KernelUnavailable, load_kernel
from trainer.kernels.difflogic_cuda import (
    DiffLogicFunction,
    difflogic_cuda,
    reverse_index,
    unavailable_reason,
)
from trainer.parametrizations import Parametrization

BACKENDS: tuple[str, ...] = ("auto", "cpp", "torch", "difflogic")
# Below this many gate evaluations a kernel call runs on one thread: waking a second costs
# more than it saves, and on a busy machine a preempted helper thread stalls the call.
PARALLEL_MIN_WORK = 1 << 18


def kernel_threads(gates: int, batch: int) -> int:
    return torch.get_num_threads() if gates * batch >= PARALLEL_MIN_WORK else 1


class TorchLogicFunction(torch.autograd.Function):
    """The affine-form layer in tensor ops, with a hand-written backward.

    Autograd through the same ops would keep more temporaries and scatter twice as often;
    here the backward reuses `c1 + c3*b` from the forward and does one index_add per input.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, coef: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor
    ) -> torch.Tensor:
        a = x.index_select(0, ia)
        b = x.index_select(0, ib)
        c0, c1, c2, c3 = (c.unsqueeze(1) for c in coef.unbind(1))
        slope_a = torch.addcmul(c1, c3, b)
        y = torch.addcmul(torch.addcmul(c0, c2, b), a, slope_a)
        ctx.save_for_backward(a, b, slope_a, coef, ia, ib)
        ctx.in_dim = x.shape[0]
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b, slope_a, coef, ia, ib = ctx.saved_tensors
        grad_x = grad_coef = None
        if ctx.needs_input_grad[1]:
            gya = grad_y * a
            grad_coef = torch.stack(
                [grad_y.sum(1), gya.sum(1), (grad_y * b).sum(1), (gya * b).sum(1)], dim=1
            )
        if ctx.needs_input_grad[0]:
            c2, c3 = coef[:, 2:3], coef[:, 3:4]
            grad_x = grad_y.new_zeros(ctx.in_dim, grad_y.shape[1])
            grad_x.index_add_(0, ia, grad_y * slope_a)
            grad_x.index_add_(0, ib, grad_y * torch.addcmul(c2, c3, a))
        return grad_x, grad_coef, None, None


class CppLogicFunction(torch.autograd.Function):
    """The affine-form layer through the C++ kernel; float32, contiguous, CPU.

    Takes the (gates, 16) probabilities: the kernel forms the coefficients itself and
    returns the probabilities' gradient, which is cheaper than a (gates, 16) @ (16, 4)
    matrix product each way.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        probs: torch.Tensor,
        ia: torch.Tensor,
        ib: torch.Tensor,
        kernel: CpuKernel,
    ) -> torch.Tensor:
        x = x.contiguous()
        probs = probs.contiguous()
        gates, batch = probs.shape[0], x.shape[1]
        threads = kernel_threads(gates, batch)
        coef = probs.new_empty(gates, 4)
        kernel.coefficients(probs.data_ptr(), gates, coef.data_ptr(), threads)
        y = x.new_empty(gates, batch)
        kernel.forward(
            x.data_ptr(),
            batch,
            ia.data_ptr(),
            ib.data_ptr(),
            coef.data_ptr(),
            gates,
            y.data_ptr(),
            threads,
        )
        ctx.save_for_backward(x, coef, ia, ib)
        ctx.kernel = kernel
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, coef, ia, ib = ctx.saved_tensors
        kernel: CpuKernel = ctx.kernel
        grad_y = grad_y.contiguous()
        gates, (in_dim, batch) = coef.shape[0], x.shape
        threads = kernel_threads(gates, batch)
        grad_x = x.new_empty(in_dim, batch) if ctx.needs_input_grad[0] else None
        grad_coef = coef.new_empty(gates, 4)
        grad_probs = coef.new_empty(gates, 16)
        scratch = coef.new_empty(threads * gates * 4 if threads > 1 else 1)
        kernel.backward(
            x.data_ptr(),
            in_dim,
            batch,
            ia.data_ptr(),
            ib.data_ptr(),
            coef.data_ptr(),
            gates,
            grad_y.data_ptr(),
            None if grad_x is None else grad_x.data_ptr(),
            grad_coef.data_ptr(),
            grad_probs.data_ptr(),
            scratch.data_ptr(),
            threads,
        )
        return grad_x, grad_probs if ctx.needs_input_grad[1] else None, None, None, None


def random_connections(in_dim: int, out_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two input indices per gate, as difflogic's `random` connections, from torch's RNG.

    Every input is read at least once when 2 * out_dim >= in_dim; when there are fewer
    slots than inputs, a random subset is read. A gate never reads one input twice (that
    gate would be a one-input gate in disguise), as long as there are two inputs.
    """
    slots = torch.randperm(2 * out_dim) % in_dim
    c = torch.randperm(in_dim)[slots]
    ia, ib = c[:out_dim].clone(), c[out_dim:].clone()
    if in_dim > 1:
        same = ia == ib
        shift = torch.randint(1, in_dim, (int(same.sum()),))
        ib[same] = (ia[same] + shift) % in_dim
    return ia.to(torch.int64), ib.to(torch.int64)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend a layer uses on `device`; raises ValueError where it cannot run there.

    `auto` takes our C++ kernel on CPU where it builds, and the torch path otherwise, on
    CUDA too: difflogic's kernel is taken only when asked for, until a device measurement
    shows it faster (bench/gpu_check.sh). trainer.memory.resolve_backend counts the same.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    cuda = device.type == "cuda"
    if backend == "auto":
        if device.type == "cpu":
            try:
                load_kernel()
            except KernelUnavailable:
                return "torch"
            return "cpp"
        return "torch"
    if backend == "difflogic":
        if not cuda:
            raise ValueError("backend 'difflogic' needs a CUDA device")
        if difflogic_cuda() is None:
            raise ValueError(
                f"backend 'difflogic': difflogic_cuda does not import ({unavailable_reason()})"
            )
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpp' runs on the CPU only, not on {device.type}")
        try:
            load_kernel()
        except KernelUnavailable as exc:
            raise ValueError(f"backend 'cpp' is unavailable: {exc}") from exc
    return backend


class LogicLayer(torch.nn.Module):
    """`out_dim` gates over `in_dim` inputs; forward maps (in_dim, batch) -> (out_dim, batch).

    Training mode mixes gates by the parametrization's noisy probabilities (or, under the
    straight-through estimator, runs their argmax gates: Parametrization.train_probs); eval
    mode uses the argmax gate, unless `relaxed_eval` is set, when it uses the noise-free
    probabilities.
    """

    # Buffers (registered in __init__), declared so type checkers see tensors.
    idx_a: torch.Tensor
    idx_b: torch.Tensor
    idx_a32: torch.Tensor
    idx_b32: torch.Tensor
    coeffs: torch.Tensor

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        parametrization: Parametrization,
        *,
        residual: bool = False,
        backend: str = "auto",
        connections: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """`connections`: fixed (idx_a, idx_b) instead of random ones (the levels of a
        convolutional tree, trainer.conv)."""
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.parametrization = parametrization
        self.backend = backend
        self.residual = residual
        self.relaxed_eval = False
        ia, ib = random_connections(in_dim, out_dim) if connections is None else connections
        self.logits = torch.nn.Parameter(parametrization.init_logits(out_dim, residual=residual))
        self.register_buffer("idx_a", ia)
        self.register_buffer("idx_b", ib)
        self.register_buffer("idx_a32", ia.to(torch.int32), persistent=False)
        self.register_buffer("idx_b32", ib.to(torch.int32), persistent=False)
        self.register_buffer("coeffs", coefficient_matrix(), persistent=False)
        self._reverse: tuple[torch.Tensor, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_dim}, {self.out_dim}, {self.parametrization.name}, "
            f"residual={self.residual}, backend={self.backend}"
        )

    def gates(self) -> torch.Tensor:
        """The discrete network: the argmax gate id of each neuron."""
        return self.logits.argmax(dim=-1)

    def probs(self) -> torch.Tensor:
        """The (out_dim, 16) gate probabilities the current mode computes with."""
        if self.training:
            return self.parametrization.train_probs(self.logits)
        if self.relaxed_eval:
            return self.parametrization.probs(self.logits, noise=False)
        return torch.nn.functional.one_hot(self.gates(), 16).to(self.logits.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = resolve_backend(self.backend, x.device)
        if backend == "difflogic" and self.in_dim > 1:
            # With one input a gate reads it twice, which difflogic's backward_x counts as
            # the first input's derivative twice (see reverse_index): the torch path then.
            if self._reverse is None or self._reverse[0].device != x.device:
                self._reverse = reverse_index(self.idx_a, self.idx_b, self.in_dim)
            start, readers = self._reverse
            return DiffLogicFunction.apply(x, self.probs(), self.idx_a, self.idx_b, start, readers)
        if backend == "cpp" and x.dtype == torch.float32:
            return CppLogicFunction.apply(
                x, self.probs().float(), self.idx_a32, self.idx_b32, load_kernel()
            )
        if self.training or self.relaxed_eval:
            coef = self.probs().to(x.dtype) @ self.coeffs.to(x.dtype)
        else:
            coef = self.coeffs.to(x.dtype)[self.gates()]
        return TorchLogicFunction.apply(x, coef, self.idx_a, self.idx_b)


class GroupSum(torch.nn.Module):
    """Class scores from feature-major gate outputs: k groups of neurons, summed, / tau.

    Class j owns neurons [j * n / k, (j + 1) * n / k), as difflogic's GroupSum.
    """

    def __init__(self, k: int, tau: float) -> None:
        super().__init__()
        self.k, self.tau = k, tau

    def extra_repr(self) -> str:
        return f"k={self.k}, tau={self.tau}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, batch = x.shape
        if n % self.k:
            raise ValueError(f"{n} outputs do not split into {self.k} groups")
        return (x.view(self.k, n // self.k, batch).sum(1) / self.tau).t()
