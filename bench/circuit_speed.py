"""Images per second of our compiled circuit vs difflogic's CompiledLogicNet vs numpy.

    python bench/circuit_speed.py [--samples N] [--skip-cln-mnist] [--cache DIR]

Networks: a digits network trained here by `python -m trainer`, a random 4 x 4,000 one
(the size CompiledLogicNet was measured at elsewhere: 362,000 images/s), and a random
MNIST-size one (784 inputs, 6 layers of 16,000 gates, all 16 gate ids). Our library runs
on 1 and 2 threads, CompiledLogicNet and numpy on one (they have no threads).

CompiledLogicNet comes from difflogic's sdist (`pip download --no-binary :all:`, cached
under --cache), imported from its source with the `difflogic_cuda` extension stubbed out:
the compiled model is plain C. It is given a real torch model of difflogic LogicLayers
whose connections and weights are set to our network's, and its C function is timed
directly on inputs laid out as its forward() would, so none of its Python wrapping counts
against it. It compiles at -O1, its own default and its docstring's recommendation.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.circuit import compile_network  # noqa: E402
from trainer.circuit.build import simd_level  # noqa: E402
from trainer.circuit.measure import bench_inputs, images_per_s  # noqa: E402
from trainer.circuit.synthetic import random_network  # noqa: E402
from trainer.cpuinfo import cpu_model  # noqa: E402
from trainer.export import DiscreteNetwork, load_network, save_network  # noqa: E402

DIGITS_ARGS = [
    "--dataset", "digits", "--gate-optimizer", "softmax", "--gates", "1000",
    "--network-layers", "3", "--epochs", "10", "--residual-layers", "0",
    "--group-sum-tau", "10", "--device", "cpu",
]  # fmt: skip


def difflogic_source(cache: Path) -> Path:
    """The unpacked difflogic sdist, downloaded with pip the first time."""
    cache.mkdir(parents=True, exist_ok=True)
    archives = sorted(cache.glob("difflogic-*.tar.gz"))
    if not archives:
        # Its setup.py builds a CUDA extension and wants CUDA_HOME just to say its
        # metadata; an empty folder is enough, nothing is built.
        fake_cuda = Path(tempfile.mkdtemp(prefix="no-cuda-"))
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             "--no-build-isolation", "difflogic", "-d", str(cache)],
            check=True, env={**os.environ, "CUDA_HOME": str(fake_cuda)},
        )  # fmt: skip
        archives = sorted(cache.glob("difflogic-*.tar.gz"))
    root = cache / archives[-1].name.removesuffix(".tar.gz")
    if not root.exists():
        with tarfile.open(archives[-1]) as tar:
            tar.extractall(cache, filter="data")
    return root / "difflogic"


def load_difflogic(package_dir: Path) -> types.ModuleType:
    """Import difflogic from its source, with a stand-in for the CUDA extension."""
    sys.modules.setdefault("difflogic_cuda", types.ModuleType("difflogic_cuda"))
    spec = importlib.util.spec_from_file_location(
        "difflogic", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["difflogic"] = module
    spec.loader.exec_module(module)
    return module


def compiled_logic_net(difflogic: types.ModuleType, net: DiscreteNetwork) -> Any:
    """difflogic's CompiledLogicNet of a torch model carrying our network's gates."""
    import torch

    layers: list[torch.nn.Module] = []
    for layer in net.layers:
        ll = difflogic.LogicLayer(
            int(layer.a.max(initial=0)) + 1 if not layers else layers[-1].out_dim,
            len(layer.op), device="cpu", implementation="python",
        )  # fmt: skip
        if not layers:
            ll.in_dim = net.in_dim
        ll.indices = (torch.as_tensor(layer.a), torch.as_tensor(layer.b))
        weights = torch.full((len(layer.op), 16), -10.0)
        weights[torch.arange(len(layer.op)), torch.as_tensor(layer.op.astype(np.int64))] = 10.0
        ll.weights = torch.nn.Parameter(weights)
        layers.append(ll)
    model = torch.nn.Sequential(*layers, difflogic.GroupSum(net.grouping, 1.0))
    return difflogic.CompiledLogicNet(model, device="cpu", num_bits=64, cpu_compiler="gcc")


def cln_images_per_s(cln: Any, x: np.ndarray, min_time_s: float = 1.0) -> tuple[float, np.ndarray]:
    """Its C function on x (already a multiple of 64 rows), best of three rounds."""
    flat = np.ascontiguousarray(x.astype(bool)).reshape(-1)
    out = np.zeros(len(x) * cln.num_classes, np.int32)
    blocks = len(x) // 64
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while True:
            cln.lib_fn(flat, out, blocks)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time_s / 3:
                break
        best = max(best, calls * len(x) / elapsed)
    return best, out.reshape(len(x), cln.num_classes)


def numpy_images_per_s(net: DiscreteNetwork, x: np.ndarray) -> float:
    start = time.perf_counter()
    net.predict(x)
    return len(x) / (time.perf_counter() - start)


def train_digits(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "trainer", *DIGITS_ARGS, "--output-dir", str(out)],
                   check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    return out / "network.json"


def run(name: str, path: Path, work: Path, args: argparse.Namespace, difflogic: Any) -> None:
    net = load_network(path)
    start = time.perf_counter()
    compiled = compile_network(path, work / f"{name}-circuit")
    ours_compile = time.perf_counter() - start
    m = compiled.manifest
    x = bench_inputs(net.in_dim, args.samples)
    small = x[: args.small_samples]
    ours = {t: images_per_s(compiled.library, x, threads=t, min_time_s=1.0) for t in (1, 2)}
    ours_small = images_per_s(compiled.library, small, threads=1, min_time_s=1.0)
    numpy_speed = numpy_images_per_s(net, x[: max(64, args.samples // 16)])
    line = (
        f"{name}: gates={m['gates']} gates_live={m['gates_live']} "
        f"live_fraction={m['gates_live'] / max(1, m['gates']):.3f} depth={m['depth']} "
        f"compile_s={ours_compile:.2f} (gcc {m['compile_s']:.2f})\n"
        f"  ours  threads=1 images_per_s={ours[1]:,.0f}  threads=2 images_per_s={ours[2]:,.0f}"
        f"  (x{ours[2] / ours[1]:.2f})\n"
        f"  ours  threads=1 in {len(small)}-sample calls (inputs in cache) "
        f"images_per_s={ours_small:,.0f}\n"
        f"  numpy images_per_s={numpy_speed:,.0f}  ours/numpy=x{ours[1] / numpy_speed:,.0f}"
    )
    print(line, flush=True)
    if difflogic is None:
        return
    cln = compiled_logic_net(difflogic, net)
    start = time.perf_counter()
    cln.compile(opt_level=1)
    cln_compile = time.perf_counter() - start
    x64 = x[: len(x) // 64 * 64]
    cln_speed, cln_scores = cln_images_per_s(cln, x64)
    cln_small, _ = cln_images_per_s(cln, x64[: len(small) // 64 * 64])
    agree = bool(np.array_equal(cln_scores[:4096], net.scores(x64[:4096])))
    print(
        f"  CompiledLogicNet images_per_s={cln_speed:,.0f} compile_s={cln_compile:.1f} "
        f"scores_match_numpy={agree}  ours/CompiledLogicNet=x{ours[1] / cln_speed:.1f}\n"
        f"  CompiledLogicNet in {len(small)}-sample calls images_per_s={cln_small:,.0f}  "
        f"ours/CompiledLogicNet=x{ours_small / cln_small:.1f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=1 << 16, help="inputs per call")
    parser.add_argument(
        "--small-samples",
        type=int,
        default=2048,
        help="inputs per call of the in-cache measurement",
    )
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "gatequeue" / "difflogic-sdist"
    )
    parser.add_argument("--skip-cln", action="store_true", help="no CompiledLogicNet at all")
    parser.add_argument(
        "--skip-cln-mnist",
        action="store_true",
        help="no CompiledLogicNet for the MNIST-size network (gcc takes minutes)",
    )
    args = parser.parse_args()
    print(
        f"machine: cpu={cpu_model()!r} simd={simd_level()} cores={os.cpu_count()} "
        f"python={platform.python_version()}",
        flush=True,
    )
    difflogic = None if args.skip_cln else load_difflogic(difflogic_source(args.cache))
    with tempfile.TemporaryDirectory(prefix="circuit-speed-") as tmp:
        work = Path(tmp)
        run("digits (trained)", train_digits(work / "digits"), work, args, difflogic)
        four = save_network(random_network(784, [4000] * 4, 10, seed=0), work / "r4")
        run("random 4x4000", four, work, args, difflogic)
        mnist = save_network(random_network(784, [16000] * 6, 10, seed=0), work / "r6")
        run(
            "random mnist-size 6x16000",
            mnist,
            work,
            args,
            None if args.skip_cln_mnist else difflogic,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
