"""What the `gatequeue` commands raise to end with a message and an exit status: one module
for the CLI's own exceptions."""

from __future__ import annotations


class PortInUse(Exception):
    """The API's address is taken, most often by another gatequeue: nothing is started."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} is in use (another gatequeue?): stop that server or "
            f"choose another port with --port (make run PORT=N)"
        )


class SweepFlagError(ValueError):
    """A --grid, --run or --space that cannot be read; the message says which and why."""
