"""The asyncio client of the gatequeue API (service.client.api):

async with GateQueueClient("http://127.0.0.1:8080") as gq:
    job = await gq.submit(gateOptimizer="sparsemax_noise", gates=3332, epochs=5)
"""

from service.client.api import (
    DEFAULT_API,
    FINAL_STATUSES,
    GateQueueClient,
    GateQueueConnectionError,
    GateQueueError,
    Job,
    JobPage,
    LogEnd,
    LogLine,
    LogStream,
    Sweep,
    SweepPage,
)

__all__ = [
    "DEFAULT_API",
    "FINAL_STATUSES",
    "GateQueueClient",
    "GateQueueConnectionError",
    "GateQueueError",
    "Job",
    "JobPage",
    "LogEnd",
    "LogLine",
    "LogStream",
    "Sweep",
    "SweepPage",
]
