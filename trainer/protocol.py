"""The trainer's process boundary, defined once (docs/design.md, "Trainer output").

Everything that crosses between a worker and the trainer it runs lives here and nowhere
else: each stdout line the worker reads (`EPOCH`, `CHECKPOINT`, `RESUMED`, `CIRCUIT`,
`SUMMARY`), each stdin command the trainer reads (`lease <deadline>`,
`checkpoint-and-stop`), the exit codes and the environment names. Each line is a typed
record with one `format` (the trainer's side) and one `parse` (the worker's side); a parse
answers None for any other line, never raises, because a trainer's stdout is also its log.

Any trainer may speak it: `python -m trainer`, the test stand-ins and a lab's own script.
Standard library only, no numpy or torch: the worker parses every output line with it.

How to add a line: a frozen dataclass with `PREFIX`, `format()` and a `parse()` classmethod,
appended to `RECORDS`; the round-trip test picks it up (docs/design.md, "How to add...").
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from trainer.gates import GATE_NAMES  # torch-free (trainer.lazy)

# -- exit codes ----------------------------------------------------------------------------

EXIT_SUCCESS = 0
EXIT_FAILURE = 1  # anything not below: bad data, a diverged run, a crash (stderr says what)
EXIT_USAGE = 2  # argparse's: options the trainer refuses
EXIT_BAD_CHECKPOINT = 65  # EX_DATAERR: --resume-from names no usable checkpoint
EXIT_OUT_OF_MEMORY = 71  # EX_OSERR: an allocation failed (host RAM under its cap, or CUDA)
EXIT_FENCED = 75  # EX_TEMPFAIL: the lease ran out; the job may be running elsewhere
EXIT_CHECKPOINTED = 76  # stopped on request after writing a checkpoint (or with no dir)
EXIT_INTERRUPTED = 130  # Ctrl-C

# -- environment ---------------------------------------------------------------------------

SUPERVISED_ENV = "GATEQUEUE_SUPERVISED"  # "stdin": a worker speaks to the trainer on stdin
SUPERVISED_BY_STDIN = "stdin"
DEADLINE_ENV = "GATEQUEUE_LEASE_DEADLINE"  # the first lease deadline, monotonic seconds
JOB_ID_ENV = "GATEQUEUE_JOB_ID"
ATTEMPT_ENV = "GATEQUEUE_ATTEMPT"
ATTEMPT_ID_ENV = "GATEQUEUE_ATTEMPT_ID"


def supervised_env(
    *, deadline: float, job_id: str, attempt: int, attempt_id: str
) -> dict[str, str]:
    """What a worker adds to its trainer's environment."""
    return {
        SUPERVISED_ENV: SUPERVISED_BY_STDIN,
        DEADLINE_ENV: repr(deadline),
        JOB_ID_ENV: job_id,
        ATTEMPT_ENV: str(attempt),
        ATTEMPT_ID_ENV: attempt_id,
        "PYTHONUNBUFFERED": "1",  # lines must arrive when printed, not at exit
    }


# -- the warm trainer's control socket -----------------------------------------------------
# A worker slot's fork server (trainer/forkserver.py) and the worker (service/worker/warm.py)
# exchange one JSON object per SOCK_SEQPACKET message, `op` naming its kind. A `spawn`
# carries the run's stdin, stdout and stderr as three file descriptors (SCM_RIGHTS).

FORK_READY = "ready"  # server -> worker, once: {pid}, everything imported
FORK_KEEP = "keep"  # worker -> server: {argv}: load the run's data set now (before its env)
FORK_KEPT = "kept"  # server -> worker: {kept}: whether it is in memory
FORK_SPAWN = "spawn"  # worker -> server: {argv, env, cwd, memoryLimit} + 3 fds
FORK_SPAWNED = "spawned"  # server -> worker: {pid} of the forked run
FORK_REFUSED = "refused"  # server -> worker: {why, stale}; stale: start a new server
FORK_EXITED = "exited"  # server -> worker: {pid, code}; code < 0: killed by signal -code
FORK_MESSAGE_MAX = 1 << 20  # bytes of one message (a run's argv and environment)


def fork_message(op: str, **fields: Any) -> bytes:
    """One control message, as sent."""
    return json.dumps({"op": op, **fields}, separators=(",", ":")).encode()


def parse_fork_message(data: bytes) -> dict[str, Any] | None:
    """A received control message, or None for anything that is not one."""
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        return None
    return message


