"""The trainer's `CIRCUIT` stdout line: its prefix, its writer and its parser, defined once.

A successful `python -m trainer` run that built its circuit prints, before its SUMMARY,

    CIRCUIT {"gates":1000,"gatesLive":544,"depth":2,"imagesPerS":15234567.8,"verified":true,
             "disagreements":0,"gateHistogram":{"FALSE":3,"A AND B":71,...}}

(one line): the prefix `CIRCUIT ` and a compact JSON object with exactly the keys of
`trainer.circuit.build_circuit`'s result, `RESULT_KEYS`, in that order. The worker turns
the line into the job's `circuit` field with `parse_circuit_line`; a run without the line
(`--no-circuit`, no C compiler) has no circuit.

Standard library only, no numpy or torch: the worker imports it for every output line.
"""

from __future__ import annotations

import json
import math
from typing import Any

from trainer.circuit.ops import GATE_NAMES

CIRCUIT_PREFIX = "CIRCUIT "
RESULT_KEYS: tuple[str, ...] = (
    "gates",
    "gatesLive",
    "depth",
    "imagesPerS",
    "verified",
    "disagreements",
    "gateHistogram",
)
_COUNTS = ("gates", "gatesLive", "depth", "disagreements")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_result(result: Any) -> list[str]:
    """What is wrong with a circuit result (empty when it is valid)."""
    if not isinstance(result, dict):
        return [f"not an object but {type(result).__name__}"]
    problems = []
    keys = list(result)
    if keys != list(RESULT_KEYS):
        missing = [k for k in RESULT_KEYS if k not in result]
        extra = [k for k in keys if k not in RESULT_KEYS]
        problems.append(
            f"keys must be {', '.join(RESULT_KEYS)} in that order"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
        )
    for key in _COUNTS:
        if key in result and not _is_count(result[key]):
            problems.append(f"{key} must be an integer >= 0, got {result[key]!r}")
    speed = result.get("imagesPerS")
    if "imagesPerS" in result and not (
        isinstance(speed, int | float)
        and not isinstance(speed, bool)
        and math.isfinite(speed)
        and speed >= 0
    ):
        problems.append(f"imagesPerS must be a finite number >= 0, got {speed!r}")
    if "verified" in result and not isinstance(result["verified"], bool):
        problems.append(f"verified must be true or false, got {result['verified']!r}")
    elif _is_count(result.get("disagreements")) and result.get("verified") != (
        result["disagreements"] == 0
    ):
        problems.append("verified must be true exactly when disagreements is 0")
    if _is_count(result.get("gatesLive")) and _is_count(result.get("gates")):
        if result["gatesLive"] > result["gates"]:
            problems.append("gatesLive exceeds gates")
    histogram = result.get("gateHistogram")
    if "gateHistogram" in result:
        if not isinstance(histogram, dict) or list(histogram) != list(GATE_NAMES):
            problems.append("gateHistogram must map each of the 16 gate names, in id order")
        elif not all(_is_count(v) for v in histogram.values()):
            problems.append("gateHistogram counts must be integers >= 0")
        elif _is_count(result.get("gates")) and sum(histogram.values()) != result["gates"]:
            problems.append("gateHistogram counts must add up to gates")
    return problems


def format_circuit_line(result: dict[str, Any]) -> str:
    """`CIRCUIT {json}` for a build_circuit result (no newline); ValueError if invalid."""
    problems = check_result(result)
    if problems:
        raise ValueError("not a circuit result: " + "; ".join(problems))
    return CIRCUIT_PREFIX + json.dumps(result, separators=(",", ":"), allow_nan=False)


def parse_circuit_line(line: str) -> dict[str, Any] | None:
    """The result a CIRCUIT line carries, or None for any other line or a malformed one."""
    text = line.rstrip("\r\n")
    if not text.startswith(CIRCUIT_PREFIX):
        return None
    try:
        value = json.loads(text[len(CIRCUIT_PREFIX) :], parse_constant=_no_constant)
    except ValueError:  # JSONDecodeError, and NaN/Infinity
        return None
    if check_result(value):
        return None
    return dict(value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
