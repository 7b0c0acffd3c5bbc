"""Laboratory checks before each dose (clinical specification sections 8.1-8.3, 12, 13.6, 13.9-13.11, 13.16):
where the ANC, platelet, hemoglobin and liver holds are decided (thresholds in the protocol data).

A result counts when it is usable (converted to the canonical unit, valid) and its local date is on or after
the planned date minus `labs.window_days`, up to the evaluation time (13.11). A required lab is satisfied
only by a final result; a preliminary result newer than the newest final one may raise a hold (the card
says it is preliminary) but never clears one. A value with a comparator is used only when its bound decides
the threshold; otherwise it is reported (`data-quality.lab-limit`) and no older result takes its place.

Liver persistence (13.6): a Grade 4 or Hy's-law result dated after the first dose discontinues whatever later
results show; a Grade 3 result dated after the last dose holds until a later final result meets the resume
thresholds. Before the first dose such a result is a hold, not a discontinuation (13.16).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

from ..facts import Administration, DraftOrder, LabResult, PatientFacts
from ..findings import Evidence, Finding, SuggestionSpec
from ..protocol import LIVER_ANALYTES, Protocol
from ..units import analyte_label, clean, format_multiple, format_quantity, unit_display
from . import EvaluationContext


# --- selection ---------------------------------------------------------------------------------------
def window_start(order: DraftOrder, protocol: Protocol) -> date:
    return order.planned_date - timedelta(days=int(protocol.section("labs")["window_days"]))


def in_window(result: LabResult, start: date, now: datetime) -> bool:
    return result.local_date >= start and result.effective <= now


def latest_usable(results: Sequence[LabResult], start: date, now: datetime) -> LabResult | None:
    """The newest final usable result in the window (results are newest first): satisfies a requirement.

    None when a newer result in the window cannot be read: an older result never stands in for it silently
    (clinical specification section 12); the requirement then shows as unmet, naming the unreadable result.
    """
    for r in results:
        if not in_window(r, start, now):
            continue
        if r.final:
            return r
        if not r.usable:
            return None
    return None


def latest_usable_any_date(results: Sequence[LabResult], now: datetime) -> LabResult | None:
    return next((r for r in results if r.final and r.effective <= now), None)


def governing(results: Sequence[LabResult], start: date | None, now: datetime) -> list[LabResult]:
    """The results that decide a hold: the newest final one, and the preliminary ones newer than it.

    `start`: the window's first local date (None: whatever the date, for the holds that apply now, 13.9).
    """
    out: list[LabResult] = []
    for r in results:
        if not r.usable or r.effective > now or (start is not None and r.local_date < start):
            continue
        out.append(r)
        if r.final:
            break
    return out


def result_value(result: LabResult) -> str:
    assert result.value is not None
    shown = format_quantity(result.value, result.unit, result.raw_value, result.raw_unit)
    if result.comparator:
        shown = f"{result.comparator}{shown}"
    return shown + (" (preliminary)" if result.preliminary else "")


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
    preliminary = next((r for r in recorded if r.usable and r.preliminary and r.local_date >= start), None)
    if preliminary is not None:
        return f"result of {preliminary.local_date.isoformat()} is preliminary", preliminary
    unusable_recent = next((r for r in recorded if not r.usable and r.local_date >= start), None)
    if unusable_recent is not None:
        return f"result of {unusable_recent.local_date.isoformat()} not usable: {unusable_recent.problem}", (
            unusable_recent
        )
    older = next((r for r in recorded if r.final), None)
    if older is not None:
        return f"last result {older.local_date.isoformat()}, before {start.isoformat()}", older
    if recorded:
        return f"only unusable results ({recorded[0].problem})", recorded[0]
    return "no result on record", None


def _missing_finding(
    rule_id: str,
    unmet: Sequence[str],
    orderables: Sequence[str],
    facts: PatientFacts,
    order: DraftOrder,
    start: date,
    ctx: EvaluationContext,
) -> Finding:
    """The finding naming the analytes `unmet` (without a usable result in the window) and why."""
    missing: list[str] = []
    reasons: list[str] = []
    evidence: list[Evidence] = []
    for analyte in unmet:
        results = facts.labs.get(analyte, ())
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


def check_required_labs(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    labs = protocol.section("labs")
    start = window_start(order, protocol)
    panels: dict[str, list[str]] = labs["required"]
    unmet = {
        a
        for analytes in panels.values()
        for a in analytes
        if latest_usable(facts.labs.get(a, ()), start, ctx.now) is None
    }
    if not unmet:
        return []
    orderables = protocol.section("orderables")
    panel_orderables = labs["panel_orderables"]
    to_order = [
        panel_orderables[p]
        for p, analytes in panels.items()
        if unmet.intersection(analytes) and panel_orderables.get(p) in orderables
    ]
    required_unmet = [a for analytes in panels.values() for a in analytes if a in unmet]
    return [_missing_finding("labs.missing", required_unmet, to_order, facts, order, start, ctx)]


# --- holds -------------------------------------------------------------------------------------------
def multiple_of_uln(result: LabResult) -> float | None:
    if result.value is None or not result.uln:
        return None
    return clean(result.value / result.uln)


def _uln_text(result: LabResult) -> str:
    assert result.uln is not None
    source = "from the result's reference range" if result.uln_source == "reference range" else "protocol default"
    return f"ULN {format_quantity(result.uln, result.unit)}, {source}"


def _order_id(order: DraftOrder | None) -> str | None:
    return order.resource_id if order is not None else None


def _limit_text(result: LabResult) -> str:
    """A limit value as a clinician reads it, in the unit of the threshold it is compared with, with the
    reported one when the number differs: "<1.5 ×10⁹/L", ">40 ×10⁹/L", "<1500 /µL" -> "<1.5 ×10⁹/L (reported
    <1500 /µL)"."""
    comparator = result.comparator or ""
    if result.value is None:
        unit = unit_display(result.raw_unit) if result.raw_unit else ""
        return f"{comparator}{result.raw_value} {unit}".strip()
    shown = format_quantity(result.value, result.unit, result.raw_value, result.raw_unit)
    return comparator + shown.replace("(reported ", f"(reported {comparator}", 1)


