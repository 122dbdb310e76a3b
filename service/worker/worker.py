"""The worker: slots, dispatch from the change stream, claims, the lease sweep, shutdown.

Claims happen in one task (the claimer), so choosing a free slot and claiming for it never
race inside one worker; across workers the compare-and-set claim of docs/design.md decides. The
claimer is woken, never polling: by a change event carrying a Pending job (claimed straight
from the event's document, one round trip), by the stream being (re)opened, and by a slot
becoming free (then it asks the queue, oldest first, so nothing waits while a slot idles).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from bson import ObjectId
from pymongo.errors import PyMongoError

from service import config
from service.cancellation import cancel_and_wait
from service.jobs import memory
from service.jobs.record import Job, JobRecord, WorkerRef, new_attempt_id
from service.jobs.status import Status
from service.mongo.changestream import StoredTokens
from service.retry import DATABASE, Failures
from service.store import Store
from service.store.workers import HEARTBEAT_S
from service.sweeps import controller
from service.worker.datacache import DataCache
from service.worker.dispatch import job_feed
from service.worker.gpus import Slot
from service.worker.heartbeat import DEFAULT_INTERVAL_S, run_heartbeat
from service.worker.jobrun import JobRun, RunSettings
from service.worker.prom import WorkerMetrics
from service.worker.warm import WarmTrainer, entry_of

log = structlog.get_logger(__name__)

DEFAULT_TRAINER_CMD: tuple[str, ...] = (sys.executable, "-m", "trainer")
DEFAULT_CANCEL_GRACE_S = 3.0  # SIGTERM -> SIGKILL on cancel: Cancelled well within 5 s
# On SIGTERM the trainers get this long to checkpoint and stop, then SIGTERM and
# DEFAULT_STOP_GRACE_S before SIGKILL; with the upload of the last checkpoint this fits the
# worker Deployment's terminationGracePeriodSeconds (180 s, docs/deploy.md).
DEFAULT_SHUTDOWN_GRACE_S = 90.0
DEFAULT_STOP_GRACE_S = 10.0
_SWEEP_SLACK_S = 0.05
_CLAIMER_STOP_S = 15.0
MIN_SLOT_GRACE_S = 10.0

ClaimHook = Callable[[JobRecord], None]


class Worker:
    def __init__(
        self,
        store: Store,
        *,
        worker_id: str,
        slots: Sequence[Slot | str],
        data_dir: Path,
        trainer_cmd: Sequence[str] | None = None,
        host: str | None = None,
        lease_s: float = 30.0,
        renew_every_s: float | None = None,
        cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S,
        shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        sweep_leases: bool = True,
        sweep_max_interval_s: float | None = None,
        slot_grace_s: float | None = None,
        heartbeat_file: Path | None = None,
        heartbeat_interval_s: float = DEFAULT_INTERVAL_S,
        env: Mapping[str, str] | None = None,
        keep_workdirs: bool = False,
        die_with_worker: bool = True,
        on_claim: ClaimHook | None = None,
        memory_limit_factor: float | None = memory.LIMIT_FACTOR,
        memory_limit_headroom: int = memory.LIMIT_HEADROOM,
        register_every_s: float = HEARTBEAT_S,
        data_cache_bytes: int = config.DEFAULT_DATA_CACHE,
        warm_start: bool = True,
    ) -> None:
        if not slots:
            raise ValueError("a worker needs at least one slot")
        self.store = store
        self.id = worker_id
        self.host = host or socket.gethostname()
        self.slots = [s if isinstance(s, Slot) else Slot(s) for s in slots]
        self.lease_s = lease_s
        self.shutdown_grace_s = shutdown_grace_s
        self.sweep_leases = sweep_leases
        self.sweep_max_interval_s = sweep_max_interval_s or lease_s
        # A claim gives up re-reading after lease_s: a slot older than twice that whose
        # attempt holds no job is stale.
        self.slot_grace_s = slot_grace_s or max(2 * lease_s, MIN_SLOT_GRACE_S)
        self.heartbeat_file = heartbeat_file
        self.heartbeat_interval_s = heartbeat_interval_s
        self.on_claim = on_claim
        cmd = list(trainer_cmd) if trainer_cmd is not None else list(DEFAULT_TRAINER_CMD)
        base_env = config.environment(env)
        if trainer_cmd is None:
            base_env = _with_trainer_importable(base_env)
        self.run_settings = RunSettings(
            worker_id=worker_id,
            host=self.host,
            trainer_cmd=cmd,
            data_dir=Path(data_dir).absolute(),
            env=base_env,
            lease_s=lease_s,
            renew_every_s=renew_every_s or lease_s / 3,
            cancel_grace_s=cancel_grace_s,
            stop_grace_s=stop_grace_s,
            checkpoint_grace_s=shutdown_grace_s,
            keep_workdirs=keep_workdirs,
            die_with_worker=die_with_worker,
            memory_limit_factor=memory_limit_factor,
            memory_limit_headroom=memory_limit_headroom,
        )
        self.register_every_s = register_every_s
        self.metrics = WorkerMetrics()  # served by `--metrics-port` (service.worker.prom)
        self.data_cache = DataCache(
            store, self.run_settings.datasets_dir / "registered", data_cache_bytes,
            on_lookup=self.metrics.note_data_cache,
        )  # fmt: skip
        self.log = log.bind(worker_id=worker_id)
        # One warm trainer per slot (docs/worker.md, "Warm starts"), where the trainer is a
        # Python command the worker's interpreter runs; others start cold.
        self.warm: dict[str, WarmTrainer] = {}
        if warm_start and entry_of(cmd) is not None:
            for s in self.slots:
                self.warm[s.gpu] = WarmTrainer(
                    cmd, s.env(base_env), cwd=self.run_settings.data_dir / "warm",
                    die_with_worker=die_with_worker,
                )  # fmt: skip
        self.feed = job_feed(store, worker_id)
        self.runs: dict[ObjectId, JobRun] = {}  # by job id
        self._busy: dict[str, ObjectId] = {}  # slot gpu -> job id
        self._run_tasks: set[asyncio.Task[None]] = set()
        # Controller passes after runs of sweeps (their next trials): not waited for on stop.
        self._settles: set[asyncio.Task[None]] = set()
        self._hints: list[Job] = []
        self._full_sweeps: set[ObjectId] = set()  # maxParallel reached, this round
        self._early_cancels: set[ObjectId] = set()
        self._backlog = True  # ask the queue on the next wake-up
        self._wake = asyncio.Event()
        self._sweep_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self.metrics.count_slots(lambda: (len(self._busy), len(self.slots)))
        self.ready = asyncio.Event()  # the stream is open and the first catch-up is done
        self.stopped = asyncio.Event()  # run() has returned: runs handed back, token stored

    # -- control --------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; runs get `shutdown_grace_s` to end, then are stopped and re-queued.

        A second call (or `now=True`) skips the wait: a second Ctrl-C means it.
        """
        if self._stopping.is_set() or now:
            self._hurry.set()
        self._begin_stopping()

    def _begin_stopping(self) -> None:
        """One place for what "stopping" means: claim nothing more, store no newer resume
        token (a job arriving now is left for the next start to replay), wake the claimer."""
        self._stopping.set()
        if isinstance(self.feed.tokens, StoredTokens):
            self.feed.tokens.stop_recording()
        self._wake.set()

    async def run(self) -> None:
        """Until `stop()` (or cancellation, treated the same way by `run_worker`)."""
        self.log.info(
            "worker starting", slots=[s.gpu for s in self.slots], lease_s=self.lease_s,
            trainer=self.run_settings.trainer_cmd,
        )  # fmt: skip
        claimer = asyncio.create_task(self._claimer(), name="claimer")
        background = [
            asyncio.create_task(self._start_feed(), name="feed"),
            claimer,
            asyncio.create_task(self._advertise(), name="advertise"),
        ]
        if self.sweep_leases:
            background.append(asyncio.create_task(self._sweeper(), name="sweeper"))
        # Warmed in the background: a run claimed meanwhile waits for its server to be ready
        # (or starts cold when it cannot start).
        warming = [asyncio.create_task(w.start(), name="warm-start") for w in self.warm.values()]
        heartbeat = None
        if self.heartbeat_file is not None:
            heartbeat = asyncio.create_task(
                run_heartbeat(self.heartbeat_file, self.heartbeat_interval_s), name="heartbeat"
            )
        stop_wait = asyncio.create_task(self._stopping.wait())
        crashed: BaseException | None = None
        try:
            done, _ = await asyncio.wait(
                [stop_wait, *background], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stop_wait and task.exception() is not None:
                    crashed = task.exception()
                    self.log.error("worker task crashed; shutting down", task=task.get_name(),
                                   error=repr(crashed))  # fmt: skip
        finally:
            self._begin_stopping()
            stop_wait.cancel()
            # A claim in flight is let finish (its run is then handed back like the others);
            # cut short, it could leave a job Running that nobody runs until its lease ends.
            await asyncio.wait([claimer], timeout=_CLAIMER_STOP_S)
            await cancel_and_wait(stop_wait, *background)
            await self._shutdown_runs()
            await cancel_and_wait(*self._settles)
            await cancel_and_wait(*warming)
            await asyncio.gather(*(w.close() for w in self.warm.values()), return_exceptions=True)
            with contextlib.suppress(PyMongoError):
                await self.feed.tokens.flush()
            with contextlib.suppress(PyMongoError):
                await self.store.workers.remove(self.id)
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
            self.log.info("worker stopped")
            self.stopped.set()
        if crashed is not None:
            raise crashed

    async def _shutdown_runs(self) -> None:
        """Every run is asked at once to checkpoint and stop (its trainer gets
        `shutdown_grace_s`, then SIGTERM and `stop_grace_s`); each job goes back to the queue
        to resume elsewhere from that checkpoint. A second stop request skips the grace."""
        if not self._run_tasks:
            return
        self.log.info("stopping runs to hand them back", runs=len(self._run_tasks),
                      grace_s=self.shutdown_grace_s)  # fmt: skip
        for run in list(self.runs.values()):
            run.request_shutdown()
        hurry = asyncio.create_task(self._hurry.wait())
        while self._run_tasks:
            await asyncio.wait([hurry, *self._run_tasks], return_when=asyncio.FIRST_COMPLETED)
            if hurry.done():
                for run in list(self.runs.values()):
                    run.request_shutdown(now=True)
                await asyncio.gather(*self._run_tasks, return_exceptions=True)
        hurry.cancel()

    async def _advertise(self) -> None:
        """This worker's slots and what each holds, in `workers`: the API refuses a job no
        live worker could fit. Refreshed every `register_every_s`; a failed write is tried
        again then (the worker does not need it to run)."""
        slots = [{"gpu": s.gpu, "memoryBytes": s.memory_bytes} for s in self.slots]
        registered = False
        while True:
            try:
                if registered:
                    await self.store.workers.heartbeat(self.id)
                else:
                    await self.store.workers.register(self.id, self.host, slots)
                    registered = True
            except PyMongoError as exc:
                self.log.warning("could not advertise the worker's slots", error=str(exc))
            await asyncio.sleep(self.register_every_s)

    # -- dispatch -------------------------------------------------------------------------

    async def _start_feed(self) -> None:
        try:
            await self.store.ensure_indexes()
        except PyMongoError as exc:  # another process may create them; not fatal here
            self.log.warning("could not ensure indexes", error=str(exc))
        await self.feed.run(self._on_change, self._on_open)

    async def _on_open(self, resumed: bool) -> None:
        self.log.info("change stream open", resumed_from_token=resumed)
        self._backlog = True
        self._wake.set()

    async def _on_change(self, change: Mapping[str, Any]) -> None:
        doc = change.get("fullDocument")
        if not doc:
            return
        job = Job.from_doc(doc)
        if job.status is Status.PENDING:
            if self._free_slots():
                self._hints.append(job)
            else:
                self._backlog = True
            self._wake.set()
        elif job.status is Status.RUNNING and job.cancelRequested:
            if job.worker is None or job.worker.id != self.id:
                return
            run = self.runs.get(job.id)
            if run is not None:
                run.request_cancel()
            else:  # the event overtook our own claim's reply: apply it when the run starts
                self._early_cancels.add(job.id)

    def _free_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.gpu not in self._busy]

    def _slot_for(self, job: JobRecord) -> Slot | None:
        """The first free slot the job fits (its estimated peak memory within the slot's)."""
        for slot in self._free_slots():
            if memory.fits(job.memoryEstimate, slot.device, slot.memory_bytes):
                return slot
        return None

    def _free_capacity(self) -> dict[str, int | None]:
        """Per device kind, the most a free slot holds (None: unknown, anything fits)."""
        out: dict[str, int | None] = {}
        for slot in self._free_slots():
            held = slot.memory_bytes
            if slot.device in out:
                known = out[slot.device]
                out[slot.device] = None if known is None or held is None else max(known, held)
            else:
                out[slot.device] = held
        return out

    async def _claimer(self) -> None:
        failures = Failures(DATABASE, operation="claim")
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.stopping:
                return
            opened = self.feed.opens
            try:
                await self._fill_slots()
            except PyMongoError as exc:
                delay = failures.failed()  # no limit: a worker waits for its database
                self.log.warning("claiming failed; retrying", error=str(exc), in_s=round(delay, 2))
                self._backlog = True
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            failures.reset()
            if opened and not self.ready.is_set():
                self.ready.set()

    async def _fill_slots(self) -> None:
        self._full_sweeps.clear()  # a slot of theirs may have been given back since
        while self._free_slots() and not self.stopping:
            if self._backlog or not self._hints:
                if not self._backlog:
                    return
                if not await self._claim_from_queue():
                    return
                continue
            await self._claim_hint(self._next_hint())
        if not self._free_slots() and self._hints:
            self._hints.clear()  # they stay Pending in the queue: asked for when a slot frees
            self._backlog = True

    def _next_hint(self) -> JobRecord:
        """The hint a free slot takes first: highest priority, then the oldest."""
        best = min(self._hints, key=lambda j: (-j.priority, j.id))
        self._hints.remove(best)
        return best

    async def _claim_from_queue(self) -> bool:
        """One query of Pending jobs in claim order; True if it is worth asking again."""
        self._backlog = False
        self._hints.clear()  # the query sees them too, in the right order
        want = len(self._free_slots())
        limit = want + 8
        jobs = await self.store.jobs.pending(
            limit=limit, skip_sweeps=self._full_sweeps, fitting=self._free_capacity()
        )
        claimed = 0
        for job in jobs:
            if not self._free_slots() or self.stopping:
                self._backlog = True  # more may be waiting for the next free slot
                return False
            if await self._try_claim(job):
                claimed += 1
        if len(jobs) == limit:  # a full page: there may be more behind it
            self._backlog = True
            return True
        return False

    async def _claim_hint(self, job: JobRecord) -> None:
        if await self._try_claim(job):
            return
        # Stale version (e.g. released and re-queued since the event): read it once more.
        fresh = await self.store.jobs.pending_one(job.id)
        if fresh is not None:
            await self._try_claim(fresh)

    async def _try_claim(self, job: JobRecord) -> bool:
        if job.id in self.runs or job.sweepId in self._full_sweeps:
            return False
        slot = self._slot_for(job)
        if slot is None:  # too big for every free slot here: another worker's, or later
            return False
        info = WorkerRef(id=self.id, host=self.host, gpu=slot.gpu)
        attempt_id = new_attempt_id()
        capped = job.sweepId is not None and job.sweepMaxParallel is not None
        deadline = time.monotonic() + self.lease_s
        if capped:
            assert job.sweepId is not None
            if not await self.store.sweeps.reserve(
                job.sweepId, attempt_id, job.id, deadline=deadline
            ):
                self._full_sweeps.add(job.sweepId)
                return False
        try:
            claimed = await self.store.jobs.claim(
                job, info, self.lease_s, attempt_id=attempt_id, deadline=deadline
            )
        except BaseException:
            if capped:  # else the reconciliation gives it back after its grace
                await asyncio.shield(self._give_back_slot(job.sweepId, attempt_id))
            raise
        if claimed is None:
            self.metrics.claims.labels("lost").inc()
            if capped:
                await self._give_back_slot(job.sweepId, attempt_id)
            return False
        self.metrics.claims.labels("won").inc()
        self.metrics.runs_started.inc()
        if self.on_claim is not None:
            self.on_claim(claimed)
        self._start_run(slot, claimed)
        return True

    def _start_run(self, slot: Slot, job: JobRecord) -> None:
        run = JobRun(
            self.store, self.run_settings, slot, job, data_cache=self.data_cache,
            warm=self.warm.get(slot.gpu),
        )  # fmt: skip
        run.log.info("job claimed", attempt=job.attempt)
        self.runs[job.id] = run
        if job.id in self._early_cancels:
            self._early_cancels.discard(job.id)
            run.request_cancel()
        self._busy[slot.gpu] = job.id
        task = asyncio.create_task(self._run(run, job), name=f"run-{job.id}")
        self._run_tasks.add(task)
        task.add_done_callback(lambda t: self._run_ended(slot, run, t))
        # Our new lease may expire before the sweeper's next planned look.
        self._sweep_wake.set()

    async def _run(self, run: JobRun, job: JobRecord) -> None:
        try:
            await run.run()
        finally:
            if job.sweepId is not None and job.sweepMaxParallel is not None:
                await asyncio.shield(self._settle_slot(job))
        if job.sweepId is not None and run.outcome is not None and not self._stopping.is_set():
            # A place for its search's next trial (service.sweeps.controller); a stopping
            # worker leaves it to the next run's end or the API's tidier.
            settle = asyncio.create_task(controller.settle(self.store, job.sweepId))
            self._settles.add(settle)
            settle.add_done_callback(self._settles.discard)

    async def _settle_slot(self, job: JobRecord) -> None:
        """After a run: give its sweep slot back, unless the job is still Running under this
        attempt (its final write did not land: the slot goes back when its lease expires)."""
        assert job.sweepId is not None and job.attemptId is not None
        try:
            if await self.store.jobs.owns(job.id, job.attemptId):
                return
        except PyMongoError as exc:
            self.log.warning("could not settle a sweep slot; the sweeper will", error=str(exc))
            return
        await self._give_back_slot(job.sweepId, job.attemptId)

    async def _give_back_slot(self, sweep_id: ObjectId | None, attempt_id: str | None) -> None:
        """Free one slot of a sweep's maxParallel and tell every worker (its next job)."""
        if sweep_id is None or attempt_id is None:
            return
        try:
            if await self.store.sweeps.free(sweep_id, attempt_id):
                await self.store.jobs.announce_next(sweep_id)
        except PyMongoError as exc:  # the reconciliation gives it back after its grace
            self.log.warning("could not give a sweep slot back", sweep_id=str(sweep_id),
                             error=str(exc))  # fmt: skip

    def _run_ended(self, slot: Slot, run: JobRun, task: asyncio.Task[None]) -> None:
        self._run_tasks.discard(task)
        self.runs.pop(run.job_id, None)
        self._busy.pop(slot.gpu, None)
        if not task.cancelled() and task.exception() is not None:
            run.log.error("run ended with an error", error=repr(task.exception()))
        if run.proc is not None and run.proc.returncode is not None:
            self.metrics.exit_codes.labels(str(run.proc.returncode)).inc()
        self.metrics.runs_ended.labels(run.outcome.value if run.outcome else "unfinished").inc()
        self._backlog = True
        self._wake.set()

    # -- leases of every worker -----------------------------------------------------------

    async def _sweeper(self) -> None:
        """Re-queue jobs whose worker stopped renewing; sleeps until the soonest lease ends
        (or `sweep_max_interval_s`, for leases granted by others since the last look)."""
        while True:
            delay = self.sweep_max_interval_s
            try:
                for expired in await self.store.jobs.expire_leases():
                    self.metrics.leases_expired.labels(expired.action.value).inc()
                    self.log.warning(
                        "lease expired", job_id=str(expired.job_id), action=expired.action.value
                    )
                    await self._note_expiry(expired.job_id, expired.error)
                    await self._give_back_slot(expired.sweep_id, expired.attempt_id)
                    self._backlog = True
                    self._wake.set()
                await self._reconcile_slots()
                until = await self.store.jobs.seconds_to_next_expiry()
                if until is not None:
                    delay = min(delay, max(0.0, until) + _SWEEP_SLACK_S)
            except PyMongoError as exc:
                self.log.warning("lease sweep failed; retrying", error=str(exc))
                delay = min(delay, DATABASE.max_s)
            self._sweep_wake.clear()
            try:
                await asyncio.wait_for(self._sweep_wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _reconcile_slots(self) -> None:
        """Give back sweep slots taken by claims that never happened (a worker died between
        taking the slot and claiming) or by attempts that ended without giving theirs back.
        Only slots older than `slot_grace_s`: a younger one may belong to a claim in flight."""
        for sweep_id, attempt_id, job_id in await self.store.sweeps.reservations_older_than(
            self.slot_grace_s
        ):
            if not await self.store.jobs.owns(job_id, attempt_id):
                self.log.warning("giving back a stale sweep slot", sweep_id=str(sweep_id),
                                 job_id=str(job_id))  # fmt: skip
                await self._give_back_slot(sweep_id, attempt_id)

    async def _note_expiry(self, job_id: ObjectId, error: str) -> None:
        """Say in the job's own log why its attempt ended, for whoever reads it later."""
        try:
            await self.store.logs.append(job_id, "system", [f"{error} (seen by {self.id})"])
        except PyMongoError as exc:
            self.log.warning("could not log the lease expiry", error=str(exc))


def _with_trainer_importable(env: dict[str, str]) -> dict[str, str]:
    """Runs start in their own work dir, so `python -m trainer` must not depend on the
    worker's cwd: put the directory holding the `trainer` package on PYTHONPATH.

    `trainer` ships next to `service` (one distribution), so it is looked up there, not by
    import machinery that a same-named directory elsewhere on sys.path could fool.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / "trainer" / "__init__.py").is_file():
        return env  # installed some other way; the interpreter finds it on its own
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in parts:
        env["PYTHONPATH"] = os.pathsep.join([str(root), *parts])
    return env
