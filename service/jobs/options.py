"""The run options of a job: fields of a request that say how to run it, not what to train.

They are stored at the top level of the job document (training options go under
`hyperparameters`), validated with the training options in one request model
(service.jobs.request), and become flags of `gatequeue submit`, fields of the web form and
fields of the job record (service.jobs.record) from these definitions alone
(docs/design.md, "How to add a run option or job field").
"""

from __future__ import annotations

from trainer.options import RUN_CONTROL_OPTIONS, Option

# Text people read in terminals and pages: no control characters (C0, DEL, C1) and no
# bidirectional overrides, which could rewrite what a terminal shows (docs/security.md).
PRINTABLE = "^[^\\x00-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069]*$"

RUN_OPTIONS: tuple[Option, ...] = (
    Option(
        "name", str, None, "a label for people", "Name",
        nullable=True, max_length=200, advanced=True, pattern=PRINTABLE,
        pattern_help="must not contain control characters or bidirectional overrides",
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
