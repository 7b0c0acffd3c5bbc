"""Patient facts of an order-sign request, as `facts.build.build_facts` assembles them, for the rule tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conftest import NOW
from fhir_builders import PATIENT_ID, patient, tarlatamab_order

from cds_service.facts import DraftOrder, PatientFacts
from cds_service.facts.build import build_facts
from cds_service.protocol import Protocol


def order_sign_facts(
    protocol: Protocol,
    *,
    patient_resource: dict[str, Any] | None = None,
    observations: Sequence[dict[str, Any]] = (),
    conditions: Sequence[dict[str, Any]] = (),
    medications: Sequence[dict[str, Any]] = (),
    administrations: Sequence[dict[str, Any]] = (),
    planned: str = "2026-11-21T10:00:00Z",
    dose: float = 10,
) -> tuple[PatientFacts, DraftOrder]:
    """The facts of one draft tarlatamab order of `dose` mg planned at `planned`, and that order.

    The patient is `patient()` unless `patient_resource` is given; the other resources are as passed.
    """
    resources = {
        "patient": [patient() if patient_resource is None else patient_resource],
        "medications": list(medications),
        "administrations": list(administrations),
        "observations": list(observations),
        "conditions": list(conditions),
    }
    facts = build_facts(
        patient_id=PATIENT_ID,
        hook="order-sign",
        resources=resources,
        draft_entries=[tarlatamab_order(planned, dose)],
        selections=[],
        protocol=protocol,
        now=NOW,
    )
    return facts, facts.draft_orders[0]