def lab_limit(result: LabResult, relation: str, order: DraftOrder | None) -> Finding:
    """A limit value whose bound does not decide the threshold: reported, never read as normal (section 12)."""
    label = analyte_label(result.analyte)
    return Finding(
        "data-quality.lab-limit",
        _order_id(order),
        {"label": label, "shown": _limit_text(result), "date": result.local_date.isoformat(), "relation": relation},
        (result_evidence(result, f" (cannot tell whether it is {relation})"),),
    )


def below_finding(
    rule_id: str,
    analyte: str,
    threshold_key: str,
    facts: PatientFacts,
    order: DraftOrder | None,
    protocol: Protocol,
    ctx: EvaluationContext,
    start: date | None,
) -> Finding | None:
    threshold = float(protocol.section("labs")["thresholds"][threshold_key])
    candidates = governing(facts.labs.get(analyte, ()), start, ctx.now)
    decisions = [(r, r.below(threshold)) for r in candidates]
    low = next((r for r, below in decisions if below), None)
    if low is None:
        undecided = next((r for r, below in decisions if below is None), None)
        if undecided is not None:
            return lab_limit(undecided, f"below {threshold:g} {unit_display(candidates[0].unit)}", order)
        return None
    unit = unit_display(candidates[0].unit)
    critical = protocol.rule(rule_id).indicator == "critical"
    return Finding(
        rule_id,
        _order_id(order),
        {"value": result_value(low), "date": low.local_date.isoformat()},
        (result_evidence(low, f" (below {threshold:g} {unit})"),),
        (SuggestionSpec("delete-order", order.resource_id),) if critical and order is not None else (),
    )


def _times_uln(result: LabResult, multiple: float, threshold: float) -> str:
    """A multiple of ULN as the result states it: a limit keeps its comparator (ALT ">1000" -> ">25.0")."""
    return f"{result.comparator or ''}{format_multiple(multiple, threshold)}"


def _uln_evidence(result: LabResult, multiple: float, threshold: float) -> Evidence:
    return result_evidence(result, f" = {_times_uln(result, multiple, threshold)} x ULN ({_uln_text(result)})")


def _hepatic_line(result: LabResult, multiple: float, threshold: float) -> str:
    label = analyte_label(result.analyte)
    return (
        f"{label} {result_value(result)} on {result.local_date.isoformat()} = "
        f"{_times_uln(result, multiple, threshold)} x ULN ({_uln_text(result)})"
    )


