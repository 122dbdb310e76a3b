"""The OpenAPI 3.1 document, built from the route declarations (service.api.routing).

Request bodies, query parameters and responses are the very models that validate and
render, so the document cannot drift from the server. Every status a route can answer is
listed with its body, errors included: schemathesis and the API tests hold the server to it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api.routing import JSON, Param, Reply, Route

REF = "#/components/schemas/{model}"
API_VERSION = "1"

REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The client's X-Request-ID if it was sane, else a fresh id.",
        "schema": {"type": "string"},
    }
}
HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "The path of what was created.", "schema": {"type": "string"}},
    "WWW-Authenticate": {"schema": {"type": "string"}},
    "Content-Disposition": {"schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
    "Set-Cookie": {"schema": {"type": "string"}},
    "Accept-Ranges": {
        "description": "`bytes`: a `Range` header gets part of the file.",
        "schema": {"type": "string"},
    },
    "Content-Range": {
        "description": "Which bytes of how many (`bytes 0-99/1000`, `bytes */1000`).",
        "schema": {"type": "string"},
    },
    "ETag": {
        "description": "The stored file's id: `If-Range` takes it.",
        "schema": {"type": "string"},
    },
}
COMMON = {
    401: Reply(401, "Missing or wrong API token (only where the server requires one).", "Error",
               headers=("WWW-Authenticate",)),
    403: Reply(403, "Refused: the token's role does not allow it (code `forbidden`), or it came "
                    "from a page of another origin (`origin_refused`) or to a Host an open API "
                    "does not answer (`host_refused`).", "Error"),
    415: Reply(415, "A write must be `Content-Type: application/json`.", "Error"),
    429: Reply(429, "Too many submissions for this token (per minute, or Pending at once); "
                    "`Retry-After` says when to try again.", "Error", headers=("Retry-After",)),
    500: Reply(500, "Unexpected server error; the message carries the request id to look up.",
               "Error"),
    503: Reply(503, "MongoDB is not reachable; retry later.", "Error"),
}  # fmt: skip
PARSER_REFUSAL = (
    "A request line or header longer than 8190 bytes is refused by the HTTP parser in plain text."
)
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"sessionCookie": []}, {}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _schema_of(model: type[BaseModel] | str | None, content_type: str) -> dict[str, Any]:
    if isinstance(model, str):
        return _ref(model)
    if model is not None:
        return _ref(model.__name__)
    if content_type == "application/octet-stream":
        return {"type": "string", "contentMediaType": content_type}
    if content_type == JSON:
        return {"type": "object"}
    return {"type": "string"}


def _reply(reply: Reply) -> dict[str, Any]:
    headers = {**REQUEST_ID_HEADER, **{h: HEADERS[h] for h in reply.headers}}
    out: dict[str, Any] = {"description": reply.description, "headers": headers}
    if reply.status != 101:
        out["content"] = {
            reply.content_type: {"schema": _schema_of(reply.model, reply.content_type)}
        }
    return out


def _param(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required or param.where == "path",
        "description": param.description,
        "schema": param.schema,
    }


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        # An optional parameter is one left out, not one sent as null.
        variants = prop.get("anyOf", [])
        if {"type": "null"} in variants and len(variants) == 2:
            prop = {**next(v for v in variants if v != {"type": "null"}), **prop}
            del prop["anyOf"]
            prop.pop("default", None)
        description = prop.pop("description", "")
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        if prop.get("type") == "array":
            param |= {"style": "form", "explode": True}
        out.append(param)
    return out


def _operation(route: Route) -> dict[str, Any]:
    replies = {r.status: r for r in route.replies}
    for status in sorted(route.statuses - replies.keys()):
        replies[status] = COMMON[status]
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.operation_id,
        "security": SECURITY if route.protected else [],
    }
    if route.description:
        op["description"] = route.description
    params = [_param(p) for p in route.params]
    if route.query is not None:
        params += _query_params(route.query)
    if params:
        op["parameters"] = params
    if route.body is not None:
        content: dict[str, Any] = {"schema": _ref(route.body.__name__)}
        if route.body_examples:
            content["examples"] = route.body_examples
        op["requestBody"] = {"required": True, "content": {JSON: content}}
    elif route.content_types:
        op["requestBody"] = {
            "required": True,
            "content": {
                mime: {"schema": {"type": "string", "format": "binary"}}
                for mime in route.content_types
            },
        }
    responses = {str(s): _reply(replies[s]) for s in sorted(replies)}
    if route.method == "HEAD":  # the headers of the GET, never a body
        for response in responses.values():
            response.pop("content", None)
    # aiohttp's HTTP parser answers a request line or header past its limits itself, before
    # any route or middleware, in plain text (service.api.app, MAX_LINE_BYTES).
    bad = responses.setdefault(
        "400", {"description": "", "headers": dict(REQUEST_ID_HEADER), "content": {}}
    )
    bad["description"] = (bad["description"] + " " + PARSER_REFUSAL).strip()
    bad.setdefault("content", {})["text/plain"] = {"schema": {"type": "string"}}
    op["responses"] = dict(sorted(responses.items()))
    return op


def _models(routes: Sequence[Route], extra: Sequence[type[BaseModel]]) -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], Any]] = []
    seen: set[type[BaseModel]] = set()

    def add(model: type[BaseModel], mode: str) -> None:
        if model not in seen:
            seen.add(model)
            pairs.append((model, mode))

    for route in routes:
        if route.body is not None:
            add(route.body, "validation")
        for reply in route.replies:
            if isinstance(reply.model, type):
                add(reply.model, "serialization")
    for model in extra:
        add(model, "serialization")
    _, top = models_json_schema(pairs, ref_template=REF)
    return top.get("$defs", {})


@functools.cache
def _document(routes: tuple[Route, ...], extra: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.path)  # aiohttp's {name:regex}
        paths.setdefault(path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gatequeue",
            "version": API_VERSION,
            "description": (
                "Queue GPU training runs of differentiable logic gate networks. Every error "
                'has the shape {"error": {"code", "message", "fields"?}}.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": _models(routes, extra),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token; needed on protected routes when the server "
                    "has tokens configured.",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "gq_session",
                    "description": "The web page's session, from `POST /session`.",
                },
            },
        },
    }


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    """Built once per route set (service.api.routes.ROUTES for the API): it depends only on
    the code. Callers must not mutate it."""
    from service.api import schemas

    return _document(tuple(routes), (schemas.Error,))