# -- stdin commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    """The lease holds until `deadline` (this host's monotonic clock); a trainer that has
    heard of no later one when it passes exits with EXIT_FENCED."""

    deadline: float

    WORD: ClassVar[str] = "lease"

    def format(self) -> str:
        return f"{self.WORD} {self.deadline!r}"

    @classmethod
    def parse(cls, line: str) -> Self | None:
        word, _, rest = line.strip().partition(" ")
        if word != cls.WORD:
            return None
        try:
            deadline = float(rest)
        except ValueError:
            return None
        return cls(deadline) if not math.isnan(deadline) else None


@dataclass(frozen=True)
class CheckpointAndStop:
    """The worker is shutting down: finish the step, checkpoint, exit EXIT_CHECKPOINTED."""

    WORD: ClassVar[str] = "checkpoint-and-stop"

    def format(self) -> str:
        return self.WORD

    @classmethod
    def parse(cls, line: str) -> Self | None:
        return cls() if line.strip() == cls.WORD else None


COMMANDS: tuple[type[Lease] | type[CheckpointAndStop], ...] = (Lease, CheckpointAndStop)


def parse_command(line: str) -> Lease | CheckpointAndStop | None:
    """A stdin line as a command; None for an unknown one (the trainer logs and ignores it)."""
    for command in COMMANDS:
        parsed = command.parse(line)
        if parsed is not None:
            return parsed
    return None


# -- stdout lines --------------------------------------------------------------------------

# Keys become MongoDB field names in `job_metrics` and `latestMetrics`: no `$`, no dots.
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The metrics document's own fields; a trainer printing them must not clobber them.
RESERVED_KEYS = frozenset({"_id", "jobId", "epoch", "epochs", "ts"})
Number = float | int


def format_pairs(values: dict[str, Number]) -> str:
    """`key=value ...`: ints as they are, floats with 4 decimals (what the log shows)."""
    return " ".join(
        f"{key}={value}" if isinstance(value, int) else f"{key}={value:.4f}"
        for key, value in values.items()
    )


def parse_pairs(text: str) -> dict[str, Number]:
    """Every `key=number` pair; anything else is skipped, not an error: the format is a
    contract with any trainer, so one odd pair must not cost the whole line."""
    values: dict[str, Number] = {}
    for pair in text.split():
        key, sep, raw = pair.partition("=")
        if not sep or not _KEY.match(key) or key in RESERVED_KEYS:
            continue
        value = _number(raw)
        if value is not None:
            values[key] = value
    return values


def _number(raw: str) -> Number | None:
    """Ints stay ints; NaN and infinities are dropped because JSON cannot carry them and
    every client of the API speaks JSON (the raw line is still in the log)."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _strip(line: str) -> str:
    return line.rstrip("\r\n")


@dataclass(frozen=True)
class Epoch:
    """`EPOCH 3/5 train_loss=0.4123 train_acc=0.8812 test_acc=0.9011 ...`: one per epoch."""

    epoch: int
    epochs: int
    metrics: dict[str, Number] = field(default_factory=dict)

    PREFIX: ClassVar[str] = "EPOCH "
    _HEAD: ClassVar[re.Pattern[str]] = re.compile(r"^EPOCH (\d+)/(\d+)(?:\s+(.*))?$")
    # The metrics `python -m trainer` writes (trainer/loop.py; `val_*` with a validation
    # split, `gpu_peak_mib` on CUDA): what a sweep's scheduler or search may select by.
    METRICS: ClassVar[tuple[str, ...]] = (
        "train_loss", "train_acc", "val_acc", "val_acc_discrete", "test_acc",
        "test_acc_discrete", "epoch_s", "step_ms", "gpu_peak_mib",
    )  # fmt: skip

    def format(self) -> str:
        pairs = format_pairs(self.metrics)
        return f"EPOCH {self.epoch}/{self.epochs}" + (f" {pairs}" if pairs else "")

    @classmethod
    def parse(cls, line: str) -> Self | None:
        match = cls._HEAD.match(line.rstrip())
        if match is None:
            return None
        return cls(int(match.group(1)), int(match.group(2)), parse_pairs(match.group(3) or ""))

    def as_latest(self) -> dict[str, Number]:
        """The job's `latestMetrics`: the line as a flat object, epoch counters included."""
        return {"epoch": self.epoch, "epochs": self.epochs, **self.metrics}


