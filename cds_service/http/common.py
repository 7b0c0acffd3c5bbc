"""Shared HTTP helpers: JSON bodies in and out, and OperationOutcome error responses."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Request, Response, current_app

from ..errors import ServiceError
from ..hook_request import raise_for_depth
from ..settings import Settings


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)


def error_response(error: ServiceError) -> Response:
    if error.status == 401:
        # 401 says nothing about why (CDS Hooks best practice); the reason is logged server-side.
        return Response(b"", status=401, headers={"WWW-Authenticate": "Bearer", **error.headers})
    return Response(
        orjson.dumps(error.operation_outcome()),
        status=error.status,
        mimetype="application/fhir+json",
        headers=error.headers,
    )


def settings() -> Settings:
    return current_app.extensions["cds_settings"]


def read_json_body(request: Request) -> Any:
    """The request body as parsed JSON: 415 for a non-JSON content type, 413 too large, 400 malformed."""
    mimetype = (request.mimetype or "").lower()
    if not (mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))):
        raise ServiceError.single(
            415, "The request body must be JSON (Content-Type: application/json)", code="not-supported"
        )
    limit = settings().max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ServiceError.single(413, f"The request body is larger than {limit} bytes", code="too-costly")
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise ServiceError.single(413, f"The request body is larger than {limit} bytes", code="too-costly")
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, as some Windows clients send
        raw = raw[3:]
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ServiceError.single(400, f"The request body is not valid JSON ({exc.msg})", code="structure") from exc
    raise_for_depth(body, settings())
    return body
