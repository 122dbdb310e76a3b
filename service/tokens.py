"""Named API tokens with roles, kept as hashes in `GATEQUEUE_TOKENS_FILE` (docs/security.md).

The file is JSON, written by `gatequeue token add|rm` (or any tool: a Kubernetes Secret can
hold it) and read by the API:

    {"version": 1, "tokens": [{"name": "alice", "role": "submit",
                               "hash": "sha256:<hex>", "createdAt": "..."}]}

Only the SHA-256 of a token is stored: tokens are 256 random bits, so a fast hash is as good
as a slow one against guessing, and a leaked file grants nothing. A token is shown once,
when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

from service.errors import TokenFileError

TOKEN_PREFIX = "gq_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
FILE_VERSION = 1
ADMIN_FROM_ENV = "admin"  # the name GATEQUEUE_API_TOKEN's holder goes by


class Role(IntEnum):
    """Ordered: each role can do what the ones below it can."""

    READ = 1  # list, inspect, follow logs
    SUBMIT = 2  # also submit, and cancel its own jobs
    ADMIN = 3  # also cancel anyone's jobs

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"role {text!r}: expected read, submit or admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: Role
    hash: str
    created_at: str = ""


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def find(entries: list[TokenEntry], token: str) -> TokenEntry | None:
    """The entry of `token`, compared with every entry in constant time."""
    digest = hash_token(token)
    found = None
    for entry in entries:
        if hmac.compare_digest(entry.hash, digest):
            found = entry
    return found


def read(path: Path) -> list[TokenEntry]:
    """The file's entries; a missing file has none."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise TokenFileError(f"{path}: not a readable tokens file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
        raise TokenFileError(f"{path}: expected a version {FILE_VERSION} tokens file")
    entries = []
    for i, raw in enumerate(doc.get("tokens", [])):
        try:
            name, role, digest = raw["name"], Role.parse(raw["role"]), raw["hash"]
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenFileError(f"{path}: entry {i} is not a token entry ({exc})") from None
        if not NAME_RE.fullmatch(name) or not str(digest).startswith("sha256:"):
            raise TokenFileError(f"{path}: entry {i} has a bad name or hash")
        entries.append(TokenEntry(name, role, digest, str(raw.get("createdAt", ""))))
    return entries


def write(path: Path, entries: list[TokenEntry]) -> None:
    """Atomically, readable by its owner only."""
    doc = {
        "version": FILE_VERSION,
        "tokens": [
            {"name": e.name, "role": e.role.label, "hash": e.hash, "createdAt": e.created_at}
            for e in entries
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokens.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def add(path: Path, name: str, role: Role) -> str:
    """A new token for `name` (replacing any it had); returns the token, stored hashed."""
    if not NAME_RE.fullmatch(name):
        raise TokenFileError(
            f"name {name!r}: 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a "
            "letter or digit"
        )
    token = new_token()
    entries = [e for e in read(path) if e.name != name]
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    entries.append(TokenEntry(name, role, hash_token(token), created))
    write(path, entries)
    return token


def remove(path: Path, name: str) -> bool:
    entries = read(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        return False
    write(path, kept)
    return True
