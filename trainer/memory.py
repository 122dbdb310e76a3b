"""How much memory a run needs, from its training options alone: `estimate_memory`.

The API and the worker call it (to refuse or place a job that cannot fit, and to say why),
so it imports neither torch nor numpy. It counts what the trainer allocates, tensor by
tensor, in each phase of a run, and takes the largest phase:

- always: the process (Python and torch loaded; on CUDA the context), the parameters (16
  float32 logits per gate), Adam's two moments, the gradients (alive from the first
  backward on, through evaluation), the connection indices and the data set on the device;
- data loading (CPU only): the raw arrays and the thermometer encoding's temporaries;
- a training step: the epoch's data order, the batch (uint8 gather, float copy, the
  feature-major copy), what each layer's autograd function keeps for backward
  (trainer/layer.py: `CppLogicFunction` and `DiffLogicFunction` keep their input, the
  previous layer's output; `TorchLogicFunction` keeps both gathered inputs and a slope),
  the parametrization's saved probabilities, and the gradient buffers live at once in
  backward;
- evaluation: `EVAL_BATCH` test samples through the network without autograd, so only a
  layer's input and output (and the torch backend's temporaries) live at once.

On CUDA every tensor is rounded as torch's caching allocator rounds it (512 B, 2 MiB above
1 MiB). The figures for the process baseline were measured on CPU (see PROCESS_BASELINE);
the CUDA context is the usual size, not measured here. tests/trainer/test_memory.py checks
the CPU estimate against the measured peak RSS of real runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.convspec import ConvSpec, block_shapes
from trainer.data.catalog import SHAPES, DataShape
from trainer.options import CONV_NAMES, TRAINING_OPTIONS

# Samples per evaluation batch. Defined here, torch-free, and used by trainer.loop, so the
# loop and the estimate cannot disagree.
EVAL_BATCH = 2048

MiB = 1 << 20
FLOAT = 4
INT64 = 8
INT32 = 4
LOGITS = 16  # gate logits per neuron
COEFFS = 4  # affine coefficients per neuron (trainer.gates)

# Peak RSS of `python -m trainer` doing almost nothing (10 gates, 1 layer, 1 epoch of
# digits), as a parent's getrusage sees it: Python, torch (the CUDA wheel maps its CUDA
# libraries even on a machine without a GPU), pydantic, structlog, entmax, our kernel, and
# the pages interpreter shutdown touches. Measured with torch 2.15 (cu132 wheel), Python
# 3.11, x86-64 Linux. scikit-learn (and scipy) load only for the data sets it ships.
PROCESS_BASELINE = 830 * MiB
SKLEARN_BASELINE = 82 * MiB
SKLEARN_DATASETS = frozenset({"digits", "breast_cancer"})
# A CUDA context on the device (driver, kernels of torch loaded lazily) and cuBLAS's
# workspace; a few hundred MiB, depending on the GPU and driver. Not measured here.
CUDA_CONTEXT = 450 * MiB
CUBLAS_WORKSPACE = 32 * MiB
# The caching allocator's segments are not filled exactly; reserved exceeds allocated.
CUDA_ALLOCATOR_SLACK = 0.05
# What glibc's heap settles at on the CPU: this multiple of the larger phase's working set
# (a training step's or evaluation's), plus the other phase's. Fitted to the peak RSS of
# runs of 8 to 96 epochs on digits (within 7 %, docs/trainer.md, "Memory"); runs of one or
# two epochs stay 2-20 % below. The C++ kernel's few large buffers of one size fragment the
# heap more than the torch path's many.
CPU_HEAP_GROWTH: dict[str, float] = {"cpp": 1.7, "torch": 1.25}
# Temporaries of a parametrization's forward for one layer, per gate: noise, the noisy
# logits, sparsemax's shifted copy, sort values and int64 indices, cumulative sums, masks;
# about eight (gates, 16) float tensors.
PARAMETRIZATION_TEMPS = 8 * LOGITS * FLOAT
# Saved for backward per gate: the probabilities and sparsemax's int64 support size.
PARAMETRIZATION_SAVED = LOGITS * FLOAT + INT64
# difflogic's backward_w sums per-thread partial sums of (gates, threads, 4) floats.
DIFFLOGIC_BACKWARD_W = 32 * COEFFS * FLOAT


@dataclass(frozen=True)
class MemoryEstimate:
    """The peak a run is expected to reach on `device`, with what makes it up.

    `breakdown` sums to `total_bytes`: the items always present, those of the peak phase
    (`phase`) and, on the CPU, the heap's fragmentation (CPU_HEAP_GROWTH); `phases` gives
    what each phase holds at once, before the allocator's effects, for comparison.
    """

    device: str
    backend: str
    total_bytes: int
    phase: str
    breakdown: dict[str, int]
    phases: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for an error message: the total, then the items, largest first."""
        items = sorted(self.breakdown.items(), key=lambda kv: -kv[1])
        parts = ", ".join(f"{name} {_human(n)}" for name, n in items if n)
        return (
            f"about {_human(self.total_bytes)} on {self.device} (peak in the {self.phase}): {parts}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "backend": self.backend,
            "totalBytes": self.total_bytes,
            "phase": self.phase,
            "breakdown": dict(self.breakdown),
            "phases": dict(self.phases),
        }


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def layer_widths(gates: int, network_layers: int, grouping: int) -> list[int]:
    """trainer.model.layer_widths, torch-free (a test keeps the two equal)."""
    last = -(-gates // grouping) * grouping
    return [gates] * (network_layers - 1) + [last]


def resolve_backend(backend: str, device: str) -> str:
    """The backend to count for `auto`: on CPU our C++ kernel (what `auto` takes wherever a
    compiler exists); on CUDA the torch path, which is what `auto` takes there
    (trainer.layer.resolve_backend) and the larger of the two CUDA backends."""
    if backend != "auto":
        return backend
    return "cpp" if device == "cpu" else "torch"


class _Tally:
    """Byte counts per item, each tensor rounded as the device's allocator rounds it."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.items: dict[str, int] = {}

    def block(self, nbytes: int) -> int:
        if not self.cuda or nbytes <= 0:
            return max(0, nbytes)
        if nbytes <= MiB:
            return -(-nbytes // 512) * 512
        return -(-nbytes // (2 * MiB)) * (2 * MiB)

    def add(self, item: str, *tensors: int) -> None:
        self.items[item] = self.items.get(item, 0) + sum(self.block(t) for t in tensors)

    def total(self) -> int:
        return sum(self.items.values())


# The training options the estimate reads: the rest (the parametrization, the learning
# rate, the seed...) do not change a run's memory, so estimates can be shared by key.
SIZE_OPTIONS: tuple[str, ...] = (
    "dataset", "gates", "networkLayers", "grouping", "batchSize", *CONV_NAMES,
)  # fmt: skip
_DEFAULTS = {o.name: o.default for o in TRAINING_OPTIONS}


def size_key(hyperparameters: Mapping[str, Any]) -> tuple[Any, ...]:
    """The values of SIZE_OPTIONS (defaults where missing): equal keys, equal estimates."""
    return tuple(hyperparameters.get(k, _DEFAULTS[k]) for k in SIZE_OPTIONS)


def estimate_memory(
    hyperparameters: Mapping[str, Any],
    device: str,
    *,
    backend: str = "auto",
    threads: int = 1,
    shape: DataShape | None = None,
) -> MemoryEstimate:
    """The expected peak memory of a run with these training options on `device`.

    `hyperparameters`: training options by their request names (trainer.options); missing
    ones take their defaults. `device`: "cpu" (peak resident set of the process) or
    "cuda" (memory of the GPU, as nvidia-smi shows it for the process). `backend`: the
    trainer's `--backend` (see resolve_backend for `auto`); `threads`: CPU threads, which
    only size the C++ kernel's per-thread partial sums; `shape`: a registered data set's
    (its record's), where `dataset` names no built-in. Raises ValueError for an unknown
    device, backend or data set.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    hp = dict(zip(SIZE_OPTIONS, size_key(hyperparameters), strict=True))
    kind = resolve_backend(backend, device)
    if kind not in ("cpp", "torch", "difflogic"):
        raise ValueError(f"unknown backend {backend!r}")
    if (kind == "cpp" and device != "cpu") or (kind == "difflogic" and device != "cuda"):
        raise ValueError(f"backend {kind!r} does not run on {device}")
    shape = shape if shape is not None else SHAPES.get(hp["dataset"])
    if shape is None:
        raise ValueError(f"unknown dataset {hp['dataset']!r}")
    cuda = device == "cuda"
    dims, widths, layer_inputs, gather_index = _network(hp, shape)
    batch = min(int(hp["batchSize"]), shape.train)
    eval_batch = min(EVAL_BATCH, shape.test)

    always = _Tally(cuda)
    if cuda:
        always.add("cuda_context", CUDA_CONTEXT + CUBLAS_WORKSPACE)
    else:
        sklearn = SKLEARN_BASELINE if hp["dataset"] in SKLEARN_DATASETS else 0
        always.add("process", PROCESS_BASELINE + sklearn)
    for i, w in enumerate(widths):
        always.add("parameters", w * LOGITS * FLOAT)
        always.add("gradients", w * LOGITS * FLOAT)
        always.add("adam_state", w * LOGITS * FLOAT, w * LOGITS * FLOAT)
        # idx_a, idx_b (int64) and their int32 copies for the C++ kernel
        always.add("connections", w * INT64, w * INT64, w * INT32, w * INT32)
        if kind == "difflogic":  # the reverse index of backward_x (trainer.kernels)
            always.add("connections", (layer_inputs[i] + 1) * INT64, 2 * w * INT64)
    if gather_index:  # the conv blocks' patch indices (trainer.conv.TreeConv.index)
        always.add("connections", gather_index)
    always.add("dataset", *_dataset_tensors(shape))

    train = _training_step(cuda, kind, dims, batch, shape, threads, widths)
    evaluation = _evaluation(cuda, kind, dims, eval_batch, shape)
    phases = {"training step": train, "evaluation": evaluation}
    base = always.total()
    totals = {name: base + t.total() for name, t in phases.items()}
    peak = max(totals, key=lambda name: totals[name])
    other = evaluation if peak == "training step" else train
    breakdown = {**always.items, **phases[peak].items}
    if cuda:
        # The caching allocator hands a freed block to the next request it fits and gives
        # cached blocks back before it reports out of memory, so the phases do not add up.
        slack = int(CUDA_ALLOCATOR_SLACK * (sum(breakdown.values()) - always.items["cuda_context"]))
        breakdown["allocator_slack"] = max(0, slack)
    else:
        # glibc's heap, never trimmed (trainer/runtime.py), keeps what each step frees; the
        # next step's buffers come in another order and land partly elsewhere, so the heap
        # settles at a multiple of one step's working set, and evaluation's buffers (of
        # other sizes) come on top.
        growth = CPU_HEAP_GROWTH[kind] - 1
        breakdown["heap_fragmentation"] = int(growth * phases[peak].total() + other.total())
        # Loading happens before the model exists: the process and the loader's arrays
        # only; what it frees is reused later, so it counts only if it is the larger.
        loading = _loading_peak(shape)
        totals["data loading"] = breakdown["process"] + loading
        if totals["data loading"] > sum(breakdown.values()):
            peak = "data loading"
            breakdown = {"process": breakdown["process"], "data_loading": loading}
    return MemoryEstimate(
        device=device,
        backend=kind,
        total_bytes=sum(breakdown.values()),
        phase=peak,
        breakdown=breakdown,
        phases=totals,
    )


def _network(
    hp: Mapping[str, Any], shape: DataShape
) -> tuple[list[int], list[int], list[int], int]:
    """(activation rows per sample, the inputs first; gates with parameters per layer;
    each such layer's input rows; the conv blocks' gather indices, one int64 per leaf and
    position).

    Dense: the layer widths, both. Conv (trainer.conv): per block the gathered patches
    (channels x leaves rows at every position), each tree level's outputs at every position
    (a level's parameters are its gates of one position) and the pooled output, then the
    dense layers. Raises ValueError where the conv options do not fit the data set."""
    dense = layer_widths(int(hp["gates"]), int(hp["networkLayers"]), int(hp["grouping"]))
    if hp["architecture"] != "conv":
        dims = [shape.inputs, *dense]
        return dims, dense, dims[:-1], 0
    image = shape.image
    if image is None:
        raise ValueError(f"dataset {hp['dataset']!r} has no image shape for a conv network")
    spec = ConvSpec.from_options(hp)
    acts, params, index = [shape.inputs], [], 0
    for block in block_shapes(image, spec):
        acts.append(block.channels * spec.leaves * block.positions)
        index += acts[-1] * INT64
        for level in range(1, spec.depth + 1):
            params.append(block.channels * (spec.leaves >> level))
            acts.append(params[-1] * block.positions)
        if spec.pool > 1:
            acts.append(block.outputs)
    ins = [2 * p for p in params] + [block.outputs, *dense[:-1]]
    return acts + dense, params + dense, ins, index


def _dataset_tensors(shape: DataShape) -> list[int]:
    """x_train, y_train, x_test, y_test: uint8 bits and int64 labels (on the CPU the
    tensors share the loader's numpy arrays; on CUDA they are copies on the device)."""
    return [
        shape.train * shape.inputs,
        shape.train * INT64,
        shape.valid * shape.inputs,
        shape.valid * INT64,
        shape.test * shape.inputs,
        shape.test * INT64,
    ]


def _loading_peak(shape: DataShape) -> int:
    """The loader's peak: the raw arrays of both splits, then, for the training split, the
    thermometer encoding's bool array and its uint8 copy (trainer/data/datasets.py); or,
    for cifar10, the raw batches and their concatenation."""
    raw = (shape.train + shape.test) * shape.raw_features
    encode = raw + 2 * shape.train * shape.inputs
    return max(encode, 2 * raw) + shape.test * shape.inputs


def _training_step(
    cuda: bool,
    kind: str,
    dims: list[int],
    batch: int,
    shape: DataShape,
    threads: int,
    gates: list[int],
) -> _Tally:
    """What one step holds at its peak, the start of backward: the saved activations of
    every layer and the gradient buffers of the last one. `dims`: activation rows per
    sample, inputs first; `gates`: gates with parameters per layer (fewer than the
    activations' rows for a conv network's trees, shared by positions)."""
    t = _Tally(cuda)
    in_dim, widths = dims[0], dims[1:]
    t.add("data_order", shape.train * INT64)
    # x[idx] (uint8), its float copy (B, in) and the model's feature-major copy (in, B)
    t.add("batch_inputs", batch * in_dim, batch * in_dim * FLOAT, in_dim * batch * FLOAT)
    for w in gates:
        t.add("gate_probabilities", w * PARAMETRIZATION_SAVED, w * COEFFS * FLOAT)
    t.add("gate_probabilities", max(gates) * PARAMETRIZATION_TEMPS)
    last, before = widths[-1], dims[-2]
    if kind == "torch":
        # TorchLogicFunction keeps a, b and the slope per layer; the last output lives
        # until the loss. Backward of the last layer: grad_y, grad_y * a, a product
        # temporary, grad_x, and the two temporaries of the input gradient.
        t.add("activations", *(3 * w * batch * FLOAT for w in widths), last * batch * FLOAT)
        t.add("backward_buffers", *(4 * [last * batch * FLOAT]), before * batch * FLOAT)
    else:
        # Each layer's output is kept as the next layer's input; at the start of backward
        # the last one is gone and its gradient (and the input gradient) take its place.
        t.add("activations", *(w * batch * FLOAT for w in widths[:-1]))
        t.add("backward_buffers", last * batch * FLOAT, before * batch * FLOAT)
        if kind == "cpp" and threads > 1:
            t.add("backward_buffers", threads * last * COEFFS * FLOAT)
        if kind == "difflogic":
            t.add("backward_buffers", last * DIFFLOGIC_BACKWARD_W)
    t.add("backward_buffers", last * LOGITS * FLOAT, last * LOGITS * FLOAT)  # grad probs
    return t


def _evaluation(
    cuda: bool, kind: str, dims: list[int], eval_batch: int, shape: DataShape
) -> _Tally:
    """One evaluation batch under no_grad: its float and feature-major copies, then the
    widest adjacent pair of layers (input and output of one layer live at once)."""
    t = _Tally(cuda)
    in_dim = dims[0]
    t.add("eval_inputs", eval_batch * in_dim * FLOAT, in_dim * eval_batch * FLOAT)
    per_layer = []
    for i in range(1, len(dims)):
        w, inp = dims[i], dims[i - 1]
        temps = 4 * w if kind == "torch" else 0  # a, b, slope, a product temporary
        held = (w + temps) * eval_batch * FLOAT + (0 if i == 1 else inp * eval_batch * FLOAT)
        per_layer.append(held + w * (LOGITS * (FLOAT + INT64) + PARAMETRIZATION_TEMPS))
    t.add("eval_activations", max(per_layer))
    return t