@dataclass(frozen=True)
class Checkpoint:
    """`CHECKPOINT epoch=K step=S path=P bytes=N`: a checkpoint file is complete at P."""

    epoch: int
    step: int
    path: Path
    length: int

    PREFIX: ClassVar[str] = "CHECKPOINT "
    _LINE: ClassVar[re.Pattern[str]] = re.compile(
        r"^CHECKPOINT epoch=(\d+) step=(\d+) path=(.+?) bytes=(\d+)\s*$"
    )

    def format(self) -> str:
        return (
            f"CHECKPOINT epoch={self.epoch} step={self.step} path={self.path} bytes={self.length}"
        )

    @classmethod
    def parse(cls, line: str) -> Self | None:
        match = cls._LINE.match(_strip(line))
        if match is None:
            return None
        return cls(int(match[1]), int(match[2]), Path(match[3]), int(match[4]))


@dataclass(frozen=True)
class Resumed:
    """`RESUMED epoch=K step=S`: first line of a run that continues from a checkpoint."""

    epoch: int
    step: int

    PREFIX: ClassVar[str] = "RESUMED "
    _LINE: ClassVar[re.Pattern[str]] = re.compile(r"^RESUMED epoch=(\d+) step=(\d+)\s*$")

    def format(self) -> str:
        return f"RESUMED epoch={self.epoch} step={self.step}"

    @classmethod
    def parse(cls, line: str) -> Self | None:
        match = cls._LINE.match(_strip(line))
        return None if match is None else cls(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class Circuit:
    """`CIRCUIT {json}`: the compiled circuit of the saved network (docs/circuits.md), a
    compact JSON object with exactly `CIRCUIT_KEYS`, in order; printed before SUMMARY."""

    result: dict[str, Any]

    PREFIX: ClassVar[str] = "CIRCUIT "

    def format(self) -> str:
        """The line; ValueError for a result that is not a circuit's."""
        problems = check_circuit(self.result)
        if problems:
            raise ValueError("not a circuit result: " + "; ".join(problems))
        return self.PREFIX + json.dumps(self.result, separators=(",", ":"), allow_nan=False)

    @classmethod
    def parse(cls, line: str) -> Self | None:
        text = _strip(line)
        if not text.startswith(cls.PREFIX):
            return None
        try:
            value = json.loads(text[len(cls.PREFIX) :], parse_constant=_no_constant)
        except ValueError:  # JSONDecodeError, and NaN/Infinity
            return None
        if check_circuit(value):
            return None
        return cls(dict(value))


@dataclass(frozen=True)
class Result:
    """The kept network's numbers (the job's `result`, docs/design.md "Job fields"): the
    epoch it is from, its validation accuracy (None without a validation split) and its
    test accuracies. On the SUMMARY line they are the pairs `kept_epoch`,
    `val_acc_discrete`, `test_acc_discrete`, `test_acc` and `discretization_gap`."""

    epoch: int
    test_acc_discrete: float
    test_acc: float
    discretization_gap: float
    val_acc_discrete: float | None = None

    EPOCH_KEY: ClassVar[str] = "kept_epoch"
    KEYS: ClassVar[tuple[str, ...]] = (
        "kept_epoch", "val_acc_discrete", "test_acc_discrete", "test_acc", "discretization_gap",
    )  # fmt: skip

    def pairs(self) -> dict[str, Number]:
        out: dict[str, Number] = {self.EPOCH_KEY: self.epoch}
        if self.val_acc_discrete is not None:
            out["val_acc_discrete"] = self.val_acc_discrete
        out |= {
            "test_acc_discrete": self.test_acc_discrete,
            "test_acc": self.test_acc,
            "discretization_gap": self.discretization_gap,
        }
        return out

    @classmethod
    def from_pairs(cls, values: dict[str, Number]) -> Self | None:
        """The result in a SUMMARY's pairs; None where the trainer printed no kept epoch."""
        epoch = values.get(cls.EPOCH_KEY)
        needed = ("test_acc_discrete", "test_acc", "discretization_gap")
        if not isinstance(epoch, int) or epoch < 0 or any(k not in values for k in needed):
            return None
        val = values.get("val_acc_discrete")
        return cls(
            epoch,
            float(values["test_acc_discrete"]),
            float(values["test_acc"]),
            float(values["discretization_gap"]),
            None if val is None else float(val),
        )

    def as_json(self) -> dict[str, Any]:
        """The job's `result` object."""
        return {
            "epoch": self.epoch,
            "val_acc_discrete": self.val_acc_discrete,
            "test_acc_discrete": self.test_acc_discrete,
            "test_acc": self.test_acc,
            "discretization_gap": self.discretization_gap,
        }


@dataclass(frozen=True)
class Summary:
    """`SUMMARY epochs=N key=value ... gates=G network=PATH`: the run's last line. With a
    `result` (the kept network's numbers) its pairs come first, and `values` must then
    not repeat them."""

    epochs: int
    values: dict[str, Number]
    gates: int
    network: Path
    result: Result | None = None

    PREFIX: ClassVar[str] = "SUMMARY "
    _LINE: ClassVar[re.Pattern[str]] = re.compile(
        r"^SUMMARY epochs=(\d+)((?: \S+=\S+)*?) gates=(\d+) network=(.+)$"
    )

    def format(self) -> str:
        values = dict(self.values)
        if self.result is not None:
            repeated = set(values) & set(Result.KEYS)
            if repeated:
                raise ValueError(f"values repeat the result's keys {sorted(repeated)}")
            values = {**self.result.pairs(), **values}
        pairs = format_pairs(values)
        middle = f" {pairs}" if pairs else ""
        return f"SUMMARY epochs={self.epochs}{middle} gates={self.gates} network={self.network}"

    @classmethod
    def parse(cls, line: str) -> Self | None:
        match = cls._LINE.match(_strip(line))
        if match is None:
            return None
        values = parse_pairs(match[2])
        result = Result.from_pairs(values)
        if result is not None:
            values = {k: v for k, v in values.items() if k not in Result.KEYS}
        return cls(int(match[1]), values, int(match[3]), Path(match[4]), result)


Record = Epoch | Checkpoint | Resumed | Circuit | Summary
RECORDS: tuple[type[Record], ...] = (Epoch, Checkpoint, Resumed, Circuit, Summary)


def parse_line(line: str) -> Record | None:
    """The record a stdout line carries, or None for a log line (or a malformed record)."""
    for record in RECORDS:
        if line.startswith(record.PREFIX):
            return record.parse(line)
    return None


# -- the CIRCUIT line's object -------------------------------------------------------------

CIRCUIT_KEYS: tuple[str, ...] = (
    "gates",
    "gatesLive",
    "depth",
    "imagesPerS",
    "verified",
    "disagreements",
    "gateHistogram",
)
_COUNTS = ("gates", "gatesLive", "depth", "disagreements")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_circuit(result: Any) -> list[str]:
    """What is wrong with a circuit result (empty when it is valid)."""
    if not isinstance(result, dict):
        return [f"not an object but {type(result).__name__}"]
    problems = []
    keys = list(result)
    if keys != list(CIRCUIT_KEYS):
        missing = [k for k in CIRCUIT_KEYS if k not in result]
        extra = [k for k in keys if k not in CIRCUIT_KEYS]
        problems.append(
            f"keys must be {', '.join(CIRCUIT_KEYS)} in that order"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
        )
    for key in _COUNTS:
        if key in result and not _is_count(result[key]):
            problems.append(f"{key} must be an integer >= 0, got {result[key]!r}")
    speed = result.get("imagesPerS")
    if "imagesPerS" in result and not (
        isinstance(speed, int | float)
        and not isinstance(speed, bool)
        and math.isfinite(speed)
        and speed >= 0
    ):
        problems.append(f"imagesPerS must be a finite number >= 0, got {speed!r}")
    if "verified" in result and not isinstance(result["verified"], bool):
        problems.append(f"verified must be true or false, got {result['verified']!r}")
    elif _is_count(result.get("disagreements")) and result.get("verified") != (
        result["disagreements"] == 0
    ):
        problems.append("verified must be true exactly when disagreements is 0")
    if _is_count(result.get("gatesLive")) and _is_count(result.get("gates")):
        if result["gatesLive"] > result["gates"]:
            problems.append("gatesLive exceeds gates")
    histogram = result.get("gateHistogram")
    if "gateHistogram" in result:
        if not isinstance(histogram, dict) or list(histogram) != list(GATE_NAMES):
            problems.append("gateHistogram must map each of the 16 gate names, in id order")
        elif not all(_is_count(v) for v in histogram.values()):
            problems.append("gateHistogram counts must be integers >= 0")
        elif _is_count(result.get("gates")) and sum(histogram.values()) != result["gates"]:
            problems.append("gateHistogram counts must add up to gates")
    return problems


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
