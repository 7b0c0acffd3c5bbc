"""An audit entry for the store's tests (one place for its shape)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import fhir_builders as fb

from cds_service.services import PREFETCH_KEYS
from cds_service.store import AuditEntry


def audit_entry(**kw: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "at": datetime.now(UTC),
        "service_id": "tarlatamab-order-sign",
        "hook_instance": str(uuid.uuid4()),
        "patient_id": fb.PATIENT_ID,
        "status": 200,
        "evaluation_ms": 12.3456,
        "cards": (
            {"uuid": str(uuid.uuid4()), "rule": "dose.step-up-skipped", "topic": "dose", "indicator": "critical"},
        ),
        "data_origin": dict.fromkeys(PREFETCH_KEYS, "prefetch"),
    }
    values.update(kw)
    return AuditEntry(**values)
