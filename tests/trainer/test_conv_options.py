"""The conv options: the rules name the field to change, a dense run's checkpoint hash is
as before they existed, the memory estimate counts the conv blocks, the trainer's flags."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

from trainer.cli import build_parser, validate
from trainer.memory import estimate_memory
from trainer.options import CONV_NAMES, TRAINING_NAMES, TrainingOptions, hyperparameters_hash

BASE = {"gateOptimizer": "softmax", "networkLayers": 2, "architecture": "conv"}


def problems(**changes: object) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        TrainingOptions.model_validate({**BASE, **changes})
    return {str(e["loc"][0]): e["msg"] for e in info.value.errors()}


def test_conv_defaults_fit_every_image_data_set() -> None:
    for dataset in ("digits", "mnist", "cifar10"):
        TrainingOptions.model_validate({**BASE, "dataset": dataset})


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"dataset": "breast_cancer", "grouping": 2}, "architecture", "no image shape"),
        ({"kernelSize": 11}, "kernelSize", "larger than its input 8x8"),
        ({"convChannels": "4,4,4,4"}, "poolSize", "below 1x1"),
        ({"kernelSize": 1, "convPadding": 0, "treeDepth": 3}, "treeDepth", "has only 4"),
        ({"convChannels": "9999,9999", "dataset": "mnist"}, "convChannels", "unrolls to"),
        ({"residualLayers": 5}, "residualLayers", "plus the conv blocks"),
    ],
)
def test_a_conv_misfit_is_named_on_its_field(
    changes: dict[str, object], field: str, words: str
) -> None:
    found = problems(**changes)
    assert list(found) == [field]
    assert words in found[field]


def test_dense_runs_ignore_the_conv_options() -> None:
    TrainingOptions.model_validate(
        {**BASE, "architecture": "dense", "dataset": "breast_cancer", "grouping": 2,
         "kernelSize": 15}
    )  # fmt: skip


def test_a_dense_runs_hash_is_the_one_from_before_the_conv_options() -> None:
    hp = TrainingOptions.model_validate({**BASE, "architecture": "dense"}).model_dump()
    before = {k: hp[k] for k in TRAINING_NAMES if k not in CONV_NAMES}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert hyperparameters_hash(hp) == digest
    conv = {**hp, "architecture": "conv"}
    assert hyperparameters_hash(conv) != digest
    assert hyperparameters_hash({**conv, "kernelSize": 5}) != hyperparameters_hash(conv)


def test_memory_estimate_counts_the_conv_blocks() -> None:
    dense = estimate_memory({"dataset": "mnist"}, "cpu")
    small = estimate_memory({"dataset": "mnist", "architecture": "conv"}, "cpu")
    wide = estimate_memory(
        {"dataset": "mnist", "architecture": "conv", "convChannels": "64,128"}, "cpu"
    )
    assert dense.total_bytes < small.total_bytes < wide.total_bytes
    # wider blocks: more activations per sample (patches and tree levels at every position)
    assert wide.phases["training step"] - small.phases["training step"] > 64 * 128 * 784 * 4
    with pytest.raises(ValueError, match="no image shape"):
        estimate_memory({"dataset": "breast_cancer", "architecture": "conv"}, "cpu")


def test_the_trainer_refuses_a_conv_run_on_tabular_data() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["--gate-optimizer", "softmax", "--architecture", "conv", "--dataset", "breast_cancer",
         "--grouping", "2", "--network-layers", "2"]
    )  # fmt: skip
    with pytest.raises(SystemExit) as info:
        validate(parser, args)
    assert info.value.code == 2


def test_image_shapes_hold_every_input_of_their_data_sets() -> None:
    from trainer.data.catalog import IMAGE_SHAPES, SHAPES

    for name, image in IMAGE_SHAPES.items():
        assert image.inputs == SHAPES[name].inputs


def test_every_preset_is_valid_and_counts_the_gates_the_model_has() -> None:
    from trainer.presets import PRESETS

    for preset in PRESETS.values():
        TrainingOptions.model_validate(dict(preset.options))
    import torch

    from trainer.conv import conv_arguments
    from trainer.model import build_model

    parser = build_parser()
    argv = ["--preset", "digits-large", "--epochs", "1"]
    from trainer.presets import apply

    apply(parser, argv)
    args = parser.parse_args(argv)
    assert (args.conv_channels, args.epochs, args.architecture) == ("64,64", 1, "conv")

    class Data:
        from trainer.data.catalog import IMAGE_SHAPES

        image = IMAGE_SHAPES["digits"]
        name = "digits"

    torch.manual_seed(0)
    model = build_model(
        256, gates=args.gates, network_layers=args.network_layers, grouping=10,
        group_sum_tau=args.group_sum_tau, gate_optimizer=args.gate_optimizer,
        residual_layers=args.residual_layers, **conv_arguments(args, Data()),
    )  # fmt: skip
    assert sum(model.widths) == PRESETS["digits-large"].gates()
