"""The Python stages of bench/gpu_check.sh; each writes one JSON object to the file given.

    python3 bench/gpu_stages.py env      OUT.json   # GPU, driver, torch, CUDA, nvcc
    python3 bench/gpu_stages.py train    OUT.json   # the seed on digits, killed, resumed
    python3 bench/gpu_stages.py parity   OUT.json   # difflogic vs torch, repeats, graph vs eager
    python3 bench/gpu_stages.py steps    OUT.json   # step times and memory per backend and mode
    python3 bench/gpu_stages.py memory   OUT.json   # trainer.memory's estimate vs the measured peak
    python3 bench/gpu_stages.py merge    DIR OUT.json

`--dry-run` (gpu_check.sh dry-run) runs them on the CPU, with tests/trainer's CPU
stand-in for difflogic_cuda and small sizes, so the script's own logic is checked on a
machine without a GPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.runtime import prepare_process  # noqa: E402

prepare_process()

import torch  # noqa: E402

MiB = 1 << 20
# The seed's example (docs/trainer.md) on digits: what the `train` stage runs too.
SEED_HP: dict[str, Any] = {
    "dataset": "digits",
    "gateOptimizer": "sparsemax_noise",
    "gates": 3332,
    "networkLayers": 4,
    "grouping": 10,
    "groupSumTau": 100.0,
    "residualLayers": 4,
    "noiseTemp": 0.2,
    "batchSize": 128,
}
SIZES = [(256, 3340, 4), (784, 32000, 4)]
DRY_SIZES = [(64, 200, 2), (96, 400, 2)]


class Ctx:
    dry = False
    device = torch.device("cuda")


def sync() -> None:
    if Ctx.device.type == "cuda":
        torch.cuda.synchronize()


def use_standin() -> None:
    """Dry run: tests/trainer's stand-in as difflogic_cuda, and difflogic allowed on CPU."""
    sys.path.insert(0, str(ROOT / "tests" / "trainer"))
    import difflogic_standin  # type: ignore[import-not-found]

    import trainer.layer as layer_module
    from trainer.kernels import difflogic_cuda as dl

    dl._module = difflogic_standin.module()
    real = layer_module.resolve_backend
    layer_module.resolve_backend = lambda b, d: b if b == "difflogic" else real(b, d)


def difflogic_reason() -> str | None:
    """None where difflogic_cuda imports (or stands in), else why not."""
    from trainer.kernels import difflogic_cuda as dl

    return None if dl.difflogic_cuda() is not None else dl.unavailable_reason() or "no module"


def command(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"
    return (out.stdout + out.stderr).strip()


# -- env --------------------------------------------------------------------------------


def stage_env() -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "nvcc": shutil.which("nvcc"),
        "cpus": os.cpu_count(),
    }
    if out["nvcc"]:
        version = command([out["nvcc"], "--version"]) or ""
        out["nvcc_version"] = version.splitlines()[-1] if version else None
    smi = shutil.which("nvidia-smi")
    if smi:
        out["nvidia_smi_L"] = command([smi, "-L"])
        out["nvidia_smi"] = command(
            [smi, "--query-gpu=index,name,driver_version,memory.total,mig.mode.current,"
             "clocks.max.sm,power.limit", "--format=csv"]
        )  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out |= {
            "gpu": props.name,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "multiprocessors": props.multi_processor_count,
            "memory_mib": props.total_memory // MiB,
            "arch_list": torch.cuda.get_arch_list(),
        }
        free, total = torch.cuda.mem_get_info(0)
        out["context_mib"] = round((total - free) / MiB, 1)  # the context, nothing allocated
    out["difflogic_cuda"] = difflogic_reason() or "imports"
    return out


# -- train ------------------------------------------------------------------------------


class SmiPoller:
    """The most GPU memory nvidia-smi shows for the processes of `pids` (any process if it
    shows none of them, as a container's PID namespace may), sampled every 0.25 s."""

    def __init__(self) -> None:
        import threading

        self.peak_mib: float | None = None
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._smi = shutil.which("nvidia-smi")
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        query = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        while self._smi and not self._stop.wait(0.25):
            rows = []
            for line in (command([self._smi, *query]) or "").splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                    rows.append((int(parts[0]), float(parts[1])))
            ours = [m for pid, m in rows if pid in self.pids] or [m for _, m in rows]
            if ours:
                self.peak_mib = max(self.peak_mib or 0.0, *ours)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak_mib


