"""Exact resume: a run stopped at a checkpoint and resumed from it prints the same EPOCH
metrics and writes the same network.json as the run that never stopped (docs/trainer.md,
"Checkpoints and resume").

Real `python -m trainer` processes on digits with gumbel_softmax, so the parametrization's
noise (torch's global generator) and the data order (its own generator) are both in play:
an epoch-end checkpoint, a mid-epoch one asked for by SIGUSR1, one asked for by the
worker's stdin line, and a resume on a machine whose default thread count differs.

A mid-epoch stop lands at a chosen step through `STOPPER`, which wraps `python -m trainer`
and raises SIGUSR1 at the N-th time the loop asks whether to stop (once before each epoch
and after each step but an epoch's last): so the test needs no timing. Independent runs go
in waves of concurrent processes, to spend seconds, not minutes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trainer import protocol
from trainer.protocol import EXIT_CHECKPOINTED

pytestmark = pytest.mark.slow  # ten trainer processes, about 50 s on two cores
ROOT = Path(__file__).resolve().parents[2]
TIMING = ("epoch_s", "step_ms", "total_s")
EPOCHS = 4
RUN = [
    "--gate-optimizer", "gumbel_softmax", "--noise-temp", "1.0", "--gates", "300",
    "--network-layers", "2", "--group-sum-tau", "10", "--learning-rate", "0.05",
    "--batch-size", "64", "--epochs", str(EPOCHS), "--seed", "3",
]  # fmt: skip
# Big enough that the C++ kernel splits a batch over two threads (gates x batch >= 2^18)
# into four 64-column blocks per thread, whose partial sums then add up in another order
# than on one thread.
THREADED = [
    "--gate-optimizer", "sparsemax_noise", "--gates", "1000", "--network-layers", "2",
    "--group-sum-tau", "10", "--learning-rate", "0.05", "--batch-size", "512",
    "--epochs", "3",
]  # fmt: skip
STOPPER = """
import os, signal, sys, threading
from trainer.runtime import prepare_process
prepare_process()
from trainer import cli, supervision
at, asked = int(os.environ["STOP_AT"]), 0
requested = supervision.StopRequest.requested
def counting(self):
    global asked
    asked += 1
    if asked == at:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    return requested(self)
