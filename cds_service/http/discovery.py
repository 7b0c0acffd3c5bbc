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
    """Liveness for load balancers, with this worker's audit counters (failed and dropped writes)."""
    engine = current_app.extensions["cds_engine"]
    writer = current_app.extensions.get("cds_audit_writer")
    body: dict[str, object] = {
        "status": "ok",
        "protocol": engine.protocol.id,
        "protocolVersion": engine.protocol.version,
    }
    if writer is not None:
        body["audit"] = {"failedWrites": writer.failures, "droppedEntries": writer.dropped}
    return json_response(body)
