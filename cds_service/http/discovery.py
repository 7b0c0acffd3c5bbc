"""GET /cds-services: the discovery document (built once per app) and GET /healthz."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app

from ..store import AUDIT_DROPPED, AUDIT_FAILED, AUDIT_LOST, AUDIT_RECOVERED, AuditWriter, Store, StoreUnavailable
from .common import json_response

log = logging.getLogger(__name__)

bp = Blueprint("discovery", __name__)


@bp.get("/cds-services")
def discovery() -> Response:
    return json_response(current_app.extensions["cds_discovery"])


@bp.get("/healthz")
def healthz() -> Response:
    """Health for load balancers: 503 when the store cannot be written; audit counters of every worker.

    The store check is a real write (a counter), so a removed, read-only or unreachable database shows here.
    The audit counters are the store's (shared by all workers and instances) plus this worker's increments
    not yet saved (while the store is down).
    """
    engine = current_app.extensions["cds_engine"]
    store: Store = current_app.extensions["cds_store"]
    writer: AuditWriter | None = current_app.extensions.get("cds_audit_writer")
    body: dict[str, object] = {
        "status": "ok",
        "protocol": engine.protocol.id,
        "protocolVersion": engine.protocol.version,
        "store": "ok",
    }
    status = 200
    counters: dict[str, int] = {}
    try:
        store.check_writable()
        counters = store.counters()
    except StoreUnavailable as exc:
        log.error("health: the store cannot be written (%s)", exc)
        body["status"] = body["store"] = "unavailable"
        status = 503
    unsaved = writer.unsaved_counts() if writer is not None else {}
    body["audit"] = {
        key: counters.get(name, 0) + unsaved.get(name, 0)
        for key, name in (
            ("failedWrites", AUDIT_FAILED),
            ("droppedEntries", AUDIT_DROPPED),
            ("recoveredEntries", AUDIT_RECOVERED),
            ("lostEntries", AUDIT_LOST),
        )
    }
    headers = {"Retry-After": "5", "Cache-Control": "no-store"} if status == 503 else {"Cache-Control": "no-store"}
    return json_response(body, status=status, headers=headers)
