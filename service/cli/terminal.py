"""Stored text made safe for a terminal (docs/security.md, "Hostile input").

Job names, errors, hyperparameter values and log lines are written by others (a user of the
queue, a trainer): printed raw, an ESC sequence can recolour, retitle or rewrite a terminal,
and a bidirectional override can make text read backwards. They are shown escaped (`\\x1b`,
`\\u202e`) instead; a tab, and a newline where the text is multi-line, stay as they are.
"""

from __future__ import annotations

import re

from service.jobs.options import INVISIBLE

_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f" + INVISIBLE + "]")
_UNSAFE_KEEP_NEWLINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f" + INVISIBLE + "]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, *, multiline: bool = False) -> str:
    pattern = _UNSAFE_KEEP_NEWLINES if multiline else _UNSAFE
    return pattern.sub(_escaped, text)


def markup_safe(text: str, *, multiline: bool = False) -> str:
    """`printable`, and rich's markup brackets escaped."""
    return printable(text, multiline=multiline).replace("[", r"\[")
