"""POST /cds-services/{id} (hook calls) and POST /cds-services/{id}/feedback."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from ..client_auth import FhirServerAllowList, open_mode_host_allowed
from ..engine import Engine
from ..errors import ServiceError, bad_request
from ..models import FeedbackRequest, validate
from ..store import AuditEntry, AuditWriter, FeedbackItem, Store, StoreUnavailable
from .common import json_response, read_json_body, settings

log = logging.getLogger(__name__)

bp = Blueprint("hooks", __name__)

# RFC 3339 section 5.6 date-time in UTC ("Z" or a zero offset), e.g. 1985-04-12T23:20:50.52Z.
_RFC3339_UTC = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(?:[Zz]|[+-]00:00)$")


def _engine() -> Engine:
    return current_app.extensions["cds_engine"]


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    engine = _engine()
    engine.service(service_id)  # 404 before anything else
    client = getattr(g, "cds_client", None)
    issuer = client.issuer if client is not None else None
    started = time.perf_counter()
    body: Any = None
    try:
        body = read_json_body(request)
        allowed = client.fhir_servers if client is not None else _open_mode_allowed(body)
        outcome = engine.handle(service_id, body, allowed_fhir_servers=allowed, base_url=request.host_url)
    except ServiceError as error:
        _audit_error(service_id, body, error.status, (time.perf_counter() - started) * 1000, issuer)
        raise
    except Exception:
        _audit_error(service_id, body, 500, (time.perf_counter() - started) * 1000, issuer)
        raise
    log.info(
        "hook %s hookInstance=%s patient=%s cards=%d evaluation_ms=%.1f",
        service_id,
        outcome.hook_instance,
        outcome.patient_id,
        len(outcome.cards),
        outcome.evaluation_ms,
    )
    writer = _audit_writer()
    if writer is not None:
        writer.submit(
            AuditEntry(
                at=datetime.now(UTC),
                service_id=outcome.service_id,
                hook_instance=outcome.hook_instance,
                patient_id=outcome.patient_id,
                status=200,
                evaluation_ms=outcome.evaluation_ms,
                cards=tuple(
                    {
                        "uuid": c.uuid,
                        "rule": c.rule_id,
                        "topic": c.topic,
                        "indicator": c.indicator,
                        "suggestions": _suggestion_records(card),
                    }
                    for c, card in zip(outcome.cards, outcome.body["cards"], strict=True)
                ),
                data_origin=outcome.data_origin,
                issuer=issuer,
                protocol_version=engine.protocol.version,
            )
        )
    return json_response(outcome.body)


def _open_mode_allowed(body: Any) -> FhirServerAllowList:
    """Open development mode (no client JWT): fhirServer is contacted only on loopback or a listed host
    (CDS_OPEN_MODE_FHIR_HOSTS), never on any address a caller names."""
    fhir_server = body.get("fhirServer") if isinstance(body, dict) else None
    if isinstance(fhir_server, str) and open_mode_host_allowed(fhir_server.strip(), settings().open_mode_fhir_hosts):
        return FhirServerAllowList([fhir_server.strip().rstrip("/")])
    return FhirServerAllowList()


def _suggestion_records(card: dict[str, Any]) -> list[dict[str, str]]:
    """What the audit keeps of a card's suggestions, to join accepted-suggestion feedback: uuid and action."""
    records = []
    for suggestion in card.get("suggestions") or ():
        actions = []
        for action in suggestion.get("actions") or ():
            resource = action.get("resource")
            kind = resource.get("resourceType") if isinstance(resource, dict) else None
            if kind is None and isinstance(action.get("resourceId"), str):
                kind = action["resourceId"].split("/", 1)[0]
            actions.append(f"{action.get('type')} {kind or 'resource'}")
        records.append({"uuid": suggestion["uuid"], "action": ", ".join(actions)})
    return records


def _audit_writer() -> AuditWriter | None:
    return current_app.extensions.get("cds_audit_writer")


def _audit_error(service_id: str, body: Any, status: int, elapsed_ms: float, issuer: str | None) -> None:
    """Audit a hook call that ended in an error (identifiers only; "" when the body named no hookInstance)."""
    writer = _audit_writer()
    if writer is None:
        return
    hook_instance = body.get("hookInstance") if isinstance(body, dict) else None
    if not isinstance(hook_instance, str):
        hook_instance = ""
    context = body.get("context") if isinstance(body, dict) else None
    patient_id = context.get("patientId") if isinstance(context, dict) else None
    writer.submit(
        AuditEntry(
            at=datetime.now(UTC),
            service_id=service_id,
            hook_instance=hook_instance,
            patient_id=patient_id if isinstance(patient_id, str) else None,
            status=status,
            evaluation_ms=elapsed_ms,
            cards=(),
            data_origin={},
            issuer=issuer,
            protocol_version=_engine().protocol.version,
        )
    )


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    _engine().service(service_id)
    body = read_json_body(request)
    items = parse_feedback(body)
    store: Store = current_app.extensions["cds_store"]
    client = getattr(g, "cds_client", None)
    try:
        new = store.save_feedback(service_id, items, issuer=client.issuer if client is not None else None)
    except StoreUnavailable as exc:
        log.error("feedback for %s not stored: store unavailable (%s)", service_id, exc)
        raise ServiceError.single(
            503, "Feedback could not be stored; retry later", code="transient", headers={"Retry-After": "30"}
        ) from exc
    log.info("feedback %s items=%d new=%d", service_id, len(items), new)
    return json_response({})


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """The feedback items of a body checked by the FeedbackRequest model (400 naming the first problem)."""
    if not isinstance(body, dict):
        raise bad_request("The feedback body must be a JSON object", "$")
    request = validate(FeedbackRequest, body)
    items = []
    for i, item in enumerate(request.feedback):
        reason = item.overrideReason.reason if item.overrideReason is not None else None
        items.append(
            FeedbackItem(
                card_uuid=item.card,
                outcome=item.outcome,
                outcome_timestamp=_utc_timestamp(item.outcomeTimestamp, f"feedback[{i}].outcomeTimestamp"),
                accepted_suggestions=tuple(s.id for s in item.acceptedSuggestions or ()),
                override_reason_system=reason.system if reason is not None else None,
                override_reason_code=reason.code if reason is not None else None,
                override_reason_display=reason.display if reason is not None else None,
                user_comment=item.overrideReason.userComment if item.overrideReason is not None else None,
            )
        )
    return items


def _utc_timestamp(value: Any, path: str) -> str:
    """The outcomeTimestamp checked (RFC 3339, UTC) and normalised, so that one instant is one stored value."""
    if value is None:
        raise bad_request(f"{path} is required", path, code="required")
    if not isinstance(value, str):
        raise bad_request(f"{path} must be an RFC 3339 UTC date-time string", path)
    match = _RFC3339_UTC.match(value)
    if match is None:
        raise bad_request(f"{path} must be an RFC 3339 date-time in UTC (e.g. 2026-11-21T09:00:00Z)", path)
    date, clock, fraction = match.groups()
    try:
        datetime.fromisoformat(f"{date}T{clock}")
    except ValueError as exc:
        raise bad_request(f"{path} is not a valid date-time", path) from exc
    fraction = (fraction or "").rstrip("0")
    return f"{date}T{clock}{'.' + fraction if fraction else ''}Z"
