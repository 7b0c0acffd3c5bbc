"""The patient-view summary card (the service contract): next dose, its monitoring, labs due, holds.

The summary reuses the per-order rules on the next planned dose, so a hold shown here is exactly the
hold an order for that dose would meet at order-sign; in addition it reports every laboratory hold that
applies now, from the newest result of each analyte whatever its date (section 13.9). A result that cannot
decide a threshold is a data-quality card beside the summary, never hidden (13.15).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from ..facts import Dose, DraftOrder, PatientFacts
from ..findings import Evidence, Finding
from ..protocol import Protocol
from . import EvaluationContext, labs, monitoring, populations, toxicity
from .schedule import expected_dose

NEXT_DOSE_ID = "next-dose"

# Rules whose critical findings stop treatment for good; every other critical finding is a hold.
DISCONTINUE_RULES = frozenset(
    {
        "crs.grade4",
        "crs.grade3-recurrent",
        "neurotox.grade3-not-improved",
        "neurotox.grade3-recurrent",
        "neurotox.grade4",
        "lab-hold.hepatotoxicity-grade4",
        "lab-hold.hys-law",
    }
)

HOLD_RULES = (
    toxicity.check_crs,
    toxicity.check_neurotoxicity,
    labs.check_lab_holds,
    populations.check_pregnancy,
)


def patient_summary(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    if "administrations" in facts.unavailable:
        return [
            Finding(
                rule_id="summary.patient-view",
                values={"variant": "history-unknown", "notes": ""},
                indicator="warning",
            )
        ]
    if not facts.administrations:
        return []  # never treated with tarlatamab: no card (the service contract)

    today = ctx.today
    last_given = facts.administrations[-1]
    current = expected_dose(facts, today, protocol)
    interval = current.interval_days if current is not None and current.interval_days else 0
    next_due = last_given.local_date + timedelta(days=interval)
    planned = max(next_due, today)
    expected = expected_dose(facts, planned, protocol)
    if expected is None:
        return []

    next_dose = DraftOrder(
        resource_id=NEXT_DOSE_ID,
        status="planned",
        planned_date=planned,
        planned_source="evaluation time",
        dose=Dose(mg=float(expected.dose_mg), raw_value=str(expected.dose_mg), raw_unit="mg"),
    )
    plan_ctx = EvaluationContext(hook="patient-view", now=ctx.now)
    planned_findings = [f for rule in HOLD_RULES for f in rule(facts, next_dose, protocol, plan_ctx)]
    current = labs.current_lab_holds(facts, protocol, plan_ctx)
    held = {f.rule_id for f in planned_findings}
    candidates = [*planned_findings, *(f for f in current if f.rule_id not in held)]
    holds = tuple(
        _without_pseudo_order(f)
        for f in candidates
        if (f.indicator or protocol.rule(f.rule_id).indicator) == "critical"
    )
    limits: dict[str, Finding] = {}
    for f in candidates:
        if f.rule_id == "data-quality.lab-limit":
            limits.setdefault(f"{f.values.get('label')}|{f.values.get('date')}", replace(f, order_id=None))
    monitoring_findings = tuple(
        _without_pseudo_order(f) for f in monitoring.check_monitoring(facts, next_dose, protocol, plan_ctx)
    )
    labs_due = tuple(_without_pseudo_order(f) for f in labs.check_required_labs(facts, next_dose, protocol, plan_ctx))

    if any(f.rule_id in DISCONTINUE_RULES for f in holds):
        variant = "discontinued"
    elif holds:
        variant = "hold"
    else:
        variant = "on-treatment"
    overdue = next_due < today
    notes = []
    if overdue:
        notes.append(f"The dose was due on {next_due.isoformat()} and is overdue.")
    if expected.reason in ("restart-delay", "restart-crs-grade3"):
        notes.append("The next dose restarts the step-up schedule (R1, 1 mg).")
    last = expected.last or last_given
    return [
        Finding(
            rule_id="summary.patient-view",
            values={
                "variant": variant,
                "position": expected.position.display,
                "expected_mg": expected.dose_mg,
                "next_date": planned.isoformat(),
                "last_position": last.position.display if last.position else "unknown",
                "last_date": last.local_date.isoformat(),
                "notes": " ".join(notes),
            },
            evidence=(
                Evidence(
                    "Last tarlatamab dose",
                    f"{last.dose.display}, {last.position.display if last.position else 'position unknown'}",
                    last.local_date.isoformat(),
                    last.reference,
                ),
                Evidence("Doses given", str(len(facts.administrations))),
            ),
            indicator="critical" if holds else "info",
            related=(
                ("hold_reasons", holds),
                ("monitoring", monitoring_findings),
                ("labs", labs_due),
            ),
        ),
        *limits.values(),
    ]


def _without_pseudo_order(finding: Finding) -> Finding:
    """The next dose is not an order yet: drop evidence pointing at it and suggestions acting on it."""
    pseudo = f"MedicationRequest/{NEXT_DOSE_ID}"
    return replace(
        finding,
        evidence=tuple(e for e in finding.evidence if e.reference != pseudo),
        suggestions=(),
    )
