"""The trainer's process boundary (trainer/protocol.py): every record formats and parses back
equal, parsing is lenient where the contract says so, and no other module of the trainer,
the worker or the stand-in trainers writes or reads the boundary by hand."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trainer import protocol
from trainer.gates import GATE_NAMES
from trainer.supervision import StopRequest, Supervision

ROOT = Path(__file__).resolve().parents[1]


def circuit() -> dict[str, Any]:
    histogram = dict.fromkeys(GATE_NAMES, 0) | {"A AND B": 600, "A XOR B": 400}
    return {"gates": 1000, "gatesLive": 544, "depth": 2, "imagesPerS": 15234567.8,
            "verified": True, "disagreements": 0, "gateHistogram": histogram}  # fmt: skip


# Each record with values that survive the line's 4-decimal floats exactly.
EXAMPLES: list[protocol.Record] = [
    protocol.Epoch(3, 5, {"train_loss": 0.4123, "train_acc": 0.8812, "gpu_peak_mib": 812}),
    protocol.Epoch(1, 1, {}),
    protocol.Checkpoint(4, 17, Path("/tmp/a dir/checkpoint-e4-s17.gqckpt"), 123456),
    protocol.Resumed(2, 0),
    protocol.Circuit(circuit()),
    protocol.Summary(
        5,
        {"test_acc": 0.9011, "total_s": 12.5, "kept": 3},
        13336,
        Path("runs/digits x/network.json"),
    ),
    protocol.Summary(1, {}, 8, Path("n.json")),
    protocol.Summary(
        5,
        {"live_fraction": 0.5415, "total_s": 1.5276},
        2000,
        Path("runs/x/network.json"),
        protocol.Result(3, 0.9444, 0.95, 0.0056, val_acc_discrete=0.9375),
    ),
    protocol.Summary(2, {}, 8, Path("n.json"), protocol.Result(2, 0.5, 0.625, 0.125)),
]


def test_every_record_type_has_an_example() -> None:
    assert {type(r) for r in EXAMPLES} == set(protocol.RECORDS)


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_every_record_round_trips(record: protocol.Record) -> None:
    line = record.format()
    assert "\n" not in line and line.startswith(record.PREFIX)
    assert type(record).parse(line) == record
    assert type(record).parse(line + "\n") == record
    assert protocol.parse_line(line) == record
    others = [t for t in protocol.RECORDS if t is not type(record)]
    assert all(t.parse(line) is None for t in others)


@pytest.mark.parametrize(
    "command", [protocol.Lease(1234.5678), protocol.CheckpointAndStop()], ids=str
)
def test_every_command_round_trips(command: protocol.Lease | protocol.CheckpointAndStop) -> None:
    line = command.format()
    assert protocol.parse_command(line) == command
    assert protocol.parse_command(line + "\n") == command


@pytest.mark.parametrize("line", ["lease", "lease soon", "lease nan", "hello", ""])
def test_unknown_or_garbled_commands_parse_to_none(line: str) -> None:
    assert protocol.parse_command(line) is None


def test_supervision_takes_leases_and_keeps_requests() -> None:
    supervision = Supervision(deadline=10.0)
    supervision.heard(protocol.Lease(20.0).format() + "\n")
    supervision.heard(protocol.Lease(15.0).format())  # an older deadline never shortens it
    supervision.heard("lease garbled")  # dropped, not a request
    supervision.heard("something new")
    stop = StopRequest(supervision)
    assert supervision.deadline == 20.0
    assert not stop.requested() and stop.ignored == ["something new"]
    supervision.heard(protocol.CheckpointAndStop().format())
    assert stop.requested() and stop.source == "stdin"


def test_the_summary_carries_the_kept_networks_result() -> None:
    line = (
        "SUMMARY epochs=5 kept_epoch=3 val_acc_discrete=0.9375 test_acc_discrete=0.9444 "
        "test_acc=0.9500 discretization_gap=0.0056 total_s=1.5 gates=2000 network=n.json"
    )
    parsed = protocol.Summary.parse(line)
    assert parsed is not None and parsed.result is not None
    assert parsed.values == {"total_s": 1.5}
    assert parsed.result.as_json() == {
        "epoch": 3, "val_acc_discrete": 0.9375, "test_acc_discrete": 0.9444,
        "test_acc": 0.95, "discretization_gap": 0.0056,
    }  # fmt: skip
    # A trainer that keeps no epoch (an older one, a lab's own) has no result.
    older = protocol.Summary.parse("SUMMARY epochs=5 test_acc=0.95 gates=8 network=n.json")
    assert older is not None and older.result is None and older.values == {"test_acc": 0.95}
    with pytest.raises(ValueError):
        protocol.Summary(1, {"test_acc": 0.5}, 8, Path("n"), protocol.Result(1, 1, 1, 0)).format()


def test_epoch_line_of_the_contract() -> None:
    line = (
        "EPOCH 3/5 train_loss=0.4123 train_acc=0.8812 test_acc=0.9011 "
        "test_acc_discrete=0.9005 epoch_s=1.23"
    )
    parsed = protocol.Epoch.parse(line)
    assert parsed is not None
    assert (parsed.epoch, parsed.epochs) == (3, 5)
    assert parsed.metrics == {
        "train_loss": 0.4123, "train_acc": 0.8812, "test_acc": 0.9011,
        "test_acc_discrete": 0.9005, "epoch_s": 1.23,
    }  # fmt: skip
    assert parsed.as_latest()["epoch"] == 3


def test_epoch_line_keeps_unknown_numbers_and_skips_junk() -> None:
    """Any trainer may print EPOCH lines: one odd pair must not cost the line."""
    parsed = protocol.Epoch.parse(
        "EPOCH 1/2 gates_used=17 lr=1e-3 note=warm =3 x= a=b=c $set=1 a.b=2 epoch=9 "
        "loss=nan grad=inf plain"
    )
    assert parsed is not None
    assert parsed.metrics == {"gates_used": 17, "lr": 0.001}
    assert isinstance(parsed.metrics["gates_used"], int)
    assert protocol.Epoch.parse("EPOCH 2/2") == protocol.Epoch.parse("EPOCH 2/2  ")
    assert protocol.Epoch.parse("EPOCH 2/2") == protocol.Epoch(2, 2, {})


@pytest.mark.parametrize(
    "line",
    ["epoch 1/2 a=1", "EPOCH x/2", "EPOCH 1/ a=1", " EPOCH 1/2", "EPOCHS 1/2", "loss=1",
     "CHECKPOINT epoch=1 step=0 path=p", "RESUMED epoch=1", "SUMMARY epochs=1 gates=2",
     "CIRCUIT {", "CIRCUIT []", "SUMMARY epochs=x gates=2 network=n"],
)  # fmt: skip
def test_malformed_lines_are_log_lines(line: str) -> None:
    assert protocol.parse_line(line) is None


def test_the_module_imports_neither_numpy_nor_torch() -> None:
    """The worker parses every output line with it."""
    code = (
        "import sys\n"
        "from trainer import protocol\n"
        "assert protocol.parse_line('EPOCH 1/1 a=1') is not None\n"
        "assert protocol.Circuit.parse('CIRCUIT {}') is None\n"
        "assert not {'numpy', 'torch'} & set(sys.modules), 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# -- one owner ---------------------------------------------------------------------------

# Where the boundary is spoken: the trainer, the worker, and the stand-in trainers.
SPEAKERS = ["trainer", "service", "tests/worker/trainers", "tests/live/trainers"]
EXIT_CODES = {
    protocol.EXIT_BAD_CHECKPOINT,
    protocol.EXIT_OUT_OF_MEMORY,
    protocol.EXIT_FENCED,
    protocol.EXIT_CHECKPOINTED,
}
PREFIXES = (*(r.PREFIX for r in protocol.RECORDS), protocol.Lease.WORD + " ")
WORDS = {
    protocol.CheckpointAndStop.WORD,
    protocol.SUPERVISED_ENV,
    protocol.DEADLINE_ENV,
    protocol.JOB_ID_ENV,
    protocol.ATTEMPT_ENV,
    protocol.ATTEMPT_ID_ENV,
}


def copies_in(source: str) -> list[str]:
    """Literals of the boundary: an exit code, a command or environment name, or a string
    that starts a line (`f"EPOCH {...}"`, a regex `^CHECKPOINT ...`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, int) and not isinstance(value, bool) and value in EXIT_CODES:
                found.append(f"{node.lineno}: exit code {value}")
            elif isinstance(value, str):
                text = value.lstrip("^")
                if value in WORDS or (text.startswith(PREFIXES) and _formats(node, source)):
                    found.append(f"{node.lineno}: {value[:40]!r}")
    return found


