"""GET /healthz: liveness for load balancers, with the worker's audit counters."""

from __future__ import annotations

from typing import Any

from fhir_builders import hook_request, tarlatamab_order
from sqlalchemy.exc import OperationalError


def test_healthz_names_the_protocol_and_starts_with_clean_audit_counters(client: Any, protocol: Any) -> None:
    body = client.get("/healthz").get_json()
    assert body == {
        "status": "ok",
        "protocol": protocol.id,
        "protocolVersion": protocol.version,
        "store": "ok",
        "audit": {"failedWrites": 0, "droppedEntries": 0, "recoveredEntries": 0, "lostEntries": 0},
    }


def test_failed_audit_writes_are_counted_and_shown_while_answers_still_return(app: Any, client: Any) -> None:
    store = app.extensions["cds_store"]

    def broken(entries: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("disk full"))

    store.write_audit = broken
    request = hook_request(drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 1)])
    for _ in range(3):
        assert client.post("/cds-services/tarlatamab-order-sign", json=request).status_code == 200
    assert app.extensions["cds_audit_writer"].flush(timeout=10)
    assert client.get("/healthz").get_json()["audit"]["failedWrites"] == 3
