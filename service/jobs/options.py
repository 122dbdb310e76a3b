"""The run options of a job: fields of a request that say how to run it, not what to train.

They are stored at the top level of the job document (training options go under
`hyperparameters`), validated with the training options in one request model
(service.jobs.request), and become flags of `gatequeue submit`, fields of the web form and
fields of the job record (service.jobs.record) from these definitions alone
(docs/design.md, "How to add a run option or job field").
"""

from __future__ import annotations

from service.jobs.notify import Notify
from trainer.options import RUN_CONTROL_OPTIONS, Option

# Characters that show nothing or change how the text around them shows (docs/security.md,
# "Hostile input"): every format character (Unicode category Cf: the bidirectional
# overrides, isolates and marks, zero-width spaces and joiners, U+FEFF, the tag characters),
# the line and paragraph separators and the Hangul fillers, which render as blanks. The API
# refuses them in names (`PRINTABLE`); the CLI escapes them in whatever stored text it
# prints (service.cli.terminal), older names included. As (first, last) code points:
INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x180E, 0x180E), (0x200B, 0x200F),
    (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0x3164, 0x3164), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
    (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)  # fmt: skip


def _in_class(code: int) -> str:
    """A code point inside a regex class that Python's re, pydantic's Rust regex and an
    OpenAPI reader's ECMAScript regex all read alike: `\\uXXXX` in the BMP; above it the
    character itself, as no escape is common to all three."""
    return f"\\u{code:04x}" if code < 0x10000 else chr(code)


# The same, as the inside of a regex character class.
INVISIBLE = "".join(
    _in_class(a) if a == b else f"{_in_class(a)}-{_in_class(b)}" for a, b in INVISIBLE_RANGES
)
# Text people read in terminals and pages: no control characters (C0, DEL, C1) and nothing
# invisible, which could hide or rewrite what a terminal shows.
PRINTABLE = "^[^\\x00-\\x1f\\x7f-\\x9f" + INVISIBLE + "]*$"

RUN_OPTIONS: tuple[Option, ...] = (
    Option(
        "name", str, None, "a label for people", "Name",
        nullable=True, max_length=200, advanced=True, pattern=PRINTABLE,
        pattern_help="must not contain control, format (bidirectional, zero-width) or invisible "
        "characters",
    ),
    Option(
        "maxAttempts", int, 3, "runs allowed before a lost job is failed", "Max attempts",
        ge=1, le=20, advanced=True,
    ),
    Option(
        "priority", int, 0,
        "a free slot takes the highest priority first, then the oldest job", "Priority",
        ge=-100, le=100, advanced=True,
    ),
    *RUN_CONTROL_OPTIONS,
    Option(
        "notify", Notify, None,
        "a webhook: {url, events} (finished, succeeded, failed, cancelled); a URL alone is "
        "every end (docs/webhooks.md)", "Notify",
        nullable=True, advanced=True,
    ),
)  # fmt: skip

RUN_NAMES: tuple[str, ...] = tuple(o.name for o in RUN_OPTIONS)
