"""A trainer killed (SIGKILL) in the middle of writing a checkpoint: the checkpoint before it
is whole and a run resumes from it; the half-written file is never taken for a checkpoint.

The kill lands mid-write without timing: a wrapper around `python -m trainer` pauses the
second checkpoint's write after its first megabyte and says so on stderr; the test kills
the process as soon as it reads that line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import checkpoint

pytestmark = pytest.mark.slow  # two trainer processes

ROOT = Path(__file__).resolve().parents[2]
RUN = [
    "--gate-optimizer", "softmax", "--gates", "4000", "--network-layers", "2",
    "--group-sum-tau", "10", "--epochs", "4", "--checkpoint-interval-s", "0",
]  # fmt: skip
PAUSER = """
import sys, time
from trainer.runtime import prepare_process
prepare_process()
from trainer import checkpoint, cli
writes = {"checkpoints": 0, "bytes": 0}
original = checkpoint._HashingWriter.write
real_write = checkpoint.write_checkpoint
def counting(*args, **kwargs):
    writes["checkpoints"] += 1
    writes["bytes"] = 0
    return real_write(*args, **kwargs)
def pausing(self, data):
    n = original(self, data)
    writes["bytes"] += n
    if writes["checkpoints"] == 2 and writes["bytes"] > (1 << 20):
        self.flush()
        print("PAUSED MID-WRITE", file=sys.stderr, flush=True)
        time.sleep(3600)
    return n
checkpoint._HashingWriter.write = pausing
checkpoint.write_checkpoint = counting
raise SystemExit(cli.main(sys.argv[1:]))
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_usable(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [*RUN, "--checkpoint-dir", str(ck), "--output-dir", str(tmp_path / "a")]
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSER, *argv], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "PAUSED MID-WRITE" in line:
                break
        else:
            raise AssertionError("the trainer ended before its second checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        out, _ = proc.communicate()
    written = [line for line in out.splitlines() if line.startswith("CHECKPOINT ")]
    assert len(written) == 1 and "epoch=1 " in written[0]  # the second never announced
    whole = ck / checkpoint.file_name(1, 0)
    assert whole.is_file()
    partial = [p for p in ck.iterdir() if p != whole]
    assert partial and all(p.name.startswith(checkpoint.TEMP_PREFIX) for p in partial)
    assert checkpoint.inspect(whole).epoch == 1  # whole and checksummed

    resumed = subprocess.run(
        [sys.executable, "-m", "trainer", *RUN, "--checkpoint-dir", str(ck),
         "--resume-from", str(whole), "--output-dir", str(tmp_path / "b")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "RESUMED epoch=1 step=0" in resumed.stdout
    epochs = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("EPOCH")]
    assert epochs == ["2/4", "3/4", "4/4"]
    assert not [p for p in ck.iterdir() if p.name.startswith(checkpoint.TEMP_PREFIX)]
    assert (tmp_path / "b" / "network.json").is_file()