def _over(results: dict[str, list[LabResult]], limits: dict[str, float]) -> dict[str, LabResult]:
    """analyte -> the first result above its limit x ULN."""
    out: dict[str, LabResult] = {}
    for analyte, candidates in results.items():
        limit = limits[analyte]
        for r in candidates:
            if r.above_uln(limit):
                out[analyte] = r
                break
    return out


def _graded_finding(
    rule_id: str, over: dict[str, LabResult], limits: dict[str, float], order: DraftOrder | None, **extra: object
) -> Finding:
    multiples = {a: multiple_of_uln(r) or 0.0 for a, r in over.items()}
    return Finding(
        rule_id,
        _order_id(order),
        {
            "findings": ", ".join(
                f"{analyte_label(a)} {_times_uln(r, multiples[a], limits[a])} x ULN" for a, r in over.items()
            ),
            "details": "; ".join(_hepatic_line(r, multiples[a], limits[a]) for a, r in over.items()),
            "date": max(r.local_date for r in over.values()).isoformat(),
            **extra,
        },
        tuple(
            _uln_evidence(r, multiples[a], limits[a])
            for a, r in over.items()
        ),
        (SuggestionSpec("delete-order", order.resource_id),) if order is not None else (),
    )


def _hys_law(results: dict[str, list[LabResult]], protocol: Protocol, order: DraftOrder | None) -> Finding | None:
    limits = protocol.liver_limits.hys
    bilirubin = _over({"bilirubin": results.get("bilirubin", [])}, limits)
    if not bilirubin:
        return None
    transaminases = _over({a: results.get(a, []) for a in ("alt", "ast")}, limits)
    if not transaminases:
        return None
    hys_t, hys_b = limits["alt"], limits["bilirubin"]
    top = max(transaminases, key=lambda a: multiple_of_uln(transaminases[a]) or 0.0)
    top_result, bili = transaminases[top], bilirubin["bilirubin"]
    top_multiple, bili_multiple = multiple_of_uln(top_result) or 0.0, multiple_of_uln(bili) or 0.0
    return Finding(
        "lab-hold.hys-law",
        _order_id(order),
        {
            "transaminase": analyte_label(top),
            "transaminase_value": result_value(top_result),
            "transaminase_multiple": _times_uln(top_result, top_multiple, hys_t),
            "bilirubin_value": result_value(bili),
            "bilirubin_multiple": _times_uln(bili, bili_multiple, hys_b),
            "date": ", ".join(sorted({top_result.local_date.isoformat(), bili.local_date.isoformat()})),
        },
        (
            _uln_evidence(top_result, top_multiple, hys_t),
            _uln_evidence(bili, bili_multiple, hys_b),
        ),
        (SuggestionSpec("delete-order", order.resource_id),) if order is not None else (),
    )


def _given(facts: PatientFacts) -> list[Administration]:
    return [a for a in facts.administrations if not a.planned_in_request]


def dated_after(result: LabResult, dose: Administration) -> bool:
    """Whether a result was taken after a dose: instants when both carry one, local dates otherwise (strictly)."""
    if dose.instant is not None and result.exact:
        return result.effective > dose.instant
    return result.local_date > dose.local_date


def _liver_by_date(
    facts: PatientFacts, now: datetime, after: Administration, floor: dict[str, float] | None = None
) -> list[dict[str, list[LabResult]]]:
    """Usable liver results dated after a dose, grouped by local date (oldest first); with `floor`, only the
    results above their analyte's floor x ULN."""
    days: dict[date, dict[str, list[LabResult]]] = {}
    for analyte in LIVER_ANALYTES:
        limit = floor[analyte] if floor is not None else None
        for r in facts.labs.get(analyte, ()):
            if limit is not None and not r.above_uln(limit):  # first: rejects most results, and any unusable one
                continue
            if not (r.usable and r.effective <= now and dated_after(r, after)):
                continue
            days.setdefault(r.local_date, {}).setdefault(analyte, []).append(r)
    return [days[d] for d in sorted(days)]


