"""The run options of a job: fields of a request that say how to run it, not what to train.

They are stored at the top level of the job document (training options go under
`hyperparameters`), validated with the training options in one request model
(service.jobs.request), and become flags of `gatequeue submit`, fields of the web form and
fields of the job record (service.jobs.record) from these definitions alone
(docs/design.md, "How to add a run option or job field").
"""

from __future__ import annotations

from trainer.options import RUN_CONTROL_OPTIONS, Option

# Characters that show nothing or change how the text around them shows, as a regex class
# (docs/security.md, "Hostile input"): every format character (Unicode category Cf: the
# bidirectional overrides, isolates and marks, zero-width spaces and joiners, U+FEFF, the
# tag characters), the line and paragraph separators and the Hangul fillers, which render
# as blanks. The API refuses them in names (`PRINTABLE`); the CLI escapes them in whatever
# stored text it prints (service.cli.terminal), older names included.
INVISIBLE = (
    "\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890-\\u0891\\u08e2\\u115f\\u1160"
    "\\u180e\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\u3164\\ufeff"
    "\\uffa0\\ufff9-\\ufffb\\U000110bd\\U000110cd\\U00013430-\\U00013438"
    "\\U0001bca0-\\U0001bca3\\U0001d173-\\U0001d17a\\U000e0001\\U000e0020-\\U000e007f"
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
)  # fmt: skip

RUN_NAMES: tuple[str, ...] = tuple(o.name for o in RUN_OPTIONS)