def run_trainer(
    argv: list[str], env: dict[str, str], poller: SmiPoller, kill_after: str | None = None
) -> dict[str, Any]:
    """One trainer process; its stdout protocol lines, exit status and seconds. With
    `kill_after`, SIGKILL it once a stdout line starts so (a crash, as a real one)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", *argv], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    poller.pids.add(proc.pid)
    lines, killed = [], False
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.split(" ", 1)[0] in ("EPOCH", "SUMMARY", "CHECKPOINT", "RESUMED", "CIRCUIT"):
            lines.append(line.strip())
        if kill_after and line.startswith(kill_after) and not killed:
            proc.kill()
            killed = True
    rc = proc.wait()
    return {"rc": rc, "killed": killed, "seconds": round(time.perf_counter() - t0, 1),
            "lines": lines}  # fmt: skip


def stage_train() -> dict[str, Any]:
    """The seed's example on digits with the torch path: 3 epochs with a checkpoint after
    each, killed after the checkpoint of epoch 2, resumed from it to the end, in the
    environment a worker gives a GPU slot."""
    from service.worker.gpus import Slot

    device = "cuda" if Ctx.device.type == "cuda" else "cpu"
    env = Slot("0" if device == "cuda" else "cpu").env(os.environ)
    work = Path("/tmp/gpu_check_train")
    shutil.rmtree(work, ignore_errors=True)
    flags = {
        "--gate-optimizer": SEED_HP["gateOptimizer"], "--gates": SEED_HP["gates"],
        "--network-layers": SEED_HP["networkLayers"], "--grouping": SEED_HP["grouping"],
        "--group-sum-tau": SEED_HP["groupSumTau"], "--residual-layers": 4,
        "--noise-temp": SEED_HP["noiseTemp"], "--dataset": "digits", "--epochs": 3,
        "--device": device, "--backend": "torch", "--checkpoint-dir": work / "checkpoints",
        "--checkpoint-interval-s": 0, "--progress-s": 600,
    }  # fmt: skip
    if Ctx.dry:
        flags |= {"--gates": 200, "--network-layers": 2, "--residual-layers": 2}
    argv = [str(v) for kv in flags.items() for v in kv] + ["--no-circuit"]
    poller = SmiPoller()
    out: dict[str, Any] = {"slot_env": {k: env.get(k) for k in (
        "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS"
    )}}  # fmt: skip
    try:
        first = run_trainer(
            [*argv, "--output-dir", str(work / "out1")], env, poller, "CHECKPOINT epoch=2"
        )
        out["first"] = first
        saved = [line for line in first["lines"] if line.startswith("CHECKPOINT epoch=2 ")]
        if not saved:
            out["ok"] = False
            out["error"] = "no checkpoint of epoch 2"
            return out
        path = saved[-1].split(" path=", 1)[1].rsplit(" bytes=", 1)[0]
        resumed = run_trainer(
            [*argv, "--output-dir", str(work / "out2"), "--resume-from", path], env, poller
        )
        out["resumed"] = resumed
        out["ok"] = (
            resumed["rc"] == 0
            and any(line.startswith("RESUMED epoch=2") for line in resumed["lines"])
            and any(line.startswith("EPOCH 3/3") for line in resumed["lines"])
            and any(line.startswith("SUMMARY") for line in resumed["lines"])
        )
    finally:
        out["nvidia_smi_peak_mib"] = poller.stop()
    return out


# -- parity -----------------------------------------------------------------------------


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def layer_parity() -> dict[str, Any]:
    from trainer.layer import LogicLayer
    from trainer.parametrizations import GATE_OPTIMIZERS, Parametrization

    in_dim, gates, batch = (40, 64, 33) if Ctx.dry else (256, 2048, 128)
    out: dict[str, Any] = {}
    worst = 0.0
    for dtype in (torch.float32, torch.float64):
        for name in GATE_OPTIMIZERS:
            torch.manual_seed(1)
            layer = LogicLayer(in_dim, gates, Parametrization(name, 0.5)).to(Ctx.device, dtype)
            x = torch.rand(in_dim, batch, dtype=dtype, device=Ctx.device)
            grad_y = torch.randn(gates, batch, dtype=dtype, device=Ctx.device)
            errors: dict[str, float] = {}
            for mode in ("train", "relaxed", "eval"):
                layer.train(mode == "train")
                layer.relaxed_eval = mode == "relaxed"
                runs = []
                for backend in ("difflogic", "torch"):
                    layer.backend = backend
                    layer.logits.grad = None
                    xg = x.clone().requires_grad_(True)
                    torch.manual_seed(7)
                    y = layer(xg)
                    y.backward(grad_y)
                    g = layer.logits.grad
                    runs.append((y.detach(), xg.grad, torch.zeros(1) if g is None else g.clone()))
                for i, what in enumerate(("y", "grad_x", "grad_logits")):
                    err = rel(runs[0][i].cpu(), runs[1][i].cpu())
                    errors[f"{mode}_{what}"] = err
                    worst = max(worst, err) if err == err else float("inf")
            out[f"{name}/{str(dtype).removeprefix('torch.')}"] = errors
    return {"max_rel_error": worst, "by_parametrization": out}


def build(backend: str, in_dim: int, gates: int, layers: int, gate_optimizer: str) -> Any:
    from trainer.model import build_model

    torch.manual_seed(0)
    return build_model(
        in_dim, gates=gates, network_layers=layers, grouping=10, group_sum_tau=100.0,
        gate_optimizer=gate_optimizer, residual_layers=layers, backend=backend,
    ).to(Ctx.device)  # fmt: skip


def batch_data(in_dim: int, n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(n, in_dim, generator=g) > 0.5).to(torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(Ctx.device), y.to(Ctx.device)


def repeat_bitwise(backend: str) -> dict[str, Any]:
    """Two Adam steps of one network, twice from the same seed: the same bits?"""
    from trainer.cuda_step import eager_step
    from trainer.device import make_optimizer

    in_dim, gates, layers = DRY_SIZES[0] if Ctx.dry else SIZES[0]
    x, y = batch_data(in_dim, 256)
    finals = []
    for _ in range(2):
        model = build(backend, in_dim, gates, layers, "sparsemax_noise")
        opt = make_optimizer(model.parameters(), 0.01, Ctx.device)
        torch.manual_seed(3)
        for step in range(2):
            idx = torch.arange(step * 128, (step + 1) * 128, device=Ctx.device)
            eager_step(model, opt, x[idx], y[idx])
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]).cpu())
    diff = (finals[0] - finals[1]).abs().max().item()
    return {"bitwise_equal": bool(torch.equal(*finals)), "max_abs_diff": diff}


def graph_vs_eager(backend: str) -> dict[str, Any]:
    """Five steps captured and replayed against the same five steps eagerly (softmax: no
    noise draws, so only float summation order may differ)."""
    from trainer.cuda_step import CapturedStep, eager_step
    from trainer.device import make_optimizer

    if Ctx.device.type != "cuda":
        return {"skipped": "no CUDA device"}
    in_dim, gates, layers = SIZES[0]
    x, y = batch_data(in_dim, 1024)
    finals = []
    for captured in (False, True):
        model = build(backend, in_dim, gates, layers, "softmax")
        opt = make_optimizer(model.parameters(), 0.01, Ctx.device, capturable=True)
        runner = CapturedStep(model, opt, x, y, 128) if captured else None
        for step in range(5):
            idx = torch.arange(step * 128, (step + 1) * 128, device=Ctx.device)
            if runner is not None:
                runner.run(idx)
            else:
                eager_step(model, opt, x[idx], y[idx])
        tail = torch.arange(640, 700, device=Ctx.device)  # a short last batch: eager
        if runner is not None:
            runner.run(tail)
        else:
            eager_step(model, opt, x[tail], y[tail])
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]).cpu())
    return {"rel_diff": rel(finals[1], finals[0]), "bitwise_equal": bool(torch.equal(*finals))}


def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One part's result, or its error: a failing part must not hide the others."""
    try:
        return fn()
    except Exception as exc:  # recorded, the stage goes on
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def stage_parity() -> dict[str, Any]:
    out: dict[str, Any] = {}
    reason = difflogic_reason()
    backends = ["torch"] if reason else ["torch", "difflogic"]
    out["layers"] = {"skipped": reason} if reason else guarded(layer_parity)
    for backend in backends:
        out[f"repeat_{backend}"] = guarded(functools.partial(repeat_bitwise, backend))
        out[f"graph_vs_eager_{backend}"] = guarded(functools.partial(graph_vs_eager, backend))
    return out


