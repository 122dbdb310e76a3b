"""The webhook sender of one API replica (docs/webhooks.md).

Every replica runs one, and each event is still sent by one of them:

1. A pass finds the jobs that reached a final status and whose hooks were not looked at
   (`notifiedAt` unset; finished within `CATCH_UP`, so a job that ended while no API ran
   is still told of when one starts), and records one delivery per (event, target): the
   job's own `notify` and every server hook of `GATEQUEUE_WEBHOOKS` that wants the event;
   the job's sweep too once its last run ended. The delivery's key is the (event, target)
   pair: the replica whose insert creates it sends it; another replica's insert fails on
   the key and it does nothing (service.store.deliveries). The job is marked after, so a
   crash in between only repeats inserts that fail on their keys.
2. The sender tries, and after a failure (no answer, or not a 2xx) waits the next delay of
   `WEBHOOK` (service.retry) and tries again, up to `MAX_ATTEMPTS` tries; each try renews
   its hold on the delivery. A replica that stopped or crashed mid-way leaves the delivery
   pending; once its hold lapses a pass of any replica claims it and goes on.

Passes run at start, whenever the jobs change stream shows a job reaching a final status
(`observe`), and every `EVERY_S` anyway. A delivery is at least once: a try whose answer
was lost is sent again, with the same `deliveryId`, which receivers use to drop the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import structlog
from bson import ObjectId

from service.jobs.notify import Notify, redact
from service.jobs.record import JobRecord, iso
from service.jobs.status import Status
from service.retry import Backoff, Failures
from service.store import Store
from service.store.deliveries import DELIVERED, FAILED, Delivery
from service.webhooks import payload
from service.webhooks.errors import DeliveryFailed, WebhookRefused
from service.webhooks.targets import AllowList, CheckedResolver, check_url

log = structlog.get_logger(__name__)

# Between tries of one delivery: 1 s, 2 s, 4 s, ... up to 5 minutes (jittered).
WEBHOOK = Backoff(initial_s=1.0, max_s=300.0)
MAX_ATTEMPTS = 8  # about 10 minutes of tries in all
TIMEOUT_S = 10.0  # one try: connect, send, read the status
LEASE_S = 60.0  # a sender's hold beyond its next try
EVERY_S = 15.0  # a pass at least this often (a missed wake-up, a lapsed hold)
CATCH_UP = timedelta(days=7)  # jobs that ended longer ago are never told of
BATCH = 100  # jobs per pass step
MAX_SENDING = 16  # deliveries in flight per replica
FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

Outcome = Callable[[str], None]  # "delivered" | "retried" | "failed": metrics


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _key(kind: str, subject: ObjectId, event: str, source: str, url: str) -> str:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{kind}:{subject}:{event}:{source}:{digest}"


def job_summary(job: JobRecord) -> dict[str, Any]:
    """What a receiver is told of a job: enough to act on without calling the API."""

    def when(value: datetime | None) -> str | None:
        return None if value is None else iso(value)

    return {
        "id": str(job.id), "name": getattr(job, "name", None), "status": job.status.value,
        "submittedBy": job.submittedBy, "attempt": job.attempt, "exitCode": job.exitCode,
        "error": job.error, "createdAt": when(job.createdAt), "startedAt": when(job.startedAt),
        "finishedAt": when(job.finishedAt),
        "result": None if job.result is None else job.result.model_dump(mode="json"),
        "sweepId": None if job.sweepId is None else str(job.sweepId),
    }  # fmt: skip


class Dispatcher:
    def __init__(
        self,
        store: Store,
        *,
        allow: AllowList,
        hooks: tuple[Notify, ...] = (),
        secret: str | None = None,
        base_url: str | None = None,
        holder: str | None = None,
        policy: Backoff = WEBHOOK,
        max_attempts: int = MAX_ATTEMPTS,
        on_outcome: Outcome | None = None,
    ) -> None:
        self.store = store
        self.allow = allow
        self.hooks = hooks
        self.secret = secret
        self.base_url = base_url  # the page's address, for links (set by `serve`)
        self.holder = holder or holder_name()
        self.policy = policy
        self.max_attempts = max_attempts
        self._on_outcome = on_outcome
        self._wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_SENDING)
        self._http: aiohttp.ClientSession | None = None

    # -- events --------------------------------------------------------------------------

    def observe(self, change: Mapping[str, Any]) -> None:
        """A jobs change-stream event: a job that reached a final status wakes a pass."""
        fields = (change.get("updateDescription") or {}).get("updatedFields") or {}
        if fields.get("status") in {s.value for s in FINAL}:
            self._wake.set()

    async def forever(self) -> None:
        """Pass after pass until cancelled; then what this replica holds is let go."""
        connector = aiohttp.TCPConnector(resolver=CheckedResolver(self.allow), limit=MAX_SENDING)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        self._http = aiohttp.ClientSession(connector=connector, timeout=timeout)
        try:
            while True:
                self._wake.clear()
                try:
                    await self.run_once()
                except Exception as exc:  # MongoDB unreachable: the next pass tries again
                    log.warning("webhook pass failed; trying again later", error=str(exc))
                try:
                    await asyncio.wait_for(self._wake.wait(), EVERY_S)
                except TimeoutError:
                    pass
        finally:
            tasks = list(self._sending)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._http.close()
            self._http = None

    async def run_once(self) -> None:
        """Record the deliveries of the jobs (and sweeps) that ended; send what is due."""
        horizon = datetime.now(UTC) - CATCH_UP
        while jobs := await self.store.jobs.to_notify(FINAL, horizon, BATCH):
            for job in jobs:
                await self._record_job(job)
            await self.store.jobs.mark_notified([job.id for job in jobs])
            if len(jobs) < BATCH:
                break
        while len(self._sending) < MAX_SENDING:
            delivery = await self.store.deliveries.claim_due(self.holder, LEASE_S)
            if delivery is None:
                break
            self._start(delivery)

    async def idle(self) -> None:
        """Until every send this replica started has ended (tests, shutdown)."""
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    # -- recording -----------------------------------------------------------------------

    def _targets(self, own: Notify | None, event: str) -> list[tuple[str, str]]:
        targets = [("notify", own.url)] if own is not None and own.wants(event) else []
        return targets + [("server", hook.url) for hook in self.hooks if hook.wants(event)]

    async def _record(
        self,
        kind: str,
        subject: ObjectId,
        event: str,
        own: Notify | None,
        summary: Callable[[], Any],
    ) -> None:
        targets = self._targets(own, event)
        if not targets:
            return
        described = await summary()
        link = payload.link(self.base_url, kind, str(subject))
        for source, url in targets:
            delivery_id = uuid.uuid4().hex
            fmt = payload.format_of(url)
            delivery = Delivery(
                key=_key(kind, subject, event, source, url), deliveryId=delivery_id,
                kind=kind, subjectId=subject, event=event, url=url, source=source, format=fmt,
                body=payload.body(fmt, event=event, kind=kind, summary=described, url=link,
                                  delivery_id=delivery_id),
            )  # fmt: skip
            if await self.store.deliveries.create(delivery, self.holder, LEASE_S):
                self._start(delivery)

    async def _record_job(self, job: JobRecord) -> None:
        event = job.status.value.lower()

        async def summary() -> dict[str, Any]:
            return job_summary(job)

        await self._record("job", job.id, event, getattr(job, "notify", None), summary)
        if job.sweepId is not None:
            await self._record_sweep(job.sweepId)

    async def _record_sweep(self, sweep_id: ObjectId) -> None:
        """The sweep's event, once none of its runs is Pending or Running and a search has
        made every trial's runs (between a trial's end and its successor's insert, a random
        or TPE sweep has no unfinished run, but it has not ended)."""
        sweep = await self.store.sweeps.get(sweep_id)
        if sweep is None or sweep.state.value != "ready":
            return
        counts = await self.store.jobs.sweep_counts(sweep_id)
        if counts[Status.PENDING.value] or counts[Status.RUNNING.value] or sweep.unmade_runs():
            return
        if sweep.cancelRequested:
            event = "cancelled"
        elif counts[Status.FAILED.value]:
            event = "failed"
        else:
            event = "succeeded"

        async def summary() -> dict[str, Any]:
            return {
                "id": str(sweep.id), "name": sweep.name, "status": event,
                "submittedBy": sweep.submittedBy, "total": sweep.total, "counts": counts,
                "metric": sweep.metric,
            }  # fmt: skip

        await self._record("sweep", sweep_id, event, sweep.notify, summary)

    # -- sending -------------------------------------------------------------------------

    def _start(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._send(delivery), name=f"webhook {delivery.key}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _outcome(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def _send(self, delivery: Delivery) -> None:
        deliveries = self.store.deliveries
        failures = Failures(self.policy, operation="webhook_delivery")
        failures.resume(delivery.attempts)  # tries an earlier holder made: later delays
        answered: int | None = None  # the 2xx of the try that got one
        try:
            async with self._slots:
                while True:
                    # Waiting for a slot or between tries may outlast the hold: another
                    # replica may have claimed the delivery since. Only its holder sends.
                    if not await deliveries.renew(delivery.key, self.holder, LEASE_S):
                        return
                    try:
                        status = await self._try(delivery)
                    except DeliveryFailed as exc:
                        delay = failures.failed()
                        tries = await deliveries.failed_try(
                            delivery.key, self.holder, error=str(exc), status=exc.status,
                            retry_in_s=delay, lease_s=LEASE_S,
                        )  # fmt: skip
                        if tries is None:  # no longer ours (deleted with its job)
                            return
                        if tries >= self.max_attempts:
                            await deliveries.finish(delivery.key, self.holder, FAILED)
                            self._outcome("failed")
                            log.warning("webhook delivery failed", key=delivery.key,
                                        tries=tries, error=str(exc))  # fmt: skip
                            return
                        self._outcome("retried")
                        await asyncio.sleep(delay)
                        continue
                    answered = status
                    await deliveries.finish(delivery.key, self.holder, DELIVERED, status=status)
                    self._outcome("delivered")
                    return
        except asyncio.CancelledError:
            # Stopping: a delivery the receiver took is recorded as such (not sent again);
            # any other, another replica (or this one, restarted) takes over at once.
            ending = (
                deliveries.finish(delivery.key, self.holder, DELIVERED, status=answered)
                if answered is not None
                else deliveries.release(delivery.key, self.holder)
            )
            with contextlib.suppress(Exception):
                await asyncio.shield(ending)
            raise
        except Exception as exc:  # MongoDB unreachable: the hold lapses and a pass resumes
            log.warning("webhook delivery interrupted", key=delivery.key, error=str(exc))

    async def _try(self, delivery: Delivery) -> int:
        """One POST; its status when 2xx, else DeliveryFailed. Redirects are not followed:
        a redirect could lead anywhere the allow-list forbids."""
        assert self._http is not None
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "gatequeue-webhook",
            payload.DELIVERY_HEADER: delivery.deliveryId,
            payload.EVENT_HEADER: f"{delivery.kind}.{delivery.event}",
        }
        if self.secret:
            headers[payload.SIGNATURE_HEADER] = payload.signature(self.secret, delivery.body)
        try:
            # The resolver checks host names as aiohttp connects, but aiohttp never asks it
            # about an address literal (`127.0.0.1`, `127.1`): check every URL here too,
            # against the allow-list as it is now (server hooks were never submitted).
            await check_url(self.allow, delivery.url)
            async with self._http.post(
                delivery.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return resp.status
                raise DeliveryFailed(f"answered {resp.status}", resp.status)
        except DeliveryFailed:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, WebhookRefused) as exc:
            # Recorded where every reader sees it: never the URL's path (a Slack secret).
            error = f"{type(exc).__name__}: {exc}".replace(delivery.url, redact(delivery.url))
            raise DeliveryFailed(error) from None