supervision.StopRequest.requested = counting
raise SystemExit(cli.main(sys.argv[1:]))
"""
TIMING_IN_JSON = re.compile(rb'"(?:epoch_s|step_ms|total_s)":[-+0-9.eE]+')


@dataclass
class Done:
    rc: int
    out: str
    err: str
    output_dir: Path

    def epochs(self) -> list[str]:
        """The EPOCH lines without their timing pairs."""
        return [
            " ".join(p for p in line.split() if p.split("=")[0] not in TIMING)
            for line in self.out.splitlines()
            if line.startswith("EPOCH ")
        ]

    def checkpoints(self) -> list[tuple[int, int, Path, int]]:
        lines = map(protocol.Checkpoint.parse, self.out.splitlines())
        return [(c.epoch, c.step, c.path, c.length) for c in lines if c is not None]

    def network(self) -> bytes:
        """network.json with the timing values blanked, byte for byte otherwise."""
        return TIMING_IN_JSON.sub(b'"timing":0', (self.output_dir / "network.json").read_bytes())


class Trainer:
    """A `python -m trainer` process (or the STOPPER around it) that runs while others do."""

    def __init__(
        self,
        out: Path,
        args: list[str],
        *,
        stop_at: int | None = None,
        env: dict[str, str] | None = None,
        stdin_line: str | None = None,
    ) -> None:
        self.output_dir = out
        command = ["-c", STOPPER] if stop_at is not None else ["-m", "trainer"]
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        if stop_at is not None:
            full_env["STOP_AT"] = str(stop_at)
        if stdin_line is not None:  # as the worker runs it (trainer.supervision)
            full_env |= {
                "GATEQUEUE_SUPERVISED": "stdin",
                "GATEQUEUE_LEASE_DEADLINE": repr(time.monotonic() + 3600),
            }
        out.mkdir(parents=True, exist_ok=True)
        # Files, not pipes: a process that fills a pipe nobody reads yet would stall.
        self.stdout = open(out / "stdout.txt", "w+")  # closed in done()
        self.stderr = open(out / "stderr.txt", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, *command, *args, "--output-dir", str(out)],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=self.stdout,
            stderr=self.stderr,
            text=True,
        )
        if stdin_line is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin_line + "\n")
            self.proc.stdin.flush()

    def done(self) -> Done:
        self.proc.communicate(timeout=300)
        texts = []
        for f in (self.stdout, self.stderr):
            f.seek(0)
            texts.append(f.read())
            f.close()
        return Done(self.proc.returncode, texts[0], texts[1], self.output_dir)


@dataclass
class Runs:
    reference: Done  # uninterrupted, a checkpoint after every epoch
    epoch_end: Done  # resumed from the reference's epoch-3 checkpoint
    finished: Done  # resumed from its last one: nothing left to train
    signalled: Done  # SIGUSR1 in epoch 2
    after_signal: Done
    by_stdin: Done  # the worker's checkpoint-and-stop line
    after_stdin: Done
    threaded: Done  # uninterrupted, --threads 2
    threaded_stopped: Done
    after_threaded: Done  # resumed where the default is one thread
    rungs: list[Done]  # --stop-epoch 1, resumed with --stop-epoch 2, resumed to the end


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    tmp = tmp_path_factory.mktemp("resume")
    ck = tmp / "ck-reference"
    first = [
        Trainer(
            tmp / "reference", [*RUN, "--checkpoint-dir", str(ck), "--checkpoint-interval-s", "0"]
        ),
        # 1295 training samples (the rest is the validation split) are 21 steps: asked once
        # before epoch 1, after its 20 first steps, before epoch 2, after step 1 of epoch
        # 2...: the 28th time is after step 6 of epoch 2
        Trainer(tmp / "signalled", [*RUN, "--checkpoint-dir", str(tmp / "ck-sig")], stop_at=28),
        Trainer(
            tmp / "stdin",
            [*RUN, "--checkpoint-dir", str(tmp / "ck-stdin")],
            stdin_line="checkpoint-and-stop",
        ),
        Trainer(tmp / "threaded", [*THREADED, "--threads", "2"]),
        Trainer(
            tmp / "threaded-stopped",
            [*THREADED, "--threads", "2", "--checkpoint-dir", str(tmp / "ck-threaded")],
            stop_at=2,
        ),
        Trainer(
            tmp / "rung-1", [*RUN, "--checkpoint-dir", str(tmp / "ck-rung"), "--stop-epoch", "1"]
        ),
    ]
    reference, signalled, by_stdin, threaded, threaded_stopped, rung1 = (t.done() for t in first)
    for done in (reference, signalled, by_stdin, threaded, threaded_stopped):
        assert done.rc in (0, EXIT_CHECKPOINTED), done.err
    assert reference.rc == threaded.rc == 0
    epoch3 = ck / "checkpoint-e000003-s00000000.gqckpt"

    def resume(
        name: str, done: Done, args: list[str], env: dict[str, str] | None = None
    ) -> Trainer:
        assert done.rc == EXIT_CHECKPOINTED, (done.out, done.err)
        path = done.checkpoints()[-1][2]
        return Trainer(tmp / name, [*args, "--resume-from", str(path)], env=env)

    second = [
        Trainer(tmp / "epoch-end", [*RUN, "--resume-from", str(epoch3)]),
        Trainer(tmp / "finished", [*RUN, "--resume-from", str(reference.checkpoints()[-1][2])]),
        resume("after-signal", signalled, RUN),
        resume("after-stdin", by_stdin, RUN),
        # no --threads, and OMP_NUM_THREADS=1: torch's default here is one thread
        resume("after-threaded", threaded_stopped, THREADED, env={"OMP_NUM_THREADS": "1"}),
        resume(
            "rung-2", rung1, [*RUN, "--checkpoint-dir", str(tmp / "ck-rung"), "--stop-epoch", "2"]
        ),
    ]
    epoch_end, finished, after_signal, after_stdin, after_threaded, rung2 = (
        t.done() for t in second
    )
    rung_end = resume("rung-end", rung2, RUN).done()
    yield Runs(
        reference,
        epoch_end,
        finished,
        signalled,
        after_signal,
        by_stdin,
        after_stdin,
        threaded,
        threaded_stopped,
        after_threaded,
        [rung1, rung2, rung_end],
    )


def test_the_reference_run_checkpoints_every_epoch_and_keeps_two(runs: Runs) -> None:
    ref = runs.reference
    assert [(e, s) for e, s, _, _ in ref.checkpoints()] == [(k, 0) for k in range(1, EPOCHS + 1)]
    for _, _, path, size in ref.checkpoints():
        assert path.is_absolute() and path.name.endswith(".gqckpt") and size > 0
    kept = sorted(p.name for p in ref.checkpoints()[-1][2].parent.iterdir())
    assert kept == ["checkpoint-e000003-s00000000.gqckpt", "checkpoint-e000004-s00000000.gqckpt"]
    assert len(ref.epochs()) == EPOCHS


def test_resuming_from_an_epoch_end_checkpoint_repeats_the_run(runs: Runs) -> None:
    done = runs.epoch_end
    assert done.rc == 0, done.err
    assert "RESUMED epoch=3 step=0" in done.out.splitlines()
    assert done.epochs() == runs.reference.epochs()[3:]
    assert done.network() == runs.reference.network()
    assert done.out.rstrip().splitlines()[-1].startswith("SUMMARY epochs=4 ")


def test_resuming_a_finished_run_writes_its_network_again(runs: Runs) -> None:
    """The process died after its last checkpoint and before its network.json: the rerun
    trains nothing and writes the same network."""
    done = runs.finished
    assert done.rc == 0, done.err
    assert f"RESUMED epoch={EPOCHS} step=0" in done.out.splitlines()
    assert done.epochs() == []
    assert done.network() == runs.reference.network()
    summary = done.out.rstrip().splitlines()[-1]
    expected = runs.reference.out.rstrip().splitlines()[-1]
    assert re.sub(r"total_s=\S+ |network=\S+", "", summary) == re.sub(
        r"total_s=\S+ |network=\S+", "", expected
    )


def test_sigusr1_checkpoints_mid_epoch_and_the_resumed_run_repeats_the_run(runs: Runs) -> None:
    stopped, resumed = runs.signalled, runs.after_signal
    assert stopped.rc == EXIT_CHECKPOINTED
    assert [(e, s) for e, s, _, _ in stopped.checkpoints()] == [(1, 6)]
    assert stopped.epochs() == runs.reference.epochs()[:1]
    assert "SUMMARY" not in stopped.out
    assert resumed.rc == 0, resumed.err
    lines = resumed.out.splitlines()
    assert "RESUMED epoch=1 step=6" in lines
    assert lines.index("RESUMED epoch=1 step=6") < min(
        i for i, line in enumerate(lines) if line.startswith("EPOCH")
    )
    assert resumed.epochs() == runs.reference.epochs()[1:]
    assert resumed.network() == runs.reference.network()


def test_the_workers_stdin_line_checkpoints_and_the_resumed_run_repeats_the_run(
    runs: Runs,
) -> None:
    """The line is waiting before training starts; wherever the stop lands, the two runs'
    EPOCH lines together are the reference's, without gaps or repeats."""
    stopped, resumed = runs.by_stdin, runs.after_stdin
    assert stopped.rc == EXIT_CHECKPOINTED, stopped.err
    [(epoch, step, _, _)] = stopped.checkpoints()
    assert len(stopped.epochs()) == epoch
    assert resumed.rc == 0, resumed.err
    assert f"RESUMED epoch={epoch} step={step}" in resumed.out.splitlines()
    assert stopped.epochs() + resumed.epochs() == runs.reference.epochs()
    assert resumed.network() == runs.reference.network()


