"""GET /cds-services: the discovery document (built once per app) and GET /healthz."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from .common import json_response

bp = Blueprint("discovery", __name__)


@bp.get("/cds-services")
def discovery() -> Response:
    return json_response(current_app.extensions["cds_discovery"])


@bp.get("/healthz")
def healthz() -> Response:
    engine = current_app.extensions["cds_engine"]
    return json_response({"status": "ok", "protocol": engine.protocol.id, "protocolVersion": engine.protocol.version})
