"""Issue 21's discretization table: does each gate parametrization learn a discrete network?

    python bench/discretization.py                     # both settings, all nine, ~1 h on 2 cores
    python bench/discretization.py --setting b --parametrizations softmax,sparsemax
    python bench/discretization.py --gates 200 --epochs 2   # a smoke run of the script itself

Runs `python -m trainer` on digits (CPU) as a user would, once per parametrization and
setting, and prints one row each: the discrete and relaxed test accuracy of the saved
network, the gap, the live gates of its circuit (and depth), and the seconds per epoch.

- (a) the seed's request body as is (docs/design.md, "Options"): 3,332 gates x 4 layers,
  residualLayers 4, groupSumTau 100, noiseTemp 0.2, 5 epochs;
- (b) the same with residualLayers 0 and 20 epochs.

Both with `--valid-fraction 0 --keep last` by default, as the issue measured them (the
whole training set, the last epoch's network); `--honest` runs them with the defaults of
this version instead (a validation split of 0.1, the best epoch kept). Each run's
`--seed` is 0 unless `--seed` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.jobs.request import SEED_BODY  # noqa: E402
from trainer import protocol  # noqa: E402
from trainer.cpuinfo import cpu_model  # noqa: E402
from trainer.options import flag_of  # noqa: E402
from trainer.parametrizations import GATE_OPTIMIZERS  # noqa: E402

SETTINGS: dict[str, dict[str, object]] = {
    "a": dict(SEED_BODY),
    "b": {**SEED_BODY, "residualLayers": 0, "epochs": 20},
}


@dataclass
class Row:
    setting: str
    parametrization: str
    discrete: float | None = None
    relaxed: float | None = None
    live: int | None = None
    gates: int | None = None
    depth: int | None = None
    epoch_s: float | None = None
    error: str = ""

    def cells(self) -> list[str]:
        def f(value: float | None, spec: str = ".3f") -> str:
            return "" if value is None else format(value, spec)

        known = self.discrete is not None and self.relaxed is not None
        gap = self.relaxed - self.discrete if known else None  # type: ignore[operator]
        live = (
            ""
            if self.live is None or not self.gates
            else f"{self.live:,}/{self.gates:,} ({100 * self.live / self.gates:.2g} %)"
        )
        return [
            self.setting, self.parametrization, f(self.discrete), f(self.relaxed), f(gap),
            live, "" if self.depth is None else str(self.depth), f(self.epoch_s, ".2f"),
            self.error,
        ]  # fmt: skip


def run_one(setting: str, name: str, args: argparse.Namespace, out: Path) -> Row:
    body = {**SETTINGS[setting], "gateOptimizer": name, "seed": args.seed}
    if args.gates is not None:
        body["gates"] = args.gates
    if args.epochs is not None:
        body["epochs"] = args.epochs
    body.update(args.set)
    argv = [sys.executable, "-m", "trainer", "--device", "cpu", "--output-dir", str(out)]
    for key, value in body.items():
        argv += [flag_of(key), str(value)]
    if not args.honest:
        argv += ["--valid-fraction", "0", "--keep", "last"]
    proc = subprocess.run(
        argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    row = Row(setting, name)
    if proc.returncode != 0:
        row.error = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return row
    seconds: list[float] = []
    for line in proc.stdout.splitlines():
        record = protocol.parse_line(line)
        if isinstance(record, protocol.Epoch) and "epoch_s" in record.metrics:
            seconds.append(float(record.metrics["epoch_s"]))
        elif isinstance(record, protocol.Circuit):
            row.live, row.gates = record.result["gatesLive"], record.result["gates"]
            row.depth = record.result["depth"]
        elif isinstance(record, protocol.Summary) and record.result is not None:
            row.discrete, row.relaxed = record.result.test_acc_discrete, record.result.test_acc
    row.epoch_s = sum(seconds) / len(seconds) if seconds else None
    return row


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected OPTION=VALUE, got {text!r}")
    return name, value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setting", choices=("a", "b", "both"), default="both")
    p.add_argument("--parametrizations", default=",".join(GATE_OPTIMIZERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gates", type=int, help="override the gates per layer (smoke runs)")
    p.add_argument("--epochs", type=int, help="override the epochs (smoke runs)")
    p.add_argument("--honest", action="store_true", help="this version's validation defaults")
    p.add_argument(
        "--set", action="append", type=_setting, default=[], metavar="OPTION=VALUE",
        help="a training option for every run, e.g. --set gateEstimator=soft (repeatable)",
    )  # fmt: skip
    args = p.parse_args()
    names = [n for n in args.parametrizations.split(",") if n]
    unknown = sorted(set(names) - set(GATE_OPTIMIZERS))
    if unknown:
        p.error(f"unknown parametrizations {unknown}; choose from {', '.join(GATE_OPTIMIZERS)}")
    settings = ["a", "b"] if args.setting == "both" else [args.setting]
    print(
        f"machine: cpu={cpu_model()!r} cores={os.cpu_count()} python={platform.python_version()}"
        f"  settings: a={SETTINGS['a']}  b: residualLayers 0, 20 epochs"
        + ("  (validFraction 0.1, keep best)" if args.honest else "  (validFraction 0, keep last)")
        + "".join(f"  {name}={value}" for name, value in args.set),
        flush=True,
    )
    header = ["set", "parametrization", "discrete", "relaxed", "gap", "live gates", "depth",
              "s/epoch", "error"]  # fmt: skip
    print("\t".join(header), flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="discretization-") as tmp:
        for setting in settings:
            for name in names:
                row = run_one(setting, name, args, Path(tmp) / f"{setting}-{name}")
                print("\t".join(row.cells()).rstrip(), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
