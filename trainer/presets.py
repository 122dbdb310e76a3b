"""Named convolutional configurations (LogicTreeNet sizes) for digits, mnist and cifar10,
small to large: `python -m trainer --preset NAME` starts from one (flags given beside it
win), `python -m trainer.presets` lists them with their gate counts.

Torch-free: a preset is a set of training options (trainer.options), and its gate count
comes from trainer.convspec, as the trainer counts it (trees unrolled over positions, OR
pools, dense layers). `paper_gates` is the paper's count where we could check it; the
paper (Petersen et al. 2024) gives 61 M gates for its largest CIFAR-10 network (86.29 %),
its abstract says; its other sizes were not reachable while these were written.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.convspec import ConvSpec, discrete_widths
from trainer.data.catalog import IMAGE_SHAPES


@dataclass(frozen=True)
class Preset:
    name: str
    options: Mapping[str, Any]
    note: str
    paper_gates: int | None = None

    def gates(self) -> int:
        """Gates of the unrolled network this preset trains."""
        from trainer.memory import layer_widths  # torch-free

        v = {**_OPTION_DEFAULTS, **self.options}
        dense = layer_widths(int(v["gates"]), int(v["networkLayers"]), int(v["grouping"]))
        return sum(discrete_widths(IMAGE_SHAPES[v["dataset"]], ConvSpec.from_options(v), dense))


def _conv(
    dataset: str, channels: str, depth: int, gates: int, epochs: int, **more: Any
) -> dict[str, Any]:
    blocks = len(channels.split(","))
    return {
        "dataset": dataset, "architecture": "conv", "convChannels": channels,
        "treeDepth": depth, "gates": gates, "networkLayers": 2, "residualLayers": blocks,
        "gateOptimizer": "softmax", "groupSumTau": 10.0 if gates < 10_000 else 30.0,
        "learningRate": 0.02, "epochs": epochs,
    } | more  # fmt: skip


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # 8x8 digits lose to pooling and train faster from a random start
        # (bench/conv_vs_dense.py, docs/trainer.md): one or two blocks at full size.
        Preset(
            "digits-small",
            _conv(
                "digits",
                "32",
                2,
                1000,
                30,
                poolSize=1,
                residualLayers=0,
                groupSumTau=3.0,
                learningRate=0.05,
            ),
            "seconds on a CPU core",
        ),
        Preset(
            "digits-large",
            _conv(
                "digits",
                "64,64",
                2,
                2000,
                30,
                poolSize=1,
                residualLayers=0,
                groupSumTau=3.0,
                learningRate=0.05,
            ),
            "a minute on a CPU core",
        ),
        Preset("mnist-small", _conv("mnist", "16,32", 2, 4000, 10), "two blocks"),
        Preset("mnist-medium", _conv("mnist", "32,64,128", 2, 8000, 20), "three blocks"),
        Preset("mnist-large", _conv("mnist", "64,128,256", 3, 16000, 30), "depth-3 trees"),
        Preset("cifar10-small", _conv("cifar10", "32,64,128,256", 3, 16000, 30), "four blocks"),
        Preset(
            "cifar10-medium",
            _conv("cifar10", "128,512,2048,4096", 3, 128000, 100),
            "a GPU's work",
        ),
        Preset(
            "cifar10-large",
            _conv("cifar10", "2048,4096,8192,8192", 3, 256000, 200),
            "the widest our 20 M-gate block limit allows at 32x32; a cluster's work",
            paper_gates=61_000_000,
        ),
    )
}


def _defaults() -> dict[str, Any]:
    from trainer.options import TRAINING_OPTIONS

    return {o.name: o.default for o in TRAINING_OPTIONS}


_OPTION_DEFAULTS = _defaults()


def apply(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Make `--preset NAME`'s options the parser's defaults, so flags given beside it win."""
    from trainer.options import dest_of

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=list(PRESETS))
    known, _ = pre.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**{dest_of(k): v for k, v in PRESETS[known.preset].options.items()})


def describe() -> list[dict[str, Any]]:
    """The presets as the web form reads them (`GET /options`'s `presets`)."""
    return [
        {
            "name": p.name,
            "note": p.note,
            "gates": p.gates(),
            "paperGates": p.paper_gates,
            "options": dict(p.options),
        }
        for p in PRESETS.values()
    ]


def table() -> list[str]:
    lines = [
        "| preset | data set | gates | paper's gates | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in PRESETS.values():
        paper = f"{p.paper_gates:,}" if p.paper_gates else "-"
        lines.append(f"| {p.name} | {p.options['dataset']} | {p.gates():,} | {paper} | {p.note} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m trainer.presets", description=__doc__).parse_args(argv)
    print("\n".join(table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
