"""Laboratory checks before each dose (spec/protocol.md sections 8.1-8.3).

A result counts when it is usable (converted to the canonical unit, final, valid) and dated from
`labs.window_days` before the planned administration date up to the evaluation time (a result drawn after the
planned date but before now also counts; a result dated after now never does). Holds judge the most recent
such result of each analyte.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

from ..facts import DraftOrder, LabResult, PatientFacts
from ..findings import Evidence, Finding, SuggestionSpec
from ..protocol import Protocol
from ..units import analyte_label, clean, format_multiple, format_quantity, unit_display
from . import EvaluationContext


# --- selection ---------------------------------------------------------------------------------------
def window_start(order: DraftOrder, protocol: Protocol) -> date:
    return order.planned_date - timedelta(days=int(protocol.section("labs")["window_days"]))


def in_window(result: LabResult, start: date, now: datetime) -> bool:
    return result.local_date >= start and result.effective <= now


def latest_usable(results: Sequence[LabResult], start: date, now: datetime) -> LabResult | None:
    """The newest usable result in the window (results are newest first)."""
    return next((r for r in results if r.usable and in_window(r, start, now)), None)


def latest_usable_any_date(results: Sequence[LabResult], now: datetime) -> LabResult | None:
    return next((r for r in results if r.usable and r.effective <= now), None)


def result_value(result: LabResult) -> str:
    assert result.value is not None
    return format_quantity(result.value, result.unit, result.raw_value, result.raw_unit)


def result_evidence(result: LabResult, extra: str = "") -> Evidence:
    value = result_value(result) if result.usable else f"{result.display}: not usable ({result.problem})"
    return Evidence(
        label=analyte_label(result.analyte),
        value=value + extra,
        date=result.local_date.isoformat(),
        reference=f"Observation/{result.observation_id}",
    )


def why_missing(results: Sequence[LabResult], start: date, now: datetime) -> tuple[str, LabResult | None]:
    """Why an analyte has no usable result in the window, with the result that explains it (if any)."""
    recorded = [r for r in results if r.effective <= now]
    unusable_recent = next((r for r in recorded if not r.usable and r.local_date >= start), None)
    if unusable_recent is not None:
        return f"result of {unusable_recent.local_date.isoformat()} not usable: {unusable_recent.problem}", (
            unusable_recent
        )
    older = next((r for r in recorded if r.usable), None)
    if older is not None:
        return f"last result {older.local_date.isoformat()}, before {start.isoformat()}", older
    if recorded:
        return f"only unusable results ({recorded[0].problem})", recorded[0]
    return "no result on record", None


def _missing_finding(
    rule_id: str,
    analytes: Sequence[str],
    orderables: Sequence[str],
    facts: PatientFacts,
    order: DraftOrder,
    protocol: Protocol,
    ctx: EvaluationContext,
) -> Finding | None:
    start = window_start(order, protocol)
    missing: list[str] = []
    reasons: list[str] = []
    evidence: list[Evidence] = []
    for analyte in analytes:
        results = facts.labs.get(analyte, ())
        if latest_usable(results, start, ctx.now) is not None:
            continue
        label = analyte_label(analyte)
        reason, result = why_missing(results, start, ctx.now)
        missing.append(label)
        reasons.append(f"{label}: {reason}")
        evidence.append(
            Evidence(
                label=label,
                value=reason if result is None or not result.usable else f"{result_value(result)} ({reason})",
                date=result.local_date.isoformat() if result else None,
                reference=f"Observation/{result.observation_id}" if result else None,
            )
        )
    if not missing:
        return None
    suggestions = tuple(
        SuggestionSpec("create-lab", order.resource_id, {"orderable": orderable}) for orderable in orderables
    )
    return Finding(
        rule_id,
        order.resource_id,
        {
            "planned_date": order.planned_date.isoformat(),
            "window_start": start.isoformat(),
            "missing": ", ".join(missing),
            "missing_detail": "; ".join(reasons),
        },
        tuple(evidence),
        suggestions,
    )


def _panels_missing(facts: PatientFacts, start: date, now: datetime, protocol: Protocol) -> list[str]:
    panels = protocol.section("labs")["required"]
    return [
        panel
        for panel, analytes in panels.items()
        if any(latest_usable(facts.labs.get(a, ()), start, now) is None for a in analytes)
    ]


def check_required_labs(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    labs = protocol.section("labs")
    orderables = protocol.section("orderables")
    start = window_start(order, protocol)
    findings: list[Finding] = []
    required = [a for analytes in labs["required"].values() for a in analytes]
    panel_orderables = protocol.section("labs")["panel_orderables"]
    panels = [
        panel_orderables[p]
        for p in _panels_missing(facts, start, ctx.now, protocol)
        if panel_orderables.get(p) in orderables
    ]
    finding = _missing_finding("labs.missing", required, panels, facts, order, protocol, ctx)
    if finding is not None:
        findings.append(finding)
    if any(e.kind == "crs" and e.active and e.onset <= ctx.now for e in facts.episodes):
        electrolytes = list(labs["crs_required"])
        missing = [a for a in electrolytes if latest_usable(facts.labs.get(a, ()), start, ctx.now) is None]
        finding = _missing_finding(
            "labs.electrolytes-missing",
            electrolytes,
            [a for a in missing if a in orderables],
            facts,
            order,
            protocol,
            ctx,
        )
        if finding is not None:
            findings.append(finding)
    return findings


# --- holds -------------------------------------------------------------------------------------------
def multiple_of_uln(result: LabResult) -> float | None:
    if result.value is None or not result.uln:
        return None
    return clean(result.value / result.uln)


def _uln_text(result: LabResult) -> str:
    assert result.uln is not None
    source = "from the result's reference range" if result.uln_source == "reference range" else "protocol default"
    return f"ULN {format_quantity(result.uln, result.unit)}, {source}"


def _below(
    rule_id: str,
    analyte: str,
    threshold_key: str,
    facts: PatientFacts,
    order: DraftOrder,
    protocol: Protocol,
    ctx: EvaluationContext,
) -> Finding | None:
    threshold = float(protocol.section("labs")["thresholds"][threshold_key])
    result = latest_usable(facts.labs.get(analyte, ()), window_start(order, protocol), ctx.now)
    if result is None or result.value is None or not result.value < threshold:
        return None
    indicator_critical = protocol.rule(rule_id).indicator == "critical"
    return Finding(
        rule_id,
        order.resource_id,
        {"value": result_value(result), "date": result.local_date.isoformat()},
        (result_evidence(result, f" (below {threshold:g} {unit_display(result.unit)})"),),
        (SuggestionSpec("delete-order", order.resource_id),) if indicator_critical else (),
    )


def _hepatic_line(result: LabResult, multiple: float, threshold: float) -> str:
    label = analyte_label(result.analyte)
    return (
        f"{label} {result_value(result)} on {result.local_date.isoformat()} = "
        f"{format_multiple(multiple, threshold)} x ULN ({_uln_text(result)})"
    )


def _hepatic_findings(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    t = protocol.section("labs")["thresholds"]
    start = window_start(order, protocol)
    latest = {a: latest_usable(facts.labs.get(a, ()), start, ctx.now) for a in ("alt", "ast", "bilirubin")}
    multiples = {a: multiple_of_uln(r) for a, r in latest.items() if r is not None}
    multiples = {a: m for a, m in multiples.items() if m is not None}
    delete = (SuggestionSpec("delete-order", order.resource_id),)

    def limits(grade: str) -> dict[str, float]:
        return {
            "alt": float(t[f"transaminase_{grade}_uln"]),
            "ast": float(t[f"transaminase_{grade}_uln"]),
            "bilirubin": float(t[f"bilirubin_{grade}_uln"]),
        }

    def graded(rule_id: str, grade: str) -> Finding | None:
        lim = limits(grade)
        over = [a for a, m in multiples.items() if m > lim[a]]
        if not over:
            return None
        results = [latest[a] for a in over]
        return Finding(
            rule_id,
            order.resource_id,
            {
                "findings": ", ".join(
                    f"{analyte_label(a)} {format_multiple(multiples[a], lim[a])} x ULN" for a in over
                ),
                "details": "; ".join(_hepatic_line(latest[a], multiples[a], lim[a]) for a in over),  # type: ignore[arg-type]
                "date": max(r.local_date for r in results if r is not None).isoformat(),
            },
            tuple(
                result_evidence(latest[a], f" = {format_multiple(multiples[a], lim[a])} x ULN ({_uln_text(latest[a])})")  # type: ignore[arg-type]
                for a in over
            ),
            delete,
        )

    findings: list[Finding] = []
    grade4 = graded("lab-hold.hepatotoxicity-grade4", "grade4")
    if grade4 is not None:
        findings.append(grade4)
    hys_t, hys_b = float(t["hys_transaminase_uln"]), float(t["hys_bilirubin_uln"])
    transaminases = [a for a in ("alt", "ast") if multiples.get(a, 0) > hys_t]
    if transaminases and multiples.get("bilirubin", 0) > hys_b:
        top = max(transaminases, key=lambda a: multiples[a])
        top_result, bili = latest[top], latest["bilirubin"]
        assert top_result is not None and bili is not None
        findings.append(
            Finding(
                "lab-hold.hys-law",
                order.resource_id,
                {
                    "transaminase": analyte_label(top),
                    "transaminase_value": result_value(top_result),
                    "transaminase_multiple": format_multiple(multiples[top], hys_t),
                    "bilirubin_value": result_value(bili),
                    "bilirubin_multiple": format_multiple(multiples["bilirubin"], hys_b),
                    "date": ", ".join(sorted({top_result.local_date.isoformat(), bili.local_date.isoformat()})),
                },
                (
                    result_evidence(
                        top_result, f" = {format_multiple(multiples[top], hys_t)} x ULN ({_uln_text(top_result)})"
                    ),
                    result_evidence(
                        bili, f" = {format_multiple(multiples['bilirubin'], hys_b)} x ULN ({_uln_text(bili)})"
                    ),
                ),
                delete,
            )
        )
    if not findings:  # a discontinuation supersedes the Grade 3 withhold
        grade3 = graded("lab-hold.hepatotoxicity-grade3", "grade3")
        if grade3 is not None:
            findings.append(grade3)
    return findings


def check_lab_holds(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    findings = [
        f
        for f in (
            _below("lab-hold.anc", "anc", "anc_below", facts, order, protocol, ctx),
            _below("lab-hold.platelets", "platelets", "platelets_below", facts, order, protocol, ctx),
            _below("lab-hold.hemoglobin", "hemoglobin", "hemoglobin_below", facts, order, protocol, ctx),
        )
        if f is not None
    ]
    findings.extend(_hepatic_findings(facts, order, protocol, ctx))
    return findings
