"""The slots of the live workers, as the API's memory admission sees them: read from
`workers` at most every few seconds, not once per submission."""

from __future__ import annotations

import time
from collections.abc import Callable

from service.coalesce import Coalesced
from service.store.workers import WorkerStore

REFRESH_S = 5.0


class SlotCache:
    def __init__(
        self,
        workers: WorkerStore,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._workers = workers
        self._refresh_s = refresh_s
        self._clock = clock
        self._slots: list[tuple[str, int | None]] = []
        self._at: float | None = None
        self._refresh = Coalesced(self._read)

    async def slots(self) -> list[tuple[str, int | None]]:
        """(device, bytes it holds or None) of every slot of every live worker."""
        if self._at is None or self._clock() - self._at >= self._refresh_s:
            await self._refresh()  # one read for all the submissions that find it stale
        return self._slots

    async def _read(self) -> None:
        at = self._clock()
        live = await self._workers.live_slots()
        self._slots = [(s.device, s.memory_bytes) for s in live]
        self._at = at

    def forget(self) -> None:
        """Read again next time (tests, after starting a worker)."""
        self._at = None