# -- steps ------------------------------------------------------------------------------


def time_steps(backend: str, mode: str, in_dim: int, gates: int, layers: int) -> dict[str, Any]:
    """Median seconds per step over three runs of `steps` steps without a sync between
    steps (as trainer.loop runs them); peak memory of the whole."""
    from trainer.cuda_step import CapturedStep
    from trainer.device import make_optimizer

    steps, repeats = (3, 2) if Ctx.dry else (20, 3)
    x, y = batch_data(in_dim)
    if Ctx.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build(backend, in_dim, gates, layers, "sparsemax_noise")
    if mode == "eager":  # trainer.loop's optimizer today
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    else:
        opt = make_optimizer(model.parameters(), 0.01, Ctx.device, capturable=mode == "graph")
    t0 = time.perf_counter()
    runner = CapturedStep(model, opt, x, y, 128) if mode == "graph" else None
    capture_s = time.perf_counter() - t0
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1)).to(Ctx.device)

    def step(i: int) -> None:
        idx = order[(i * 128) % 3968 : (i * 128) % 3968 + 128]
        if runner is not None:
            runner.run(idx)
            return
        # trainer.loop's step as it is
        xb, yb = x[idx].float(), y[idx]
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):
        step(i)
    times = []
    for r in range(repeats):
        sync()
        t0 = time.perf_counter()
        for i in range(steps):
            step(r * steps + i)
        sync()
        times.append((time.perf_counter() - t0) / steps)
    out: dict[str, Any] = {"ms_per_step": round(statistics.median(times) * 1e3, 3)}
    out["ms_runs"] = [round(t * 1e3, 3) for t in times]
    if runner is not None:
        out["capture_s"] = round(capture_s, 2)
    if Ctx.device.type == "cuda":
        out["max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
        out["max_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MiB, 1)
    return out


def stage_steps() -> dict[str, Any]:
    reason = difflogic_reason()
    backends = ["torch"] if reason else ["torch", "difflogic"]
    modes = ["eager", "fused"] + (["graph"] if Ctx.device.type == "cuda" else [])
    out: dict[str, Any] = {"difflogic": reason or "imports", "batch": 128}
    for in_dim, gates, layers in DRY_SIZES if Ctx.dry else SIZES:
        key = f"{in_dim}->{gates}x{layers}"
        out[key] = {}
        for backend in backends:
            for mode in modes:
                out[key][f"{backend}/{mode}"] = guarded(
                    functools.partial(time_steps, backend, mode, in_dim, gates, layers)
                )
                print(key, backend, mode, out[key][f"{backend}/{mode}"], flush=True)
    return out


# -- memory -----------------------------------------------------------------------------


def stage_memory(smi_peak_mib: float | None) -> dict[str, Any]:
    """The seed's example for one epoch through the trainer's own entry point, in this
    process: the allocator's peak and the context beside trainer.memory's estimate."""
    from trainer.cli import main as trainer_main
    from trainer.memory import estimate_memory

    out: dict[str, Any] = {}
    device = "cuda" if Ctx.device.type == "cuda" else "cpu"
    estimate = estimate_memory(SEED_HP, device, backend="torch")
    out["estimate"] = {k: round(v / MiB, 1) for k, v in estimate.breakdown.items()}
    out["estimate_total_mib"] = round(estimate.total_bytes / MiB, 1)
    out["estimate_phase"] = estimate.phase
    if device == "cuda":
        torch.cuda.init()
        torch.empty(1, device="cuda")
        free, total = torch.cuda.mem_get_info()
        out["context_at_start_mib"] = round((total - free - torch.cuda.memory_reserved()) / MiB, 1)
    flags = {
        "--gate-optimizer": SEED_HP["gateOptimizer"], "--gates": SEED_HP["gates"],
        "--network-layers": SEED_HP["networkLayers"], "--grouping": SEED_HP["grouping"],
        "--group-sum-tau": SEED_HP["groupSumTau"], "--residual-layers": 4,
        "--noise-temp": SEED_HP["noiseTemp"], "--dataset": "digits", "--epochs": 1,
        "--device": device, "--backend": "torch", "--output-dir": "/tmp/gpu_check_memory",
    }  # fmt: skip
    if Ctx.dry:
        flags |= {"--gates": 200, "--network-layers": 2, "--residual-layers": 2}
    argv = [str(v) for kv in flags.items() for v in kv] + ["--no-circuit"]
    out["trainer_rc"] = trainer_main(argv)
    if device == "cuda":
        # The context grows while training (kernels load lazily, cuBLAS's handle): take it
        # at the end, beside the allocator's peak.
        free, total = torch.cuda.mem_get_info()
        context = total - free - torch.cuda.memory_reserved()
        out["context_at_end_mib"] = round(context / MiB, 1)
        reserved = torch.cuda.max_memory_reserved()
        out["max_reserved_mib"] = round(reserved / MiB, 1)
        out["max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
        measured = context + reserved
        out["measured_total_mib"] = round(measured / MiB, 1)
        out["estimate_over_measured"] = round(estimate.total_bytes / measured, 3)
    if smi_peak_mib is not None:
        out["train_stage_nvidia_smi_peak_mib"] = smi_peak_mib
        out["estimate_over_nvidia_smi_peak"] = round(estimate.total_bytes / MiB / smi_peak_mib, 3)
    return out


# -- merge ------------------------------------------------------------------------------


def merge(directory: Path, target: Path) -> None:
    """Every stage's record (gpu_check.sh's <stage>.meta.json, with the stage's own
    <stage>.json as its `result` where written) in one file."""
    stages: dict[str, Any] = {}
    for meta in sorted(directory.glob("*.meta.json"), key=lambda p: p.stat().st_mtime):
        name = meta.name.removesuffix(".meta.json")
        try:
            record = json.loads(meta.read_text())
        except ValueError as exc:
            record = {"status": "unreadable", "error": str(exc)}
        result = directory / f"{name}.json"
        if result.exists():
            try:
                record["result"] = json.loads(result.read_text())
            except ValueError as exc:
                record["result"] = {"unreadable": str(exc)}
        log = directory / f"{name}.out"
        if log.exists():
            record["output_tail"] = log.read_text(errors="replace")[-3000:]
        stages[name] = record
    summary = {name: record.get("status") for name, record in stages.items()}
    target.write_text(json.dumps({"summary": summary, "stages": stages}, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["env", "train", "parity", "steps", "memory", "merge"])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--smi-peak-mib", type=float, default=None)
    args = parser.parse_args()
    if args.stage == "merge":
        merge(Path(args.paths[0]), Path(args.paths[1]))
        return 0
    Ctx.dry = args.dry_run
    if Ctx.dry:
        Ctx.device = torch.device("cpu")
        use_standin()
    elif args.stage != "env":  # env runs before the wheels (structlog) are installed
        # Measure as a worker's GPU slot runs (the allocator's settings are read at the
        # first CUDA allocation, after this).
        from service.worker.gpus import Slot

        slot_env = Slot("0").env({})
        for key in ("CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF"):
            os.environ.setdefault(key, slot_env[key])
        if not torch.cuda.is_available() and args.stage != "env":
            raise SystemExit("no CUDA device")
    stages: dict[str, Callable[[], dict[str, Any]]] = {
        "env": stage_env,
        "train": stage_train,
        "parity": stage_parity,
        "steps": stage_steps,
        "memory": lambda: stage_memory(args.smi_peak_mib),
    }
    result = stages[args.stage]()
    Path(args.paths[0]).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, default=str)[:4000], flush=True)
    return 1 if result.get("ok") is False or "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
