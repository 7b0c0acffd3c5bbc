"""The tarlatamab protocol evaluator: runs every rule over the patient facts and collects findings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, time

from .facts import Administration, DraftOrder, PatientFacts
from .findings import Finding
from .protocol import Protocol
from .rules import (
    EvaluationContext,
    administration,
    data_quality,
    dose,
    labs,
    monitoring,
    plan,
    populations,
    premedication,
    summary,
    toxicity,
)
from .rules.schedule import assign_positions

OrderRule = Callable[[PatientFacts, DraftOrder, Protocol, EvaluationContext], list[Finding]]

ORDER_RULES: tuple[OrderRule, ...] = (
    dose.check_dose,
    dose.check_too_early,
    administration.check_administration,
    premedication.check_premedication,
    premedication.check_hydration,
    plan.check_companions_ordered,
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
    """Findings for every (selected) draft tarlatamab order, then the data-quality findings.

    Orders signed together (e.g. C1D1 and C1D8) are judged in planned-date order, each as if the earlier
    drafts of the request were given as ordered; the earlier drafts are judged on their own.
    """
    findings: list[Finding] = []
    ordered = sorted(facts.draft_orders, key=lambda o: (o.planned_date, o.resource_id))
    for index, order in enumerate(ordered):
        if not order.selected:
            continue
        order_facts = with_earlier_drafts(facts, ordered[:index], order, protocol)
        for rule in ORDER_RULES:
            findings.extend(rule(order_facts, order, protocol, ctx))
    findings.extend(data_quality.check_data_quality(facts, protocol, ctx))
    return findings


def with_earlier_drafts(
    facts: PatientFacts, earlier: list[DraftOrder], order: DraftOrder, protocol: Protocol
) -> PatientFacts:
    planned = [
        Administration(
            resource_id=draft.resource_id,
            status="planned",
            start=datetime.combine(draft.planned_date, time(), tzinfo=UTC),
            local_date=draft.planned_date,
            dose=draft.dose,
            planned_in_request=True,
        )
        for draft in earlier
        if draft.planned_date < order.planned_date and "administrations" not in facts.unavailable
    ]
    if not planned:
        return facts
    doses = sorted([*facts.administrations, *planned], key=lambda a: (a.local_date, a.start))
    return replace(facts, administrations=assign_positions(doses, facts.episodes, protocol))


def evaluate_patient_view(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    return summary.patient_summary(facts, protocol, ctx)
