"""One claimed job, start to end: the trainer subprocess, its logs and metrics, and the one
final write (Succeeded, Failed, Cancelled, or back to Pending on shutdown).

The lease (service.worker.lease) says whether the job is still ours; the log sink
(service.worker.logsink) stores its lines; this module supervises the trainer and gathers
what happened, and service.worker.ending decides what that makes of the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pymongo.errors import PyMongoError

from service.cancellation import cancel_and_wait
from service.jobs import eta, memory
from service.jobs.record import (
    Checkpoint,
    Circuit,
    JobRecord,
    Result,
    ResumedFrom,
    StoppedEarly,
)
from service.jobs.status import Status
from service.jobs.warnings import job_warnings
from service.retry import retry
from service.store import Store
from service.store.errors import FileGone
from service.store.files import ARTIFACTS_BUCKET, CHECKPOINTS_BUCKET
from service.store.logs import StaleAttempt
from service.sweeps import controller
from service.worker import artifacts, checkpoints
from service.worker.datacache import DataCache
from service.worker.ending import (
    Memory,
    Observed,
    StopReason,
    decide,
    describe_circuit,
    oom_kill_count,
)
from service.worker.errors import DatasetUnavailable, LeaseLapsed
from service.worker.gpus import Slot
from service.worker.lease import Lease
from service.worker.logsink import LogSink
from service.worker.runner import TrainerProcess
from service.worker.warm import WarmTrainer
from trainer import protocol
from trainer.options import run_control_args, trainer_args

log = structlog.get_logger(__name__)

T = TypeVar("T")

# How long a run whose lease lapsed during its upload keeps trying to delete what it wrote
# (MongoDB is unreachable meanwhile, so its slot could not be given another job anyway).
DISCARD_WITHIN_S = 300.0
# How long a run its sweep's scheduler stops may take to write its checkpoint.
SCHEDULER_GRACE_S = 60.0


class Outcome(StrEnum):
    """How a run ended for this worker (the job's status is what the store says)."""

    SUCCEEDED = Status.SUCCEEDED.value
    FAILED = Status.FAILED.value
    CANCELLED = Status.CANCELLED.value
    RELEASED = "released"  # handed back to the queue
    LOST = "lost"  # the job changed hands: nothing written
    UNREACHABLE = "unreachable"  # MongoDB gone: the lease will expire


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
    checkpoint_grace_s: float = 30.0  # a stopping worker's trainers get this to checkpoint
    keep_workdirs: bool = False
    die_with_worker: bool = True
    # CPU trainers run with their data segment capped at factor x estimate + headroom
    # (service.jobs.memory.cpu_limit); None turns the cap off.
    memory_limit_factor: float | None = memory.LIMIT_FACTOR
    memory_limit_headroom: int = memory.LIMIT_HEADROOM

    @property
    def datasets_dir(self) -> Path:
        """Shared by all runs of the worker: data sets are downloaded once, not per job."""
        return self.data_dir / "datasets"

    def workdir(self, job: JobRecord) -> Path:
        """Unique per run: a hand-back does not count an attempt, and a lost attempt may still
        be cleaning up when this worker claims the same job again."""
        suffix = uuid.uuid4().hex[:8]
        return self.data_dir / "jobs" / str(job.id) / f"attempt-{job.attempt}-{suffix}"


class JobRun:
    def __init__(
        self,
        store: Store,
        settings: RunSettings,
        slot: Slot,
        job: JobRecord,
        *,
        claimed_at: float | None = None,
        data_cache: DataCache | None = None,
        warm: WarmTrainer | None = None,
    ) -> None:
        self.store = store
        self.data_cache = data_cache
        self.warm = warm  # the slot's warm trainer (service.worker.warm); None: cold starts
        self.s = settings
        self.slot = slot
        self.job_id = job.id
        self.attempt = job.attempt
        assert job.attemptId is not None, "a claimed job has an attempt id"
        self.attempt_id: str = job.attemptId
        self.log = log.bind(
            job_id=str(self.job_id), worker_id=settings.worker_id, gpu=slot.gpu,
            attempt=job.attempt,
        )  # fmt: skip
        self.lease = Lease(
            store.jobs,
            job,
            lease_s=settings.lease_s,
            renew_every_s=settings.renew_every_s,
            on_lost=lambda why: self._request_stop(StopReason.LOST, 0.0),
            on_cancel_requested=self.request_cancel,
            on_renewed=self._tell_trainer_deadline,
            claimed_at=claimed_at,
        )
        self.stop_reason: StopReason | None = None
        self._stop = asyncio.Event()
        self._hurried = asyncio.Event()
        self._cancel_requested = False
        self._stop_grace_s = settings.stop_grace_s
        self._metrics: asyncio.Queue[protocol.Epoch | None] = asyncio.Queue()
        self.proc: TrainerProcess | None = None
        self.memory_limit: int | None = None  # the trainer's data-segment cap, if any
        self._oom_kills = 0
        self.sink: LogSink | None = None
        self.uploader: checkpoints.CheckpointUploader | None = None
        self._resuming: Checkpoint | None = None  # the checkpoint the trainer was given
        self._circuit: Circuit | None = None  # from the trainer's CIRCUIT line
        self._result: Result | None = None  # the kept network's, from the SUMMARY line
        self._epoch_s: dict[int, float] = {}  # this attempt's epoch times, for `etaS`
        self._epoch_seen_at: float | None = None
        self.outcome: Outcome | None = None
        self._scheduler: str | None = None  # its sweep's scheduler type, read at the start
        self._median_stop: StoppedEarly | None = None  # the median rule stopped it there
        self.started = asyncio.Event()  # the trainer process exists (tests read its pid)

    # -- requests from outside (the worker's change stream, shutdown) ------------------

    def request_cancel(self) -> None:
        self._cancel_requested = True
        self._request_stop(StopReason.CANCEL, self.s.cancel_grace_s)

    def request_shutdown(self, *, now: bool = False) -> None:
        """Checkpoint and stop (the worker is going away); `now`: skip the checkpoint."""
        if now:
            self._hurried.set()
        self._request_stop(StopReason.SHUTDOWN, self.s.stop_grace_s)

    def _request_stop(self, reason: StopReason, grace_s: float) -> None:
        # A lost lease trumps everything; otherwise the first reason stands, except that a
        # cancel during shutdown still ends as Cancelled (checked at the end). Every renewal
        # of a job being cancelled repeats the request: only the first one is news.
        if self.stop_reason is StopReason.LOST:
            return
        if self.stop_reason is reason:
            return
        if self.stop_reason is None or reason is StopReason.LOST:
            self.stop_reason = reason
            self._stop_grace_s = grace_s
        self.log.info("stopping the run", reason=reason.value)
        self._stop.set()

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> None:
        workdir = self.s.workdir(self.lease.job)
        try:
            await self._run(workdir)
        except PyMongoError as exc:
            self.outcome = Outcome.UNREACHABLE
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
        next_seq = await retry(
            lambda: self.store.logs.next_seq(self.job_id),
            deadline=self.lease.deadline,
            operation="log_seq",
        )
        self.sink = LogSink(
            self.store.logs,
            self.job_id,
            next_seq=next_seq,
            attempt_id=self.attempt_id,
            lease_deadline=lambda: self.lease.deadline,
        )
        await self.sink.system(
            f"attempt {self.attempt} on worker {self.s.worker_id} gpu {self.slot.gpu}"
        )
        self.uploader = checkpoints.CheckpointUploader(self.store, self.lease, self.attempt_id)
        renewer = asyncio.create_task(self.lease.keep(), name=f"renew-{self.job_id}")
        metrics = asyncio.create_task(self._metrics_loop(), name=f"metrics-{self.job_id}")
        sink_watch = asyncio.create_task(self._watch_sink(self.sink))
        if self.lease.job.cancelRequested:
            self.request_cancel()
        sweep_id = self.lease.job.sweepId
        if sweep_id is not None:
            sweep = await retry(
                lambda: self.store.sweeps.get(sweep_id), deadline=self.lease.deadline
            )
            self._scheduler = None if sweep is None else (sweep.scheduler or {}).get("type")
        try:
            rc, stopped_by_us, start_error = await self._supervise(workdir, output_dir)
            await self._metrics.put(None)
            await metrics
            # A checkpoint written on the way out (a graceful stop) must be stored before the
            # job is handed back: the next attempt resumes from it.
            await self.uploader.close(max(0.0, self.lease.deadline - time.monotonic()))
            await self._finish(rc, stopped_by_us, start_error, output_dir)
        finally:
            await cancel_and_wait(renewer, metrics, sink_watch)
            if self.proc is not None and self.proc.running:
                await self.proc.kill()

    def _argv(
        self, workdir: Path, output_dir: Path, resume: Path | None, dataset: Path | None = None
    ) -> list[str]:
        job = self.lease.job
        return [
            *self.s.trainer_cmd,
            *trainer_args(job.hyperparameters),
            *run_control_args(job),
            "--data-dir", str(self.s.datasets_dir),
            *(["--dataset-file", str(dataset)] if dataset is not None else []),
            "--output-dir", str(output_dir),
            "--checkpoint-dir", str(workdir / "checkpoints"),
            *(["--resume-from", str(resume)] if resume is not None else []),
            *(["--stop-epoch", str(job.targetEpoch)] if job.targetEpoch is not None else []),
            *self.slot.device_args(),
        ]  # fmt: skip

    async def _supervise(self, workdir: Path, output_dir: Path) -> tuple[int | None, bool, str]:
        """Run the trainer to its end, or stop it on request; (exit code, stopped, error).

        A job with checkpoints resumes from the newest; one the trainer cannot use (exit 65)
        or that cannot be downloaded gives way to the one before, then to epoch 0, each with
        a system line: never a crash."""
        candidates: list[Checkpoint | None] = [*reversed(self.lease.job.checkpoints), None]
        for candidate in candidates:
            resume = None
            if candidate is not None:
                try:
                    resume = await checkpoints.download(self.store, candidate, workdir / "resume")
                except (OSError, PyMongoError, FileGone) as exc:
                    await self._fall_back(candidate, f"could not be downloaded ({exc})")
                    continue
            self._resuming = candidate
            rc, stopped_by_us, error = await self._run_trainer(workdir, output_dir, resume)
            if candidate is not None and rc == protocol.EXIT_BAD_CHECKPOINT and not error:
                lines = list(self.proc.stderr_tail) if self.proc is not None else []
                tail = next((ln for ln in reversed(lines) if ln.strip()), "")
                await self._fall_back(candidate, f"was refused by the trainer: {tail}")
                continue
            return rc, stopped_by_us, error
        return None, False, "no way to start the trainer"  # pragma: no cover - None is last

    async def _fall_back(self, checkpoint: Checkpoint, why: str) -> None:
        older = [c for c in self.lease.job.checkpoints if c.createdAt < checkpoint.createdAt]
        then = f"trying {checkpoints.describe(older[-1])}" if older else "starting from epoch 0"
        assert self.sink is not None
        await self.sink.system(f"{checkpoints.describe(checkpoint)} {why}; {then}")

    async def _run_trainer(
        self, workdir: Path, output_dir: Path, resume: Path | None
    ) -> tuple[int | None, bool, str]:
        """The trainer, with the job's registered data set fetched into the worker's cache
        (and kept there while it runs) where it names one."""
        ref = self.lease.job.datasetRef
        if ref is None:
            return await self._start_trainer(workdir, output_dir, resume, None)
        cache = self.data_cache or DataCache(self.store, self.s.datasets_dir / "registered", 0)
        try:
            async with cache.use(ref) as dataset:
                return await self._start_trainer(workdir, output_dir, resume, dataset)
        except DatasetUnavailable as exc:
            return None, False, str(exc)

    async def _start_trainer(
        self, workdir: Path, output_dir: Path, resume: Path | None, dataset: Path | None
    ) -> tuple[int | None, bool, str]:
        try:
            argv = self._argv(workdir, output_dir, resume, dataset)
        except (KeyError, TypeError, AttributeError) as exc:
            return None, False, f"the job's hyperparameters cannot be passed on: {exc}"
        if self.warm is not None:  # may start its server: before the lease deadline is read
            await self.warm.prepare(argv)
        env = self.slot.env(self.s.env)
        env |= protocol.supervised_env(
            deadline=self._fence_deadline(self.lease.deadline),
            job_id=str(self.job_id),
            attempt=self.attempt,
            attempt_id=self.attempt_id,
        )
        self.memory_limit = self._memory_limit()
        self._oom_kills = oom_kill_count()
        self.proc = TrainerProcess(
            argv, on_line=self._on_line, env=env, cwd=workdir,
            die_with_worker=self.s.die_with_worker, stdin=True, memory_limit=self.memory_limit,
            warm=self.warm,
        )  # fmt: skip
        if self._stop.is_set():
            return None, True, ""
        try:
            await self.proc.start()
        except OSError as exc:
            return None, False, f"cannot start the trainer {self.s.trainer_cmd[0]!r}: {exc}"
        self.started.set()
        self.log.info("trainer started", pid=self.proc.pid, resume=str(resume or ""),
                      forked_from=self.proc.forked_from)  # fmt: skip
        waiter = asyncio.create_task(self.proc.wait())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopped_by_us = not waiter.done()
            if stopped_by_us and self.stop_reason in (StopReason.SHUTDOWN, StopReason.SCHEDULER):
                # A graceful stop: the trainer checkpoints at its next step and exits 76, so
                # the job resumes elsewhere from there. A trainer that ends otherwise within
                # the grace (it was about to finish) ends the run as it would have anyway.
                self.proc.send(protocol.CheckpointAndStop().format())
                hurry = asyncio.create_task(self._hurried.wait())
                grace_s = self.s.checkpoint_grace_s
                if self.stop_reason is StopReason.SCHEDULER:  # no one waits to go: let it save
                    grace_s = max(grace_s, SCHEDULER_GRACE_S)
                await asyncio.wait(
                    {waiter, hurry}, timeout=grace_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                hurry.cancel()
                if waiter.done():
                    stopped_by_us = waiter.result() == protocol.EXIT_CHECKPOINTED
            if stopped_by_us and not waiter.done():
                await self.proc.terminate(self._stop_grace_s)
            rc = await waiter
        finally:
            stopper.cancel()
            if not waiter.done():  # we are being cancelled ourselves: leave no process
                waiter.cancel()
                await self.proc.kill()
        self.log.info("trainer exited", exit_code=rc, stopped=stopped_by_us)
        return rc, stopped_by_us, ""

    def _observed(self, rc: int | None, stopped_by_us: bool, start_error: str) -> Observed:
        return Observed(
            rc=rc,
            stopped_by_us=stopped_by_us,
            start_error=start_error,
            cancel_requested=self._cancel_requested,
            stop_reason=self.stop_reason,
            stderr_tail=list(self.proc.stderr_tail) if self.proc is not None else [],
        )

    def _memory(self) -> Memory:
        return Memory(
            estimate=memory.needed(self.lease.job.memoryEstimate, self.slot.device),
            device=self.slot.device,
            limit=self.memory_limit,
            slot_bytes=self.slot.memory_bytes,
            oom_killed=oom_kill_count() > self._oom_kills,
        )

    async def _finish(
        self, rc: int | None, stopped_by_us: bool, start_error: str, output_dir: Path
    ) -> None:
        sink = self.sink
        assert sink is not None
        if self.lease.lost:
            await sink.discard()
            self.outcome = Outcome.LOST
            return
        if await self._scheduler_ending(sink, rc, stopped_by_us, start_error):
            return
        saved = self.uploader.uploaded[-1:] if self.uploader is not None else []
        ending = decide(
            self._observed(rc, stopped_by_us, start_error),
            self._memory(),
            worker_id=self.s.worker_id,
            resumes_from=checkpoints.describe(saved[0]) if saved else None,
            log_error=str(sink.error),
        )
        if ending.system_line:
            await sink.system(ending.system_line)
        if ending.status is None:
            await self._release(sink, ending.error or "")
            return
        status, error = ending.status, ending.error
        extra: dict[str, Any] = {}
        uploaded: list[artifacts.Artifact] = []
        if status is Status.SUCCEEDED:
            upload = artifacts.OutputUpload(self.store.files, self.job_id, self.attempt, output_dir)
            try:
                uploaded = await self._while_lease_holds(upload.run)
            except OSError as exc:  # the output could not be read: no retry will help
                status, error = Status.FAILED, f"the trained network could not be saved: {exc}"
                await sink.system(error)
            except PyMongoError as exc:  # only once the lease lapsed: the job is re-run
                await self._abandon_upload(sink, upload, exc)
                return
            else:
                extra["artifacts"] = [a.model_dump() for a in uploaded]
                names = ", ".join(a.name for a in uploaded) or "none"
                await sink.system(f"finished; saved files: {names}")
                if self._circuit is not None:  # stored with the files it describes
                    extra["circuit"] = self._circuit.model_dump()
                    await sink.system(describe_circuit(self._circuit))
                if self._result is not None:
                    extra["result"] = self._result.model_dump()
                layers = int(self.lease.job.hyperparameters.get("networkLayers", 2))
                warnings = job_warnings(self._result, self._circuit, layers)
                extra["warnings"] = [w.model_dump() for w in warnings]
                for warning in warnings:
                    await sink.system(f"warning ({warning.code}): {warning.message}")
        if not await self._close_sink(sink):
            return
        done = await self.lease.final_write(
            lambda job: self.store.jobs.finish(job, status, exit_code=rc, error=error, extra=extra)
        )
        if done is None and uploaded and await self._owned_by_another():
            await artifacts.delete_artifacts(self.store.files, uploaded)
        if done is not None:
            await self._delete_orphan_files(done)
        self.outcome = Outcome(status.value) if done is not None else Outcome.LOST
        self.log.info("job finished", status=self.outcome.value, exit_code=rc)

    # -- a sweep's scheduler (docs/sweeps.md, "Schedulers") ------------------------------

    async def _scheduler_ending(
        self, sink: LogSink, rc: int | None, stopped_by_us: bool, start_error: str
    ) -> bool:
        """A run that stopped for its sweep's scheduler: at its ASHA rung (promoted back to
        Pending, or ended with `stoppedEarly`), or by the median rule. False: not one."""
        job = self.lease.job
        if self._cancel_requested or start_error:
            return False
        if stopped_by_us and self.stop_reason is StopReason.SCHEDULER:
            assert self._median_stop is not None
            await self._stop_early(sink, rc, self._median_stop)
            return True
        if stopped_by_us or job.targetEpoch is None or rc != protocol.EXIT_CHECKPOINTED:
            return False
        epoch = job.targetEpoch
        outcome = await retry(lambda: controller.at_rung(self.store, job, epoch),
                              deadline=self.lease.deadline)  # fmt: skip
        if outcome is None:  # the sweep lost its scheduler (deleted): train to the end
            await self._promote(sink, None, f"epoch {epoch}: no scheduler any more")
            return True
        d = outcome.decision
        value = "no value" if d.value is None else f"{d.value:.4g}"
        where = f"rung {d.rung} (epoch {epoch}), {value}"
        if d.promote:
            then = f"epoch {outcome.target}" if outcome.target else "its last epoch"
            await self._promote(sink, outcome.target,
                                f"{where}: in the top 1/{outcome.factor}; promoted, it resumes "
                                f"from its checkpoint towards {then}")  # fmt: skip
            return True
        reason = f"asha: {where}, not in the top 1/{outcome.factor} of its rung"
        await self._stop_early(sink, rc, StoppedEarly(epoch=epoch, rung=d.rung, reason=reason))
        return True

    async def _promote(self, sink: LogSink, target: int | None, line: str) -> None:
        await sink.system(line)
        if not await self._close_sink(sink):
            return
        done = await self.lease.final_write(lambda job: self.store.jobs.promote(job, target))
        if done is None and not self.lease.lost:  # refused: the job is being cancelled
            cancelled = await self.lease.final_write(
                lambda job: self.store.jobs.finish(
                    job, Status.CANCELLED, error="cancelled on request"
                )
            )
            self.outcome = Outcome.CANCELLED if cancelled is not None else Outcome.LOST
            return
        self.outcome = Outcome.RELEASED if done is not None else Outcome.LOST
        self.log.info("promoted by its sweep's scheduler", target=target)

    async def _stop_early(self, sink: LogSink, rc: int | None, stopped: StoppedEarly) -> None:
        """Succeeded, stopped early: its metrics and checkpoints kept, no network, no circuit
        (`gatequeue` can resume it by hand to full length)."""
        await sink.system(f"stopped early by its sweep's scheduler: {stopped.reason}")
        if not await self._close_sink(sink):
            return
        extra = {"stoppedEarly": stopped.model_dump(), "targetEpoch": None}
        done = await self.lease.final_write(
            lambda job: self.store.jobs.finish(job, Status.SUCCEEDED, exit_code=rc, extra=extra)
        )
        self.outcome = Outcome.SUCCEEDED if done is not None else Outcome.LOST
        self.log.info("stopped early by its sweep's scheduler", reason=stopped.reason)

    async def _median_check(self, epoch: protocol.Epoch) -> None:
        """After each stored epoch of a median-scheduled sweep's run: stop it when the rule
        says so (a checkpoint, then Succeeded with `stoppedEarly`)."""
        if self._scheduler != "median" or self.stop_reason is not None:
            return
        try:
            decision = await controller.median_check(self.store, self.lease.job, epoch.epoch)
        except PyMongoError as exc:  # the next epoch asks again
            self.log.warning("median rule not checked", epoch=epoch.epoch, error=str(exc))
            return
        if decision is None:
            return
        value = "no value" if decision.value is None else f"{decision.value:.4g}"
        self._median_stop = StoppedEarly(
            epoch=epoch.epoch, rung=None,
            reason=f"median: best {value} by epoch {epoch.epoch}, below the median of the "
            "other runs' there",
        )  # fmt: skip
        self._request_stop(StopReason.SCHEDULER, self.s.stop_grace_s)

    async def _while_lease_holds(self, op: Callable[[Callable[[], float]], Awaitable[T]]) -> T:
        """`op(deadline)` (which retries MongoDB errors until `deadline()`, the lease's end)
        until the lease really lapsed: `op` gives up a little early, when its next try would
        start past the deadline, and a renewal may still move the deadline, so the lease is
        waited out before the error counts. Re-raises once the lease lapsed or was lost."""

        def deadline() -> float:
            return self.lease.deadline

        while True:
            try:
                return await op(deadline)
            except PyMongoError:
                if self.lease.lost:
                    raise
                remaining = self.lease.deadline - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)  # a renewal would move the deadline
                if self.lease.lost or time.monotonic() >= self.lease.deadline:
                    raise

    async def _abandon_upload(
        self, sink: LogSink, upload: artifacts.OutputUpload, exc: PyMongoError
    ) -> None:
        """The lease lapsed while the network was being saved: nothing more is written for this
        attempt (the job's lease expires and it is re-run), except that what it uploaded is
        deleted once MongoDB is back, so no half-written file is left behind."""
        await sink.discard()
        self.outcome = Outcome.UNREACHABLE
        self.log.error(
            "the trained network could not be saved before the lease lapsed; "
            "the job will be re-run", error=str(exc),
        )  # fmt: skip
        if await upload.discard(within_s=DISCARD_WITHIN_S):
            self.log.info("files of the abandoned upload deleted")
        else:
            self.log.error("files of the abandoned upload could not be deleted",
                           job_id=str(self.job_id))  # fmt: skip

    async def _delete_orphan_files(self, job: JobRecord) -> None:
        """Files no attempt will name any more: a killed worker's last checkpoint, or the
        network it had saved before it died ahead of its final write."""
        keep = {
            CHECKPOINTS_BUCKET: [c.fileId for c in job.checkpoints],
            ARTIFACTS_BUCKET: [a.fileId for a in job.artifacts],
        }
        for bucket, listed in keep.items():
            try:
                orphans = await self.store.files.delete_unlisted(bucket, job.id, listed)
            except PyMongoError as exc:
                self.log.warning("could not look for orphan files", bucket=bucket, error=str(exc))
                continue
            if orphans:
                self.log.info("orphan files deleted", bucket=bucket, files=orphans)

    async def _owned_by_another(self) -> bool:
        """Files of a run whose final write did not land are deleted only when the job is
        seen held by another attempt: if the write did land (its reply lost) and the job
        cannot be read to tell, the files are the job's and must stay."""
        try:
            current = await retry(
                lambda: self.store.jobs.get(self.job_id), attempts=3, operation="job_read"
            )
        except PyMongoError:
            return False
        return current is None or current.attemptId != self.attempt_id

    async def _release(self, sink: LogSink, reason: str) -> None:
        if not await self._close_sink(sink):
            return
        done = await self.lease.final_write(lambda job: self.store.jobs.release(job, reason))
        self.outcome = Outcome.RELEASED if done is not None else Outcome.LOST
        self.log.info("job handed back", outcome=self.outcome.value)

    async def _close_sink(self, sink: LogSink) -> bool:
        """Every line is stored before the status turns final (a log tail ends there)."""
        try:
            await sink.close()
        except (PyMongoError, StaleAttempt, LeaseLapsed) as exc:
            self.log.error("could not store the last log lines", error=str(exc))
        if self.lease.lost:
            self.outcome = Outcome.LOST
            return False
        return True

    def _memory_limit(self) -> int | None:
        if not self.slot.is_cpu or self.s.memory_limit_factor is None:
            return None
        return memory.cpu_limit(
            self.lease.job.memoryEstimate, self.s.memory_limit_factor,
            self.s.memory_limit_headroom,
        )  # fmt: skip

    # -- while it runs ------------------------------------------------------------------

    async def _on_line(self, stream: str, line: str) -> None:
        assert self.sink is not None
        await self.sink.write(stream, line)
        if stream != "stdout":
            return
        record = protocol.parse_line(line)
        if isinstance(record, protocol.Epoch):
            self._time_epoch(record)
            self._metrics.put_nowait(record)
        elif isinstance(record, protocol.Summary) and record.result is not None:
            self._result = Result.model_validate(record.result.as_json())
        elif isinstance(record, protocol.Checkpoint):
            assert self.uploader is not None
            self.uploader.offer(record)
        elif isinstance(record, protocol.Circuit):
            self._circuit = Circuit.model_validate(record.result)
        elif isinstance(record, protocol.Resumed) and self._resuming is not None:
            resumed = self._resuming
            await self.sink.system(f"resumed from {checkpoints.describe(resumed)}")
            with contextlib.suppress(PyMongoError):
                await self.store.jobs.set_resumed_from(
                    self.lease.job,
                    ResumedFrom(epoch=resumed.epoch, step=resumed.step,
                                attemptId=resumed.attemptId),
                )  # fmt: skip

    async def _metrics_loop(self) -> None:
        """Epoch metrics in order; `latestMetrics` doubles as an ownership check."""
        while (epoch := await self._metrics.get()) is not None:
            if self.lease.lost:
                continue
            try:  # as long as the lease surely holds: an outage shorter than it costs nothing
                await retry(
                    functools.partial(self._store_epoch, epoch),
                    deadline=self.lease.deadline,
                    operation="metrics_write",
                )
            except PyMongoError as exc:
                self.log.error("metrics write failed; dropped", epoch=epoch.epoch, error=str(exc))

    def _time_epoch(self, epoch: protocol.Epoch) -> None:
        """The epoch's seconds: its `epoch_s`, else the time since the last EPOCH line."""
        now = time.monotonic()
        since = None if self._epoch_seen_at is None else now - self._epoch_seen_at
        self._epoch_seen_at = now
        seconds = epoch.metrics.get("epoch_s", since)
        if seconds is not None and seconds >= 0:
            self._epoch_s[epoch.epoch] = float(seconds)

    def _eta_s(self, epoch: protocol.Epoch) -> float:
        hp = self.lease.job.hyperparameters
        gates = int(hp.get("gates", 0)) * int(hp.get("networkLayers", 1))
        seen = [s for e, s in self._epoch_s.items() if e <= epoch.epoch]
        return eta.job_eta_s(seen, epoch.epoch, epoch.epochs, gates)

    async def _store_epoch(self, epoch: protocol.Epoch) -> None:
        stored = await self.store.jobs.set_latest_metrics(
            self.lease.job, epoch.as_latest(), eta_s=self._eta_s(epoch)
        )
        if not stored:
            self.lease.lose("the job is no longer ours (metrics write refused)")
            return
        await self.store.metrics.write(self.job_id, epoch.epoch, epoch.epochs, epoch.metrics)
        await self._median_check(epoch)

    async def _watch_sink(self, sink: LogSink) -> None:
        await sink.failed.wait()
        if sink.stale:
            self.lease.lose(f"log writes refused: {sink.error}")
        else:
            self._request_stop(StopReason.LOG_FAILED, self.s.stop_grace_s)

    def _fence_deadline(self, lease_deadline: float) -> float:
        """When the trainer must have stopped if it hears no more: a little before the lease
        could expire on the server, so it is gone before anyone else can claim the job."""
        return lease_deadline - min(1.0, self.s.lease_s / 10)

    def _tell_trainer_deadline(self, lease_deadline: float) -> None:
        if self.proc is not None:
            self.proc.send(protocol.Lease(self._fence_deadline(lease_deadline)).format())


def _remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(OSError):
        workdir.parent.rmdir()  # only once no other run of the job uses it


def _make_dirs(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