def test_a_resume_computes_with_the_checkpoints_threads(runs: Runs) -> None:
    """The run computed with two threads; where the resumed process would default to one
    (OMP_NUM_THREADS=1, no --threads), it takes the checkpoint's two and repeats the run
    exactly (with one thread the sums differ in their last bits)."""
    stopped, resumed = runs.threaded_stopped, runs.after_threaded
    assert [(e, s) for e, s, _, _ in stopped.checkpoints()] == [(0, 1)]
    assert resumed.rc == 0, resumed.err
    assert resumed.epochs() == runs.threaded.epochs()
    assert resumed.network() == runs.threaded.network()
    built = [line for line in resumed.out.splitlines() if "model built" in line]
    assert built and " threads=2 " in built[0] + " ", built


def test_stop_epoch_stops_at_each_rung_and_the_resumed_legs_repeat_the_run(runs: Runs) -> None:
    """A sweep's ASHA rungs (docs/sweeps.md): the run checkpoints after epoch 1 and exits 76,
    resumes to epoch 2 and exits 76, then to the end: no epoch trained twice, and the same
    epochs and network as the run that never stopped."""
    first, second, last = runs.rungs
    assert (first.rc, second.rc, last.rc) == (EXIT_CHECKPOINTED, EXIT_CHECKPOINTED, 0)
    assert first.epochs() == runs.reference.epochs()[:1]
    assert [(e, s) for e, s, _, _ in first.checkpoints()] == [(1, 0)]
    assert "RESUMED epoch=1 step=0" in second.out.splitlines()
    assert second.epochs() == runs.reference.epochs()[1:2]
    assert "RESUMED epoch=2 step=0" in last.out.splitlines()
    assert last.epochs() == runs.reference.epochs()[2:]
    assert last.network() == runs.reference.network()
