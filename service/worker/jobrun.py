"""One claimed job, start to end: the trainer subprocess, its lease, its logs and metrics,
and the one final write (Succeeded, Failed, Cancelled, or back to Pending on shutdown).

The attempt owns the job only while its lease renewals succeed. The moment one loses the
race (the lease expired and someone re-queued or failed the job), the run is killed and
nothing more is written for it: the job belongs to whoever holds it now.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from service.cancellation import cancel_and_wait
from service.hyperparameters import to_trainer_args
from service.jobstatus import Status
from service.store import Job, Store
from service.worker import artifacts
from service.worker.epoch import EpochLine, parse_epoch_line
from service.worker.gpus import Slot
from service.worker.logsink import LogSink
from service.worker.runner import TrainerProcess

log = structlog.get_logger(__name__)

ERROR_MAX_CHARS = 8000


class StopReason(StrEnum):
    CANCEL = "cancel"  # the user asked: Cancelled
    SHUTDOWN = "shutdown"  # the worker is stopping: back to Pending
    LOST = "lost"  # the lease is gone: write nothing
    LOG_FAILED = "log_failed"  # logs cannot be stored: Failed


@dataclass(frozen=True)
class RunSettings:
    """What every run of one worker shares."""

    worker_id: str
    host: str
    trainer_cmd: Sequence[str]
    data_dir: Path
    env: Mapping[str, str]
    lease_s: float
    renew_every_s: float
    cancel_grace_s: float
    stop_grace_s: float
    keep_workdirs: bool = False
    die_with_worker: bool = True

    @property
    def datasets_dir(self) -> Path:
        """Shared by all runs of the worker: data sets are downloaded once, not per job."""
        return self.data_dir / "datasets"

    def workdir(self, job: Job) -> Path:
        """Unique per run: a hand-back does not count an attempt, and a lost attempt may still
        be cleaning up when this worker claims the same job again."""
        suffix = uuid.uuid4().hex[:8]
        return self.data_dir / "jobs" / str(job["_id"]) / f"attempt-{job['attempt']}-{suffix}"


class JobRun:
    def __init__(self, store: Store, settings: RunSettings, slot: Slot, job: Job) -> None:
        self.store = store
        self.s = settings
        self.slot = slot
        self.job = job  # the latest version we own
        self.job_id = job["_id"]
        self.log = log.bind(
            job_id=str(self.job_id),
            worker_id=settings.worker_id,
            gpu=slot.gpu,
            attempt=job.get("attempt"),
        )
        self.stop_reason: StopReason | None = None
        self._stop = asyncio.Event()
        self._cancel_requested = False
        self._stop_grace_s = settings.stop_grace_s
        self._cas = asyncio.Lock()  # one version-changing write at a time
        self._done = False  # the final write was made (or given up): no more renewals
        self._lease_deadline = time.monotonic() + settings.lease_s
        self._metrics: asyncio.Queue[EpochLine | None] = asyncio.Queue()
        self.proc: TrainerProcess | None = None
        self.sink: LogSink | None = None
        self.outcome: str | None = None
        self.started = asyncio.Event()  # the trainer process exists (tests read its pid)

    # -- requests from outside (the worker's change stream, shutdown) ------------------

    def request_cancel(self) -> None:
        self._cancel_requested = True
        self._request_stop(StopReason.CANCEL, self.s.cancel_grace_s)

    def request_shutdown(self) -> None:
        self._request_stop(StopReason.SHUTDOWN, self.s.stop_grace_s)

    def _request_stop(self, reason: StopReason, grace_s: float) -> None:
        # A lost lease trumps everything; otherwise the first reason stands, except that a
        # cancel during shutdown still ends as Cancelled (checked at the end).
        if self.stop_reason is StopReason.LOST:
            return
        if self.stop_reason is None or reason is StopReason.LOST:
            self.stop_reason = reason
            self._stop_grace_s = grace_s
        self.log.info("stopping the run", reason=reason.value)
        self._stop.set()

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> None:
        workdir = self.s.workdir(self.job)
        try:
            await self._run(workdir)
        except PyMongoError as exc:
            self.outcome = "unreachable"
            self.log.error(
                "MongoDB unreachable; the run is abandoned and its lease will expire",
                error=str(exc),
            )
        except Exception:
            self.log.exception("job run crashed; its lease will expire and it is re-queued")
            raise
        finally:
            if not self.s.keep_workdirs:
                await asyncio.to_thread(_remove_workdir, workdir)

    async def _run(self, workdir: Path) -> None:
        output_dir = workdir / "output"
        await asyncio.to_thread(_make_dirs, output_dir, self.s.datasets_dir)
        next_seq = await self._retrying(lambda: self.store.next_log_seq(self.job_id))
        self.sink = LogSink(self.store, self.job_id, next_seq=next_seq)
        await self.sink.system(
            f"attempt {self.job['attempt']} on worker {self.s.worker_id} gpu {self.slot.gpu}"
        )
        renewer = asyncio.create_task(self._renew_loop(), name=f"renew-{self.job_id}")
        metrics = asyncio.create_task(self._metrics_loop(), name=f"metrics-{self.job_id}")
        sink_watch = asyncio.create_task(self._watch_sink(self.sink))
        if self.job.get("cancelRequested"):
            self.request_cancel()
        try:
            rc, stopped_by_us, start_error = await self._supervise(workdir, output_dir)
            await self._metrics.put(None)
            await metrics
            await self._finish(rc, stopped_by_us, start_error, output_dir)
        finally:
            await cancel_and_wait(renewer, metrics, sink_watch)
            if self.proc is not None and self.proc.running:
                self.proc.signal_group(signal.SIGKILL)

    async def _supervise(self, workdir: Path, output_dir: Path) -> tuple[int | None, bool, str]:
        """Run the trainer to its end, or stop it on request; (exit code, stopped, error)."""
        try:
            hp_args = to_trainer_args(self.job["hyperparameters"])
        except (KeyError, TypeError, AttributeError) as exc:
            return None, False, f"the job's hyperparameters cannot be passed on: {exc}"
        argv = [
            *self.s.trainer_cmd,
            *hp_args,
            "--data-dir", str(self.s.datasets_dir),
            "--output-dir", str(output_dir),
            *self.slot.device_args(),
        ]  # fmt: skip
        env = self.slot.env(self.s.env)
        env |= {
            "GATEQUEUE_JOB_ID": str(self.job_id),
            "GATEQUEUE_ATTEMPT": str(self.job["attempt"]),
            "PYTHONUNBUFFERED": "1",  # EPOCH lines must arrive when printed, not at exit
        }
        self.proc = TrainerProcess(
            argv, on_line=self._on_line, env=env, cwd=workdir,
            die_with_worker=self.s.die_with_worker,
        )  # fmt: skip
        if self._stop.is_set():
            return None, True, ""
        try:
            await self.proc.start()
        except OSError as exc:
            return None, False, f"cannot start the trainer {self.s.trainer_cmd[0]!r}: {exc}"
        self.started.set()
        self.log.info("trainer started", pid=self.proc.pid)
        waiter = asyncio.create_task(self.proc.wait())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopped_by_us = not waiter.done()
            if stopped_by_us:
                await self.proc.terminate(self._stop_grace_s)
            rc = await waiter
        finally:
            stopper.cancel()
            if not waiter.done():  # we are being cancelled ourselves: leave no process
                self.proc.signal_group(signal.SIGKILL)
                waiter.cancel()
        self.log.info("trainer exited", exit_code=rc, stopped=stopped_by_us)
        return rc, stopped_by_us, ""

    async def _finish(
        self, rc: int | None, stopped_by_us: bool, start_error: str, output_dir: Path
    ) -> None:
        sink = self.sink
        assert sink is not None
        if self.stop_reason is StopReason.LOST:
            await sink.discard()
            self.outcome = "lost"
            return
        if self._cancel_requested and (stopped_by_us or rc != 0):
            status, error = Status.CANCELLED, "cancelled on request"
            await sink.system(f"cancelled on request; trainer exit code {rc}")
        elif self.stop_reason is StopReason.SHUTDOWN and stopped_by_us:
            await self._release(sink)
            return
        elif self.stop_reason is StopReason.LOG_FAILED:
            status = Status.FAILED
            error = f"the run's log could not be stored: {sink.error}"
        elif start_error:
            status, error = Status.FAILED, start_error
            await sink.system(start_error)
        elif rc == 0:
            status, error = Status.SUCCEEDED, None
        else:
            status, error = Status.FAILED, self._failure_text(rc)
        extra: dict[str, Any] = {}
        uploaded: list[dict[str, Any]] = []
        if status is Status.SUCCEEDED:
            try:
                uploaded = await artifacts.upload_outputs(
                    self.store.db, self.job_id, self.job["attempt"], output_dir
                )
                extra["artifacts"] = uploaded
                names = ", ".join(a["name"] for a in uploaded) or "none"
                await sink.system(f"finished; saved files: {names}")
            except (OSError, PyMongoError) as exc:
                status, error = Status.FAILED, f"the trained network could not be saved: {exc}"
                await sink.system(error)
        if not await self._close_sink(sink):
            return
        done = await self._final_write(
            lambda job: self.store.finish(job, status, exit_code=rc, error=error, extra=extra)
        )
        if done is None and uploaded:
            await artifacts.delete_artifacts(self.store.db, uploaded)
        self.outcome = status.value if done is not None else "lost"
        self.log.info("job finished", status=self.outcome, exit_code=rc)

    async def _release(self, sink: LogSink) -> None:
        reason = f"worker {self.s.worker_id} shut down during the run; re-queued"
        await sink.system(reason)
        if not await self._close_sink(sink):
            return
        done = await self._final_write(lambda job: self.store.release(job, reason))
        self.outcome = "released" if done is not None else "lost"
        self.log.info("job handed back", outcome=self.outcome)

    async def _close_sink(self, sink: LogSink) -> bool:
        """Every line is stored before the status turns final (a log tail ends there)."""
        try:
            await sink.close()
        except PyMongoError as exc:
            self.log.error("could not store the last log lines", error=str(exc))
        if self.stop_reason is StopReason.LOST:
            self.outcome = "lost"
            return False
        return True

    async def _retrying(self, op: Any) -> Any:
        """An idempotent read or write, retried while our lease surely still holds."""
        delay = 0.1
        while True:
            try:
                return await op()
            except PyMongoError:
                if time.monotonic() + delay >= self._lease_deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _final_write(self, write: Any) -> Job | None:
        async with self._cas:
            self._done = True
            if self.stop_reason is StopReason.LOST:
                return None
            for delay in (0.2, 0.5, 1.0, 2.0, None):
                try:
                    result: Job | None = await write(self.job)
                except PyMongoError as exc:
                    if delay is None or time.monotonic() > self._lease_deadline:
                        self.log.error("final write failed; the lease will expire", error=str(exc))
                        return None
                    await asyncio.sleep(delay)
                    continue
                if result is None:
                    self.log.warning("the job changed hands before its final write")
                return result
            return None  # pragma: no cover

    def _failure_text(self, rc: int | None) -> str:
        lines = [line for line in self.proc.stderr_tail if line.strip()] if self.proc else []
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            lines.append(f"(the trainer was killed by {name})")
        text = "\n".join(lines) or f"the trainer exited with code {rc}"
        return text[-ERROR_MAX_CHARS:]

    # -- while it runs ------------------------------------------------------------------

    async def _on_line(self, stream: str, line: str) -> None:
        assert self.sink is not None
        await self.sink.write(stream, line)
        if stream == "stdout":
            parsed = parse_epoch_line(line)
            if parsed is not None:
                self._metrics.put_nowait(parsed)

    async def _metrics_loop(self) -> None:
        """Epoch metrics in order; `latestMetrics` doubles as an ownership check."""
        while (epoch := await self._metrics.get()) is not None:
            if self.stop_reason is StopReason.LOST:
                continue
            for delay in (0.2, 0.5, 1.0, None):
                try:
                    owned = await self.store.set_latest_metrics(self.job, epoch.as_latest())
                    if not owned:
                        self._lost("the job is no longer ours (metrics write refused)")
                        break
                    await self.store.write_metrics(
                        self.job_id, epoch.epoch, epoch.epochs, epoch.metrics
                    )
                    break
                except PyMongoError as exc:
                    if delay is None:
                        self.log.error("metrics write failed; dropped", epoch=epoch.epoch,
                                       error=str(exc))  # fmt: skip
                        break
                    await asyncio.sleep(delay)

    async def _watch_sink(self, sink: LogSink) -> None:
        await sink.failed.wait()
        self._request_stop(StopReason.LOG_FAILED, self.s.stop_grace_s)

    async def _renew_loop(self) -> None:
        """Compare-and-set every `renew_every_s`; faster retries while MongoDB errs."""
        delay = self.s.renew_every_s
        while True:
            await asyncio.sleep(delay)
            async with self._cas:
                if self._done:
                    return
                sent_at = time.monotonic()
                try:
                    renewed = await self.store.renew_lease(self.job, self.s.lease_s)
                except PyMongoError as exc:
                    if time.monotonic() >= self._lease_deadline:
                        self._lost(f"the lease could not be renewed in time: {exc}")
                        return
                    self.log.warning("lease renewal failed; retrying", error=str(exc))
                    delay = min(1.0, self.s.renew_every_s)
                    continue
                if renewed is None:
                    self._lost("lease renewal lost the race")
                    return
                self.job = renewed
                self._lease_deadline = sent_at + self.s.lease_s
                delay = self.s.renew_every_s
            if renewed.get("cancelRequested"):
                self.request_cancel()

    def _lost(self, why: str) -> None:
        self.log.warning("job lost; killing the run and writing nothing more", why=why)
        self._request_stop(StopReason.LOST, 0.0)
        self.stop_reason = StopReason.LOST


def _remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(OSError):
        workdir.parent.rmdir()  # only once no other run of the job uses it


def _make_dirs(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
