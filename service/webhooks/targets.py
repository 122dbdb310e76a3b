"""Which URLs a webhook may call: no server-side request forgery (docs/webhooks.md).

A URL's host must match a pattern of `GATEQUEUE_WEBHOOK_ALLOW` (`hooks.slack.com`,
`*.example.com`, `*`); an empty list means webhooks are off. Every address the host
resolves to must be a public one, unless the list names it (or its network) explicitly:
loopback, link-local, private, multicast, reserved and unspecified addresses are refused
otherwise (`*` never admits them). The check runs when a job or sweep is submitted and again
for each connection a delivery makes: the sender's resolver (`CheckedResolver`) answers only
checked addresses, so the address aiohttp connects to is the one checked (a name that
resolves elsewhere between the two checks, DNS rebinding, is refused then), and redirects
are never followed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from service.jobs.notify import redact
from service.webhooks.errors import WebhookRefused

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(pattern: str) -> IpNetwork | None:
    try:
        return ipaddress.ip_network(pattern.strip("[]"), strict=False)
    except ValueError:
        return None


def _kind(address: IpAddress) -> str | None:
    """What makes an address one a webhook may not reach by default (None: public)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d
            return _kind(address.ipv4_mapped)
        # An IPv4 address a 6to4 or Teredo address carries may not be reached through it.
        tunnelled = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if tunnelled is not None and (kind := _kind(tunnelled)) is not None:
            return kind
    for kind, flag in (
        ("loopback", address.is_loopback), ("link-local", address.is_link_local),
        ("private", address.is_private), ("multicast", address.is_multicast),
        ("reserved", address.is_reserved), ("unspecified", address.is_unspecified),
    ):  # fmt: skip
        if flag:
            return kind
    return None if address.is_global else "non-public"


@dataclass(frozen=True)
class AllowList:
    """`GATEQUEUE_WEBHOOK_ALLOW`, split into host patterns and explicit networks."""

    hosts: tuple[str, ...]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def parse(cls, patterns: tuple[str, ...]) -> AllowList:
        hosts, networks = [], []
        for pattern in patterns:
            network = _network(pattern)
            if network is None:
                hosts.append(pattern.lower())
            else:
                networks.append(network)
        return cls(tuple(hosts), tuple(networks))

    @property
    def on(self) -> bool:
        return bool(self.hosts or self.networks)

    def named(self, address: IpAddress) -> bool:
        return any(address in network for network in self.networks)

    def host_allowed(self, host: str) -> bool:
        """A name matching a pattern; an address literal matching a pattern or named."""
        host = host.lower().rstrip(".")
        literal = _network(host)
        if literal is not None and literal.num_addresses == 1:
            if self.named(literal.network_address):
                return True
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts)

    def check_address(self, host: str, address: IpAddress) -> None:
        kind = _kind(address)
        if kind is not None and not self.named(address):
            raise WebhookRefused(
                f"{host} resolves to {address}, a {kind} address: webhooks may reach it only "
                f"where GATEQUEUE_WEBHOOK_ALLOW names it (e.g. {address})"
            )

    def check_host(self, url: str) -> str:
        """The URL's host, if the allow-list admits it (no DNS yet)."""
        if not self.on:
            raise WebhookRefused(
                "webhooks are off on this server (GATEQUEUE_WEBHOOK_ALLOW is empty)"
            )
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            raise WebhookRefused(f"{redact(url)!r} is not an http(s) URL")
        try:
            port = parts.port
        except ValueError:  # not a number, above 65535, or two of them
            port = 0
        if port == 0:
            raise WebhookRefused(f"{redact(url)!r} has no valid port (1 to 65535)")
        if not self.host_allowed(host):
            raise WebhookRefused(
                f"host {host!r} is not allowed for webhooks (GATEQUEUE_WEBHOOK_ALLOW: "
                f"{', '.join(self.hosts) or 'addresses only'})"
            )
        return host


async def resolve(host: str, port: int = 443) -> list[IpAddress]:
    """Every address of `host`, without blocking the loop."""
    literal = _network(host)
    if literal is not None and literal.num_addresses == 1:
        return [literal.network_address]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookRefused(f"{host} cannot be resolved: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def check_url(allow: AllowList, url: str) -> list[IpAddress]:
    """Raise WebhookRefused unless `url` may be called now: its host allowed, and every
    address it resolves to public or named in the allow-list."""
    host = allow.check_host(url)
    addresses = await resolve(host)
    if not addresses:
        raise WebhookRefused(f"{host} has no address")
    for address in addresses:
        allow.check_address(host, address)
    return addresses


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver for deliveries: a host outside the allow-list, or one with an
    address not allowed, resolves to nothing (the delivery fails, and is retried)."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not self.allow.host_allowed(host):
            raise OSError(f"webhook host {host!r} is not allowed")
        found = await self._inner.resolve(host, port, family)
        for result in found:
            self.allow.check_address(host, ipaddress.ip_address(result["host"]))
        return found

    async def close(self) -> None:
        await self._inner.close()
