"""`Range: bytes=...` on file downloads (RFC 9110, section 14), so a large network or
checkpoint can be resumed: one range (`a-b`, `a-`, `-n`) gets 206, a range past the end
416, anything else (several ranges, a malformed header, an `If-Range` naming another
file) the whole file, as RFC 9110 lets a server do."""

from __future__ import annotations

import re

from service.api.errors import Unsatisfiable

# Twenty digits is past any file's length; longer is malformed (and int() of thousands of
# digits would cost time).
_RANGE = re.compile(r"bytes=(\d{0,20})-(\d{0,20})")


def requested_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) to send, or None for the whole file."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)  # the last `suffix` bytes
        if suffix == 0 or length == 0:
            raise Unsatisfiable
        return max(0, length - suffix), length - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid, so ignored
    if start >= length:
        raise Unsatisfiable
    return start, min(int(last), length - 1) if last else length - 1
