"""Every JSON request body goes through `parse_body`: one parse, the same refusals for all
routes (docs/api.md, "Request bodies").

- malformed JSON, a body that is not an object, duplicate keys (which one would count is a
  guess): 400;
- nesting deeper than `MAX_JSON_DEPTH` (objects and arrays): 400, decided by a scan of the
  raw bytes before any structure is built. No request needs more than five levels; a deep
  value would otherwise reach the store and break every view that echoes it (issue 26: a
  choice nested 400 deep made `GET /sweeps` a 500 for everyone);
- then the route's pydantic model: 422 naming each bad field.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from service.api.errors import ApiError, DuplicateKey, validation_error
from service.jobs.request import field_errors

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 32  # objects and arrays inside each other, the body itself counted

# A JSON string (its escapes included); what is left outside strings holds every bracket.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def nests_deeper(body: bytes, limit: int) -> bool:
    """Whether the arrays and objects of `body` nest deeper than `limit`, without parsing
    it: strings are dropped, and the running sum of the brackets left (+1 opening, -1
    closing) is its depth. Every step runs in C; a 64 KiB body of brackets takes ~10 ms, an
    ordinary one well under 1 ms. Malformed JSON may answer either way: the parse refuses
    it next."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    if len(brackets) <= 2 * limit:
        return False
    return max(accumulate(map(_STEP.__getitem__, brackets))) > limit


def parse_body(model: type[M], body: bytes) -> M:
    """A JSON body through `model`: 400 for what is not a JSON object (too deep, duplicate
    keys included), 422 naming each bad field."""
    if nests_deeper(body, MAX_JSON_DEPTH):
        raise ApiError(
            400, "invalid_json", f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicates)
    except DuplicateKey as exc:
        raise ApiError(400, "invalid_json", f"duplicate key {exc.key!r} in the JSON body") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise body_error(exc) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def body_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    for err in errors:
        if err["type"] == "json_invalid":
            return ApiError(400, "invalid_json", f"malformed JSON: {err['msg']}")
    if any(err["loc"] == () and err["type"] == "model_type" for err in errors):
        return ApiError(400, "invalid_body", "the body must be a JSON object")
    return validation_error(field_errors(exc))