def _persistent_discontinuation(
    facts: PatientFacts, order: DraftOrder | None, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    """A Grade 4 or Hy's-law liver result after the first dose discontinues, whatever came later (13.6)."""
    given = _given(facts)
    if not given:
        return []
    limits = protocol.liver_limits
    grade4 = limits.grade4
    found: dict[str, Finding] = {}
    # A result at or below the lower of its Grade 4 and Hy's-law limits takes part in neither decision (a
    # result above a limit is above every lower one): only the days with a result above it are looked at.
    for day in _liver_by_date(facts, ctx.now, given[0], limits.discontinuation_floor):
        over = _over(day, grade4)
        if over:
            rule_id = "lab-hold.hepatotoxicity-grade4"
            found[rule_id] = _graded_finding(rule_id, over, grade4, order)
        hys = _hys_law(day, protocol, order)
        if hys is not None:
            found["lab-hold.hys-law"] = hys
    return list(found.values())


def _persistent_grade3(
    facts: PatientFacts, order: DraftOrder | None, protocol: Protocol, ctx: EvaluationContext
) -> Finding | None:
    """The newest Grade 3 liver result after the last dose, unless a later final result meets the resume
    thresholds for ALT, AST and bilirubin (13.6)."""
    given = _given(facts)
    if not given:
        return None
    grade3, resume = protocol.liver_limits.grade3, protocol.liver_limits.resume
    days = _liver_by_date(facts, ctx.now, given[-1])
    for index in range(len(days) - 1, -1, -1):
        over = _over(days[index], grade3)
        if not over:
            continue
        later = [r for day in days[index + 1 :] for rs in day.values() for r in rs if r.final]
        newest = {a: next((r for r in reversed(later) if r.analyte == a), None) for a in resume}
        resumed = all(r is not None and r.above_uln(resume[a]) is False for a, r in newest.items())
        if resumed:
            return None
        return _graded_finding("lab-hold.hepatotoxicity-grade3", over, grade3, order)
    return None


def hepatic_findings(
    facts: PatientFacts, order: DraftOrder | None, protocol: Protocol, ctx: EvaluationContext, start: date | None
) -> list[Finding]:
    current = {a: governing(facts.labs.get(a, ()), start, ctx.now) for a in LIVER_ANALYTES}
    given = _given(facts)
    grade4, grade3 = protocol.liver_limits.grade4, protocol.liver_limits.grade3
    findings: dict[str, Finding] = {}
    over4 = _over(current, grade4)
    hys = _hys_law(current, protocol, order)
    treated = bool(given) and any(dated_after(r, given[0]) for rs in current.values() for r in rs)
    if treated:
        if over4:
            findings["lab-hold.hepatotoxicity-grade4"] = _graded_finding(
                "lab-hold.hepatotoxicity-grade4", over4, grade4, order
            )
        if hys is not None:
            findings["lab-hold.hys-law"] = hys
    for finding in _persistent_discontinuation(facts, order, protocol, ctx):
        findings.setdefault(finding.rule_id, finding)
    if findings:  # a discontinuation supersedes the Grade 3 withhold
        return list(findings.values())
    over3 = _over(current, grade3)
    if over3:
        return [_graded_finding("lab-hold.hepatotoxicity-grade3", over3, grade3, order)]
    if (over4 or hys is not None) and not treated:
        # Before the first dose a Grade 4 / Hy's-law result is a hold for this dose, not a discontinuation (13.16).
        over = over4 or _over(current, {a: 0.0 for a in current})
        return [_graded_finding("lab-hold.hepatotoxicity-grade3", over, grade3, order)]
    persistent = _persistent_grade3(facts, order, protocol, ctx)
    if persistent is not None:
        return [persistent]
    undecided = next(
        (r for rs in current.values() for r in rs if r.comparator and r.above_uln(grade3[r.analyte]) is None), None
    )
    if undecided is not None:  # e.g. ALT "<500": could be above 5 x ULN; never read as normal
        return [lab_limit(undecided, f"above {grade3[undecided.analyte]:g} x ULN", order)]
    return []


def lab_holds(
    facts: PatientFacts, order: DraftOrder | None, protocol: Protocol, ctx: EvaluationContext, start: date | None
) -> list[Finding]:
    findings = [
        f
        for f in (
            below_finding("lab-hold.anc", "anc", "anc_below", facts, order, protocol, ctx, start),
            below_finding("lab-hold.platelets", "platelets", "platelets_below", facts, order, protocol, ctx, start),
            below_finding("lab-hold.hemoglobin", "hemoglobin", "hemoglobin_below", facts, order, protocol, ctx, start),
        )
        if f is not None
    ]
    findings.extend(hepatic_findings(facts, order, protocol, ctx, start))
    return findings


def check_lab_holds(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return lab_holds(facts, order, protocol, ctx, window_start(order, protocol))


def current_lab_holds(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    """The holds that apply now: the newest result of each analyte, whatever its date (13.9)."""
    return lab_holds(facts, None, protocol, ctx, None)
