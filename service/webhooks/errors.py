"""What the webhooks package raises."""

from __future__ import annotations


class WebhookRefused(Exception):
    """A URL the server will not call: webhooks off, a host outside the allow-list, or an
    address that is loopback, link-local or private and not allowed explicitly."""


class DeliveryFailed(Exception):
    """One try of a delivery did not get a 2xx: retried with backoff up to a bound."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
