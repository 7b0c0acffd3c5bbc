"""Data the service could not obtain or interpret: never silently passed (spec/protocol.md section 10)."""

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
    if "administrations" in facts.unavailable or unreliable:
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
    for kind, rule_id in (("unavailable", "data-quality.unavailable"), ("unusable", "data-quality.unusable")):
        issues = [i for i in facts.issues if i.kind == kind]
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
