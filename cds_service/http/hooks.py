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
from ..store import FEEDBACK_LIMITS, AuditEntry, AuditWriter, FeedbackItem, Store, StoreUnavailable
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
    body = read_json_body(request)
    client = getattr(g, "cds_client", None)
    allowed = client.fhir_servers if client is not None else _open_mode_allowed(body)
    issuer = client.issuer if client is not None else None
    started = time.perf_counter()
    try:
        outcome = engine.handle(service_id, body, allowed_fhir_servers=allowed)
    except ServiceError as error:
        _audit_error(service_id, body, error, (time.perf_counter() - started) * 1000, issuer)
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
                    {"uuid": c.uuid, "rule": c.rule_id, "topic": c.topic, "indicator": c.indicator}
                    for c in outcome.cards
                ),
                data_origin=outcome.data_origin,
                issuer=issuer,
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


def _audit_writer() -> AuditWriter | None:
    return current_app.extensions.get("cds_audit_writer")


def _audit_error(service_id: str, body: Any, error: ServiceError, elapsed_ms: float, issuer: str | None) -> None:
    """Audit a hook call that ended in an error, when it names its hookInstance (identifiers only)."""
    writer = _audit_writer()
    if writer is None or not isinstance(body, dict):
        return
    hook_instance = body.get("hookInstance")
    if not isinstance(hook_instance, str) or not hook_instance:
        return
    context = body.get("context")
    patient_id = context.get("patientId") if isinstance(context, dict) else None
    writer.submit(
        AuditEntry(
            at=datetime.now(UTC),
            service_id=service_id,
            hook_instance=hook_instance,
            patient_id=patient_id if isinstance(patient_id, str) else None,
            status=error.status,
            evaluation_ms=elapsed_ms,
            cards=(),
            data_origin={},
            issuer=issuer,
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
    if not isinstance(body, dict):
        raise bad_request("The feedback body must be a JSON object", "$")
    raw_items = body.get("feedback")
    if raw_items is None:
        raise bad_request("Missing required field feedback", "feedback", code="required")
    if not isinstance(raw_items, list) or not raw_items:
        raise bad_request("feedback must be a non-empty array", "feedback")
    items = []
    for i, item in enumerate(raw_items):
        path = f"feedback[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{path} must be an object", path)
        card = item.get("card")
        if card is None:
            raise bad_request(f"{path}.card is required", f"{path}.card", code="required")
        if not isinstance(card, str) or not card.strip():
            raise bad_request(f"{path}.card must be the uuid of a card", f"{path}.card")
        _check_length(card, FEEDBACK_LIMITS["card"], f"{path}.card")
        outcome = item.get("outcome")
        if outcome is None:
            raise bad_request(f"{path}.outcome is required", f"{path}.outcome", code="required")
        if outcome not in ("accepted", "overridden"):
            raise bad_request(f"{path}.outcome must be accepted or overridden", f"{path}.outcome")
        stamp = _utc_timestamp(item.get("outcomeTimestamp"), f"{path}.outcomeTimestamp")
        accepted: list[str] = []
        raw_accepted = item.get("acceptedSuggestions")
        if outcome == "accepted" and (not isinstance(raw_accepted, list) or not raw_accepted):
            raise bad_request(
                f"{path}.acceptedSuggestions is required for accepted outcomes",
                f"{path}.acceptedSuggestions",
                code="required",
            )
        if raw_accepted is not None:
            if not isinstance(raw_accepted, list):
                raise bad_request(f"{path}.acceptedSuggestions must be an array", f"{path}.acceptedSuggestions")
            for j, suggestion in enumerate(raw_accepted):
                if (
                    not isinstance(suggestion, dict)
                    or not isinstance(suggestion.get("id"), str)
                    or not suggestion["id"]
                ):
                    raise bad_request(
                        f"{path}.acceptedSuggestions[{j}] must be an object with an id",
                        f"{path}.acceptedSuggestions[{j}].id",
                    )
                accepted.append(suggestion["id"])
        reason_system = reason_code = reason_display = comment = None
        override = item.get("overrideReason")
        if override is not None:
            if not isinstance(override, dict):
                raise bad_request(f"{path}.overrideReason must be an object", f"{path}.overrideReason")
            reason = override.get("reason")
            if reason is not None:
                if not isinstance(reason, dict) or not isinstance(reason.get("code"), str):
                    raise bad_request(
                        f"{path}.overrideReason.reason must be a Coding with a code", f"{path}.overrideReason.reason"
                    )
                for key in ("system", "display"):
                    if key in reason and not isinstance(reason[key], str):
                        raise bad_request(
                            f"{path}.overrideReason.reason.{key} must be a string",
                            f"{path}.overrideReason.reason.{key}",
                        )
                for key in ("system", "code", "display"):
                    if isinstance(reason.get(key), str):
                        limit = FEEDBACK_LIMITS[f"reason.{key}"]
                        _check_length(reason[key], limit, f"{path}.overrideReason.reason.{key}")
                reason_system, reason_code, reason_display = reason.get("system"), reason["code"], reason.get("display")
            comment = override.get("userComment")
            if comment is not None and not isinstance(comment, str):
                raise bad_request(
                    f"{path}.overrideReason.userComment must be a string", f"{path}.overrideReason.userComment"
                )
        for field_path, text in (
            (f"{path}.card", card),
            (f"{path}.overrideReason.reason.system", reason_system),
            (f"{path}.overrideReason.reason.code", reason_code),
            (f"{path}.overrideReason.reason.display", reason_display),
            (f"{path}.overrideReason.userComment", comment),
            *((f"{path}.acceptedSuggestions[{j}].id", a) for j, a in enumerate(accepted)),
        ):
            _check_text(text, field_path)
        items.append(
            FeedbackItem(
                card_uuid=card,
                outcome=outcome,
                outcome_timestamp=stamp,
                accepted_suggestions=tuple(accepted),
                override_reason_system=reason_system,
                override_reason_code=reason_code,
                override_reason_display=reason_display,
                user_comment=comment,
            )
        )
    return items


def _check_text(value: str | None, path: str) -> None:
    """Text the store keeps must be storable everywhere: a NUL character is a client error (400), not a 503."""
    if value is not None and "\x00" in value:
        raise bad_request(f"{path} must not contain NUL characters", path)


def _check_length(value: str, limit: int, path: str) -> None:
    if len(value) > limit:
        raise bad_request(f"{path} is longer than {limit} characters", path, code="too-long")


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
