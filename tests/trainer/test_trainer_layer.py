"""Our layer against the straightforward 16-op reference, forward and backward, per backend."""

from __future__ import annotations

import itertools
import types

import pytest
import torch
from trainer_helpers import needs_compiler

from trainer.gates import GATE_NAMES, NUM_GATES, coefficient_matrix, truth_table_bit
from trainer.kernels import difflogic_cuda as dl
from trainer.kernels.cpu import load_kernel
from trainer.layer import (
    PARALLEL_MIN_WORK,
    CppLogicFunction,
    GroupSum,
    TorchLogicFunction,
    random_connections,
    resolve_backend,
)
from trainer.options import TRAINING_OPTIONS
from trainer.reference import OPS, reference_layer, weighted_ops


def test_truth_tables_match_the_relaxed_ops_on_booleans() -> None:
    assert len(OPS) == len(GATE_NAMES) == NUM_GATES
    for gate, (a, b) in itertools.product(range(NUM_GATES), itertools.product((0, 1), (0, 1))):
        relaxed = OPS[gate](torch.tensor(float(a)), torch.tensor(float(b)))
        assert float(relaxed) == truth_table_bit(gate, a, b), (GATE_NAMES[gate], a, b)


def test_affine_coefficients_reproduce_every_op() -> None:
    a, b = torch.rand(2, 1000, dtype=torch.float64)
    coeffs = coefficient_matrix(torch.float64)
    for gate, op in enumerate(OPS):
        c0, c1, c2, c3 = coeffs[gate]
        torch.testing.assert_close(c0 + c1 * a + c2 * b + c3 * a * b, op(a, b))


def _case(
    in_dim: int, gates: int, batch: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    ia, ib = random_connections(in_dim, gates)
    ib[:3] = ia[:3]  # gates reading one input twice must be right too
    x = torch.rand(batch, in_dim, dtype=dtype)
    probs = torch.softmax(torch.randn(gates, NUM_GATES, dtype=dtype) * 2, dim=-1)
    return x, ia, ib, probs


def _reference(x, ia, ib, probs, grad_out):  # type: ignore[no-untyped-def]
    x = x.clone().requires_grad_(True)
    probs = probs.clone().requires_grad_(True)
    y = reference_layer(x, ia, ib, probs)
    gx, gp = torch.autograd.grad(y, [x, probs], grad_out)
    return y.detach(), gx, gp


def _ours(x, ia, ib, probs, grad_out, apply):  # type: ignore[no-untyped-def]
    """Our layer is feature-major: transpose in, transpose out."""
    xf = x.t().contiguous().requires_grad_(True)
    probs = probs.clone().requires_grad_(True)
    y = apply(xf, probs)
    gx, gp = torch.autograd.grad(y, [xf, probs], grad_out.t().contiguous())
    return y.detach().t(), gx.t(), gp


def test_torch_backend_matches_reference() -> None:
    x, ia, ib, probs = _case(37, 50, 23, torch.float64)
    grad_out = torch.randn(23, 50, dtype=torch.float64)
    ref = _reference(x, ia, ib, probs, grad_out)
    coeffs = coefficient_matrix(torch.float64)
    ours = _ours(
        x, ia, ib, probs, grad_out, lambda xf, p: TorchLogicFunction.apply(xf, p @ coeffs, ia, ib)
    )
    for r, o in zip(ref, ours, strict=True):
        torch.testing.assert_close(o, r)


@needs_compiler
@pytest.mark.parametrize(
    ("in_dim", "gates", "batch", "threads"),
    [
        (37, 50, 23, 1),  # one thread, batch not a multiple of the 64-column block
        (700, 2048, 150, 2),  # gates * batch above PARALLEL_MIN_WORK: the threaded path
        (5, 4, 1, 2),  # a batch of one
    ],
)
def test_cpp_backend_matches_reference(in_dim: int, gates: int, batch: int, threads: int) -> None:
    kernel = load_kernel()  # with a compiler present, a failed build fails here
    if threads > 1:
        assert gates * batch >= PARALLEL_MIN_WORK or batch < 16
    x, ia, ib, probs = _case(in_dim, gates, batch, torch.float32)
    grad_out = torch.randn(batch, gates)
    ref = _reference(x.double(), ia, ib, probs.double(), grad_out.double())
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = _ours(
            x,
            ia,
            ib,
            probs,
            grad_out,
            lambda xf, p: CppLogicFunction.apply(xf, p, ia.int(), ib.int(), kernel),
        )
    finally:
        torch.set_num_threads(old)
    for r, o in zip(ref, ours, strict=True):
        torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-4)


