"""Data the service could not obtain or interpret: never silently passed (clinical specification section 10)."""

from __future__ import annotations

from ..facts import DataIssue, PatientFacts
from ..findings import Evidence, Finding
from ..protocol import Protocol
from . import EvaluationContext


def _evidence(issue: DataIssue) -> Evidence:
    label = issue.affects or issue.dataset
    return Evidence(label=label, value=issue.message, reference=issue.reference)


def check_data_quality(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    findings: list[Finding] = []
    history_issues = [i for i in facts.issues if i.dataset == "administrations"]
    unreliable = [i for i in history_issues if i.affects == "schedule position"]
    history_card = "administrations" in facts.unavailable or bool(unreliable)
    if history_card:
        findings.append(
            Finding(
                rule_id="data-quality.dose-history",
                values={
                    "variant": "unavailable" if "administrations" in facts.unavailable else "unreliable",
                    "count": len(unreliable),
                },
                evidence=tuple(_evidence(i) for i in history_issues),
            )
        )
    # An unreadable element of a draft tarlatamab order that a check needs (the dose, ...): critical (section 12).
    for issue in [i for i in facts.issues if i.severity == "critical"]:
        findings.append(
            Finding(
                rule_id="data-quality.draft-order",
                order_id=issue.reference.split("/", 1)[-1] if issue.reference else None,
                values={
                    "order": issue.reference or "the draft order",
                    "element": issue.element or "(element not named)",
                    "affected": issue.affects or "the order",
                },
                evidence=(_evidence(issue),),
            )
        )
    for kind, rule_id in (("unavailable", "data-quality.unavailable"), ("unusable", "data-quality.unusable")):
        # One card per problem: what the dose-history card already shows is not repeated on a second card.
        issues = [
            i
            for i in facts.issues
            if i.kind == kind and i.severity != "critical" and not (history_card and i.dataset == "administrations")
        ]
        if not issues:
            continue
        affected = sorted({i.affects or i.dataset for i in issues})
        findings.append(
            Finding(
                rule_id=rule_id,
                values={"count": len(issues), "affected": ", ".join(affected)},
                evidence=tuple(_evidence(i) for i in issues),
            )
        )
    return findings
