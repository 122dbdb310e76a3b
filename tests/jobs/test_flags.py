"""Options become flags by one rule (trainer.flags) on every command line: `python -m trainer`,
`gatequeue submit` and `gatequeue sweep` spell, name and read each option the same way."""

from __future__ import annotations

import argparse

import pytest

from service.cli import build_parser as gatequeue_parser
from service.cli.jobs import request_body
from service.cli.sweeps import sweep_body
from service.jobs.request import REQUEST_OPTIONS
from trainer.cli import build_parser as trainer_parser
from trainer.flags import metavar
from trainer.options import RUN_CONTROL_OPTIONS, TRAINING_OPTIONS, Option


def _command(name: str) -> argparse.ArgumentParser:
    sub = gatequeue_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    return sub.choices[name]  # type: ignore[no-any-return]


def _parsers() -> dict[str, tuple[argparse.ArgumentParser, tuple[Option, ...]]]:
    return {
        "trainer": (trainer_parser(), (*TRAINING_OPTIONS, *RUN_CONTROL_OPTIONS)),
        "submit": (_command("submit"), REQUEST_OPTIONS),
        "sweep": (
            _command("sweep"),
            tuple(o for o in REQUEST_OPTIONS if o.name not in ("name", "priority")),
        ),
    }


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


@pytest.mark.parametrize("command", ["trainer", "submit", "sweep"])
def test_every_option_is_one_flag_spelled_one_way(command: str) -> None:
    parser, options = _parsers()[command]
    for o in options:
        action = _action(parser, o.flag)
        assert action.dest == o.dest
        assert action.metavar == metavar(o)
        assert action.help is not None and action.help.startswith(o.help)


def test_a_choice_flag_names_its_choices_in_its_help() -> None:
    """The metavar is NAME, so the help is where the choices are read."""
    for o in REQUEST_OPTIONS:
        for choice in o.choices or ():
            assert choice in o.help, (o.name, choice)


@pytest.mark.parametrize("command", ["trainer", "submit", "sweep"])
def test_a_number_flag_refuses_text_the_same_way(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser, _ = _parsers()[command]
    argv = ["--gate-optimizer", "softmax", "--gates", "many"]
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    assert "argument --gates: expected an integer, got 'many'" in capsys.readouterr().err


def test_the_trainer_flags_default_to_the_options_defaults() -> None:
    args = trainer_parser().parse_args([])
    for o in (*TRAINING_OPTIONS, *RUN_CONTROL_OPTIONS):
        assert getattr(args, o.dest) == o.default


def test_a_client_sends_only_the_flags_given() -> None:
    """Omitted flags stay out of the body, so the API's defaults apply."""
    submit = _command("submit").parse_args(
        ["--gate-optimizer", "softmax", "--gates", "40", "--max-attempts", "2"]
    )
    assert request_body(submit) == {"gateOptimizer": "softmax", "gates": 40, "maxAttempts": 2}
    preset = _command("submit").parse_args(
        ["--preset", "digits-small", "--gate-optimizer", "sparsemax", "--epochs", "3"]
    )
    body = request_body(preset)
    assert (body["convChannels"], body["architecture"]) == ("32", "conv")
    assert (body["gateOptimizer"], body["epochs"]) == ("sparsemax", 3)  # the flags win
    sweep = _command("sweep").parse_args(["--learning-rate", "0.5", "--grid", "gates=10,20"])
    assert sweep_body(sweep)["base"] == {"learningRate": 0.5}


def test_submit_needs_a_gate_optimizer_and_a_sweep_does_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A sweep may set it per run (--grid, --run); a single job has no other place."""
    with pytest.raises(SystemExit):
        _command("submit").parse_args([])
    assert "--gate-optimizer" in capsys.readouterr().err
    assert _command("sweep").parse_args([]).gate_optimizer is None
