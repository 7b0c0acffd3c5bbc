"""Gathered FHIR resources -> `PatientFacts`: the one place where FHIR JSON becomes typed facts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .facts import PatientFacts
from .facts_clinical import build_clinical_facts
from .facts_orders import build_order_facts
from .protocol import Protocol


def build_facts(
    *,
    patient_id: str,
    hook: str,
    resources: dict[str, list[dict[str, Any]]],
    draft_entries: Sequence[dict[str, Any]],
    selections: Sequence[str],
    protocol: Protocol,
    now: datetime,
    issues: Sequence[Any] = (),
    unavailable: frozenset[str] = frozenset(),
) -> PatientFacts:
    clinical = build_clinical_facts(resources, protocol, now)
    orders = build_order_facts(
        resources,
        draft_entries=tuple(draft_entries),
        selections=tuple(selections),
        hook=hook,
        protocol=protocol,
        now=now,
        episodes=clinical.episodes,
    )
    return PatientFacts(
        patient_id=patient_id,
        evaluation_time=now,
        birth_date=clinical.birth_date,
        gender=clinical.gender,
        administrations=orders.administrations,
        draft_orders=orders.draft_orders,
        companion_orders=orders.companion_orders,
        labs=clinical.labs,
        toxicity_points=clinical.toxicity_points,
        episodes=clinical.episodes,
        pregnancy=clinical.pregnancy,
        breastfeeding=clinical.breastfeeding,
        sclc_diagnoses=clinical.sclc_diagnoses,
        platinum_history=orders.platinum_history,
        active_infections=clinical.active_infections,
        issues=(*issues, *clinical.issues, *orders.issues),
        unavailable=unavailable,
    )