def _formats(node: ast.Constant, source: str) -> bool:
    """A prefix followed by fields (an f-string's part, a regex), not a message that merely
    begins with the word (`"lease expired ..."`)."""
    text = node.value.lstrip("^")
    rest = text.split(" ", 1)[1] if " " in text else ""
    return rest == "" or "=" in rest.split(" ", 1)[0] or rest.startswith(("(", "{", "\\"))


def test_no_copies_of_the_boundary_outside_the_protocol_module() -> None:
    offenders = {}
    for root in SPEAKERS:
        for path in sorted((ROOT / root).rglob("*.py")):
            if path == ROOT / "trainer" / "protocol.py":
                continue
            found = copies_in(path.read_text())
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        'print(f"EPOCH {i}/{n} loss={x}")',
        'LINE = re.compile(r"^CHECKPOINT epoch=(\\d+)")',
        "sys.exit(76)",
        "if rc == 65: pass",
        'proc.send("checkpoint-and-stop")',
        'os.environ["GATEQUEUE_JOB_ID"]',
        'print(f"lease {deadline!r}")',
        'print("SUMMARY " + pairs)',
    ],
)
def test_the_copy_check_finds_copies(source: str) -> None:
    assert copies_in(source), source


def test_the_copy_check_leaves_messages_alone() -> None:
    assert copies_in('log.info("lease expired on worker x")') == []
    assert copies_in('table.add_column("EPOCH")') == []
