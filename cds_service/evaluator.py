"""The tarlatamab protocol evaluator: runs every rule over the patient facts and collects findings."""

from __future__ import annotations

from collections.abc import Callable

from .facts import DraftOrder, PatientFacts
from .findings import Finding
from .protocol import Protocol
from .rules import (
    EvaluationContext,
    administration,
    data_quality,
    dose,
    labs,
    monitoring,
    populations,
    premedication,
    summary,
    toxicity,
)

OrderRule = Callable[[PatientFacts, DraftOrder, Protocol, EvaluationContext], list[Finding]]

ORDER_RULES: tuple[OrderRule, ...] = (
    dose.check_dose,
    dose.check_too_early,
    administration.check_administration,
    premedication.check_premedication,
    premedication.check_hydration,
    monitoring.check_monitoring,
    toxicity.check_crs,
    toxicity.check_neurotoxicity,
    labs.check_required_labs,
    labs.check_lab_holds,
    populations.check_pregnancy,
    populations.check_lactation,
    populations.check_age,
    populations.check_indication,
    populations.check_organ_function,
    populations.check_infection,
)


def evaluate_orders(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    """Findings for every (selected) draft tarlatamab order, then the data-quality findings."""
    findings: list[Finding] = []
    for order in facts.draft_orders:
        if not order.selected:
            continue
        for rule in ORDER_RULES:
            findings.extend(rule(facts, order, protocol, ctx))
    findings.extend(data_quality.check_data_quality(facts, protocol, ctx))
    return findings


def evaluate_patient_view(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    return summary.patient_summary(facts, protocol, ctx)