@needs_compiler
def test_cpp_backend_skips_input_gradient_when_not_needed() -> None:
    x, ia, ib, probs = _case(20, 30, 8, torch.float32)
    probs.requires_grad_(True)
    y = CppLogicFunction.apply(x.t().contiguous(), probs, ia.int(), ib.int(), load_kernel())
    (grad,) = torch.autograd.grad(y.sum(), [probs])
    assert grad.shape == probs.shape and torch.isfinite(grad).all()


def test_connections_read_every_input_and_never_one_input_twice() -> None:
    torch.manual_seed(3)
    ia, ib = random_connections(100, 60)
    assert set(torch.cat([ia, ib]).tolist()) == set(range(100))
    assert not (ia == ib).any()
    ia, ib = random_connections(1000, 10)  # fewer slots than inputs: a random subset
    assert len(set(torch.cat([ia, ib]).tolist())) == 20


def test_backend_resolution_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("difflogic", cpu)
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("tpu", cpu)
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("cpp", torch.device("cuda"))
    assert resolve_backend("auto", cpu) in ("cpp", "torch")


@needs_compiler
def test_auto_backend_prefers_the_cpp_kernel_on_cpu() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "cpp"


def test_reverse_index_lists_the_readers_of_each_input() -> None:
    ia = torch.tensor([0, 2, 2, 1])
    ib = torch.tensor([1, 0, 3, 1])
    start, readers = dl.reverse_index(ia, ib, 5)
    got = {i: sorted(readers[start[i] : start[i + 1]].tolist()) for i in range(5)}
    assert got == {0: [0, 1], 1: [0, 3, 3], 2: [1, 2], 3: [2], 4: []}


def _fake_difflogic_cuda() -> types.ModuleType:
    """difflogic_cuda's contract, in torch on CPU: the binding is tested without a GPU."""

    def forward(x, a, b, w):  # type: ignore[no-untyped-def]
        return weighted_ops(x[a], x[b], w.unsqueeze(1).expand(-1, x.shape[1], -1))

    def backward_w(x, a, b, grad_y):  # type: ignore[no-untyped-def]
        ops = torch.stack([op(x[a], x[b]) for op in OPS], dim=-1)
        return (ops * grad_y.unsqueeze(-1)).sum(1)

    def backward_x(x, a, b, w, grad_y, start, readers):  # type: ignore[no-untyped-def]
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(forward(xg, a, b, w), [xg], grad_y)
        return g

    module = types.ModuleType("difflogic_cuda")
    module.forward = forward  # type: ignore[attr-defined]
    module.backward_w = backward_w  # type: ignore[attr-defined]
    module.backward_x = backward_x  # type: ignore[attr-defined]
    return module


def test_difflogic_binding_passes_probabilities_and_returns_their_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dl, "_module", _fake_difflogic_cuda())
    x, ia, ib, probs = _case(12, 16, 5, torch.float64)
    grad_out = torch.randn(5, 16, dtype=torch.float64)
    ref = _reference(x, ia, ib, probs, grad_out)
    start, readers = dl.reverse_index(ia, ib, 12)
    xf = x.t().contiguous().requires_grad_(True)
    p = probs.clone().requires_grad_(True)
    y = dl.DiffLogicFunction.apply(xf, p, ia, ib, start, readers)
    gx, gp = torch.autograd.grad(y, [xf, p], grad_out.t().contiguous())
    torch.testing.assert_close(y.t(), ref[0])
    torch.testing.assert_close(gx.t(), ref[1])
    torch.testing.assert_close(gp, ref[2])


def test_group_sum_at_the_smallest_tau_stays_finite_for_the_widest_layer() -> None:
    """groupSumTau's lower bound (trainer/options.py) keeps the class scores, the loss and
    the gradients finite in float32 for the largest group sum the options allow: a million
    gates in two classes, one class all ones. The issue's 5e-324 is 0 in float32: inf
    scores and a NaN loss (issue 26)."""
    options = {o.name: o for o in TRAINING_OPTIONS}
    tau, gates = options["groupSumTau"].ge, options["gates"].le
    assert tau is not None and gates is not None
    n = int(gates)
    x = torch.zeros(n, 2)
    x[: n // 2] = 1.0  # class 0's group all ones: a score of n / 2 / tau
    target = torch.tensor([1, 1])  # the wrong class wins: the largest loss and gradient
    for tau_, finite in ((tau, True), (5e-324, False)):
        leaf = x.clone().requires_grad_()
        scores = GroupSum(2, tau_)(leaf)
        loss = torch.nn.functional.cross_entropy(scores, target)
        loss.backward()
        assert leaf.grad is not None
        ok = bool(torch.isfinite(scores).all() and torch.isfinite(loss))
        assert ok == finite and bool(torch.isfinite(leaf.grad).all()) == finite, (tau_, loss)
