"""Order facts: draft tarlatamab orders, premedication / hydration orders, platinum history.

Reads MedicationRequest / MedicationStatement resources through `cds_service.reading`. Only the elements
the rules read are validated (clinical specification section 12): a draft whose `category` or `reasonCode` is
malformed is read as any other; an unreadable element the checks need (the dose, the planned date) is a
`DataIssue` of the draft ("critical" for the dose: the order cannot be verified).

Decisions where the spec is silent:
- An order without timing is planned for the evaluation date in the site's time zone (section 12).
- An active premedication order without timing is taken for the day it was authored (section 13.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from ..fhir_validation import first_problem
from ..protocol import Protocol
from ..reading.codes import codings, concept_text
from ..reading.dates import local_date
from ..reading.identity import reference_of
from ..reading.medications import MedicationIndex
from ..reading.quantities import as_written, convert, number_text, raw_unit_of
from .history import dose_from_quantity, product_dose
from .model import CompanionOrder, DataIssue, Dose, DraftOrder

_INACTIVE_REQUEST = frozenset({"cancelled", "entered-in-error", "stopped", "completed", "revoked"})
_NOT_GIVEN = frozenset({"not-done", "entered-in-error", "not-taken"})
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")

# The elements of a draft tarlatamab order the checks read; a problem anywhere else is ignored.
DRAFT_READ_ELEMENTS = frozenset(
    {"resourceType", "id", "medicationCodeableConcept", "medicationReference", "contained", "dosageInstruction"}
)

PlannedSource = Literal["timing.event", "timing.repeat.boundsPeriod.start", "evaluation time"]


@dataclass(frozen=True)
class OrderFacts:
    draft_orders: tuple[DraftOrder, ...] = ()
    companion_orders: tuple[CompanionOrder, ...] = ()
    platinum_history: tuple[str, ...] = ()
    issues: tuple[DataIssue, ...] = ()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _dosage_instructions(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in _list(resource.get("dosageInstruction")) if isinstance(d, dict)]


def _first_dose_and_rate(resource: dict[str, Any]) -> dict[str, Any] | None:
    instructions = _dosage_instructions(resource)
    if not instructions:
        return None
    rates = instructions[0].get("doseAndRate")
    if isinstance(rates, list) and rates and isinstance(rates[0], dict):
        return rates[0]
    return None


def _all_dose_and_rates(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        entry
        for instruction in _dosage_instructions(resource)
        for entry in _list(instruction.get("doseAndRate"))
        if isinstance(entry, dict)
    ]


def order_dose(resource: dict[str, Any], protocol: Protocol) -> Dose:
    """The dose of dosageInstruction[0].doseAndRate[0] (a range or a missing dose cannot be checked).

    Every other dose written on the order must state the same amount, else the dose cannot be verified.
    """
    entry = _first_dose_and_rate(resource)
    if entry is None or ("doseQuantity" not in entry and "doseRange" not in entry):
        return Dose(mg=None, problem="no dose stated")
    if "doseRange" in entry:
        rng = _mapping(entry["doseRange"])
        low, high = _mapping(rng.get("low")), _mapping(rng.get("high"))
        lo, hi = _number(low.get("value")), _number(high.get("value"))
        raw = f"{number_text(lo) if lo is not None else '?'}-{number_text(hi) if hi is not None else '?'}"
        unit = raw_unit_of(low) or raw_unit_of(high)
        return Dose(mg=None, raw_value=raw, raw_unit=unit, problem="the dose is a range, not a single amount")
    first = dose_from_quantity(entry["doseQuantity"], protocol)
    others = [e for e in _all_dose_and_rates(resource) if e is not entry and ("doseQuantity" in e or "doseRange" in e)]
    if not others:
        return first
    doses = [first] + [
        dose_from_quantity(e["doseQuantity"], protocol) if "doseQuantity" in e else Dose(mg=None) for e in others
    ]
    tolerance = float(protocol.section("doses")["tolerance_mg"])
    if all(d.mg is not None and first.mg is not None and abs(d.mg - first.mg) <= tolerance for d in doses):
        return first  # the same amount written more than once
    # Every dose written on the order is checked: a second instruction with another amount is not ignored.
    stated = "; ".join(d.display if d.raw_value is not None else "a dose range" for d in doses)
    return Dose(mg=None, raw_value=stated, raw_unit="", problem="several different doses are stated on the order")


def planned_date_of(resource: dict[str, Any]) -> tuple[date | None, PlannedSource | None, str | None]:
    """(planned date, source, unreadable value) from timing.event, else timing.repeat.boundsPeriod.start."""
    unreadable: str | None = None
    instructions = _dosage_instructions(resource)
    for instruction in instructions:
        timing = instruction.get("timing")
        events = timing.get("event") if isinstance(timing, dict) else None
        if isinstance(events, list) and events:
            day = local_date(events[0])
            if day is not None:
                return day, "timing.event", None
            unreadable = unreadable or as_written(events[0])
    for instruction in instructions:
        timing = instruction.get("timing")
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
        if isinstance(bounds, dict) and "start" in bounds:
            day = local_date(bounds["start"])
            if day is not None:
                return day, "timing.repeat.boundsPeriod.start", unreadable
            unreadable = unreadable or as_written(bounds["start"])
    return None, None, unreadable


def order_rate(resource: dict[str, Any], protocol: Protocol) -> tuple[float | None, str | None]:
    """(rate in mL/h, the rate as written when its unit could not be read) of doseAndRate[].rate[x]."""
    table = protocol.section("administration")["rate_unit_to_ml_per_h"]
    for instruction in _dosage_instructions(resource):
        for entry in _list(instruction.get("doseAndRate")):
            if not isinstance(entry, dict):
                continue
            if "rateQuantity" in entry:
                converted = convert(entry["rateQuantity"], table)
                if converted.problem is None and converted.comparator is None:
                    return converted.value, None
                return None, f"{converted.raw_value or 'no value'} {converted.raw_unit or '(no unit)'}"
            if "rateRatio" in entry or "rateRange" in entry:
                return None, "a rate written as a ratio or range"
    return None, None


def order_duration(resource: dict[str, Any], protocol: Protocol) -> tuple[float | None, str | None]:
    """(duration in minutes, the duration as written when its unit could not be read) of timing.repeat."""
    table = protocol.section("administration")["duration_unit_to_minutes"]
    for instruction in _dosage_instructions(resource):
        timing = instruction.get("timing")
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        if not isinstance(repeat, dict) or "duration" not in repeat:
            continue
        value = _number(repeat.get("duration"))
        unit = repeat.get("durationUnit")
        if value is not None and isinstance(unit, str) and unit in table:
            return value * float(table[unit]), None
        shown = number_text(value) if value is not None else "no value"
        return None, f"{shown} {unit if isinstance(unit, str) else '(no unit)'}"
    return None, None


# --- draft tarlatamab orders ----------------------------------------------------------------------------
def _selected_ids(selections: tuple[str, ...]) -> set[str]:
    return {s.split("/", 1)[1] for s in selections if s.startswith("MedicationRequest/")}


def _draft_issue(resource: dict[str, Any], message: str, element: str, affects: str, critical: bool) -> DataIssue:
    return DataIssue(
        kind="unusable",
        dataset="draftOrders",
        message=message,
        reference=f"MedicationRequest/{resource.get('id')}",
        element=element,
        affects=affects,
        severity="critical" if critical else "warning",
    )


def read_draft_order(
    resource: dict[str, Any],
    *,
    protocol: Protocol,
    today: date,
    selected: bool,
    index: MedicationIndex | None = None,
) -> tuple[DraftOrder, list[DataIssue]]:
    """A draft tarlatamab order; unreadable elements the checks need are issues, never a rejection."""
    issues: list[DataIssue] = []
    planned, source, unreadable = planned_date_of(resource)
    if unreadable is not None:
        issues.append(
            _draft_issue(
                resource,
                f"The planned administration time '{as_written(unreadable)}' has no full date; "
                + ("the next stated date was used." if planned else "the evaluation date was used."),
                "dosageInstruction.timing",
                "planned administration date",
                critical=False,
            )
        )
    if planned is None or source is None:
        planned, source = today, "evaluation time"
    dose = order_dose(resource, protocol)
    problem = first_problem(resource, DRAFT_READ_ELEMENTS)
    if problem is not None:
        element, message = problem
        reads = "dose" if "doseQuantity" in element or "doseRange" in element else "order"
        issues.append(
            _draft_issue(
                resource,
                f"The draft tarlatamab order could not be fully read ({element}: {message}); "
                f"the {reads} was not verified.",
                element,
                "tarlatamab order",
                critical=True,
            )
        )
    elif dose.mg is None and dose.problem not in ("several different doses are stated on the order",):
        issues.append(
            _draft_issue(
                resource,
                f"The dose of the draft tarlatamab order could not be read ({dose.problem}).",
                "dosageInstruction.doseAndRate.doseQuantity",
                "tarlatamab dose",
                critical=True,
            )
        )
    rate, rate_display = order_rate(resource, protocol)
    duration, duration_display = order_duration(resource, protocol)
    concept = (index or MedicationIndex(protocol)).concept(resource)
    order = DraftOrder(
        resource_id=str(resource.get("id")),
        status=str(resource.get("status")),
        planned_date=planned,
        planned_source=source,
        dose=dose,
        rate_ml_per_h=rate,
        rate_display=rate_display,
        duration_minutes=duration,
        duration_display=duration_display,
        selected=selected,
        resource=resource,
        product_mg=product_dose(concept, protocol),
    )
    return order, issues


# --- companion orders -------------------------------------------------------------------------------------
def _companion_kind(
    resource: dict[str, Any], index: MedicationIndex
) -> Literal["dexamethasone", "sodium_chloride"] | None:
    if resource.get("resourceType") != "MedicationRequest":
        return None
    kinds = index.kinds(resource)
    if "dexamethasone" in kinds:
        return "dexamethasone"
    if "sodium_chloride" in kinds:
        return "sodium_chloride"
    return None


_WORDS = re.compile(r"[a-z]+")


def order_route(resource: dict[str, Any], protocol: Protocol) -> tuple[str | None, bool | None]:
    """(route as written, whether it is intravenous) of dosageInstruction[0].route; (None, None) when absent."""
    instructions = _dosage_instructions(resource)
    route = instructions[0].get("route") if instructions else None
    if not isinstance(route, dict):
        return None, None
    premed = protocol.section("premedication")
    iv_codes = {str(c) for c in premed.get("iv_route_codes", ())}
    iv_text = [str(t).lower() for t in premed.get("iv_route_text", ())]
    shown = _text(route.get("text")) or next((d or c for _, c, d in codings(route) if d or c), None)
    if shown is None:
        return None, None
    if any(code in iv_codes for _, code, _ in codings(route)):
        return shown, True
    text = concept_text(route)
    words = set(_WORDS.findall(text))
    return shown, any(t in text if " " in t or len(t) > 3 else t in words for t in iv_text)


def saline_strength(concept: dict[str, Any] | None, protocol: Protocol) -> str | None:
    """The concentration written on a sodium chloride order when it is not 0.9% (None: 0.9% or not stated)."""
    wanted = float(protocol.section("premedication").get("saline_percent", 0.9))
    found = {float(m) for m in _PERCENT.findall(concept_text(concept))}
    if not found or wanted in found:
        return None
    return ", ".join(f"{number_text(p)}%" for p in sorted(found))


def read_companion(resource: dict[str, Any], index: MedicationIndex, *, in_request: bool) -> CompanionOrder | None:
    protocol = index.protocol
    kind = _companion_kind(resource, index)
    if kind is None:
        return None
    planned, _, _ = planned_date_of(resource)
    authored = local_date(resource.get("authoredOn"))
    entry = _first_dose_and_rate(resource) or {}
    quantity = entry.get("doseQuantity")
    if kind == "dexamethasone":
        converted = convert(quantity, protocol.section("doses")["unit_to_mg"], "mg")
    else:
        converted = convert(quantity, protocol.section("premedication")["volume_unit_to_ml"], "mL")
    amount = converted.value if converted.comparator is None else None
    if "doseRange" in entry:
        display = "a dose range"
    elif converted.raw_value is None:
        display = "no amount stated"
    else:
        display = f"{converted.raw_value} {converted.raw_unit or '(no unit)'}" + (
            f" ({converted.problem})" if converted.problem else ""
        )
    route, route_iv = order_route(resource, protocol)
    return CompanionOrder(
        resource_id=str(resource.get("id")),
        medication=kind,
        status=str(resource.get("status")),
        in_request=in_request,
        planned_date=planned,
        dose_mg=amount if kind == "dexamethasone" else None,
        volume_ml=amount if kind == "sodium_chloride" else None,
        dose_display=display,
        route=route,
        route_iv=route_iv,
        strength_display=saline_strength(index.concept(resource), protocol) if kind == "sodium_chloride" else None,
        authored_on=authored,
    )


def build_companions(
    draft_entries: tuple[dict[str, Any], ...], medications: Iterable[dict[str, Any]], index: MedicationIndex
) -> tuple[CompanionOrder, ...]:
    out: dict[str, CompanionOrder] = {}
    for resource in draft_entries:
        if _text(resource.get("status")) in _INACTIVE_REQUEST:
            continue
        companion = read_companion(resource, index, in_request=True)
        if companion is not None:
            out.setdefault(companion.resource_id, companion)
    for resource in medications:
        if _text(resource.get("status")) != "active":
            continue
        companion = read_companion(resource, index, in_request=False)
        if companion is not None:
            out.setdefault(companion.resource_id, companion)  # a draft of this request wins
    return tuple(out.values())


# --- platinum history ---------------------------------------------------------------------------------
def platinum_references(resources: Iterable[dict[str, Any]], index: MedicationIndex) -> tuple[str, ...]:
    refs: list[str] = []
    for r in resources:
        rtype = r.get("resourceType")
        if rtype not in ("MedicationRequest", "MedicationAdministration", "MedicationStatement"):
            continue
        if _text(r.get("status")) in _NOT_GIVEN or not index.is_(r, "platinum"):
            continue
        ref = reference_of(r, rtype)
        if ref not in refs:
            refs.append(ref)
    return tuple(refs)


def unidentified_medications(
    resources: Iterable[dict[str, Any]], index: MedicationIndex, dataset: str
) -> list[DataIssue]:
    """A `data-quality` warning for each order / administration whose medication cannot be identified."""
    issues: list[DataIssue] = []
    for r in resources:
        rtype = r.get("resourceType")
        if rtype not in ("MedicationRequest", "MedicationAdministration"):
            continue
        # An order that is no longer active, or a dose that was not given, cannot be a tarlatamab the checks
        # missed. A completed or stopped *administration* was given: unidentified, it is reported.
        inactive = _INACTIVE_REQUEST if rtype == "MedicationRequest" else _NOT_GIVEN
        if _text(r.get("status")) in inactive or index.identified(r):
            continue
        ref = r.get("medicationReference")
        target = ref.get("reference") if isinstance(ref, dict) else None
        written = f" (medication reference '{target}' could not be resolved)" if isinstance(target, str) else ""
        issues.append(
            DataIssue(
                "unusable",
                dataset,
                f"The medication of {reference_of(r, rtype)} cannot be identified{written}: if it is "
                "tarlatamab, it was not checked.",
                reference_of(r, rtype),
                "medicationReference" if written else "medication[x]",
                affects="medication identity",
            )
        )
    return issues


def build_order_facts(
    resources: dict[str, list[dict[str, Any]]],
    *,
    draft_entries: tuple[dict[str, Any], ...],
    selections: tuple[str, ...],
    hook: str,
    protocol: Protocol,
    today: date,
    index: MedicationIndex | None = None,
) -> OrderFacts:
    medications = [r for r in resources.get("medications") or () if isinstance(r, dict)]
    administered = [r for r in resources.get("administrations") or () if isinstance(r, dict)]
    draft_entries = tuple(r for r in draft_entries if isinstance(r, dict))
    index = index or MedicationIndex(protocol)
    issues: list[DataIssue] = []

    chosen = _selected_ids(selections)
    drafts: list[DraftOrder] = []
    for resource in draft_entries:
        if resource.get("resourceType") != "MedicationRequest" or not index.is_(resource, "tarlatamab"):
            continue
        selected = hook != "order-select" or str(resource.get("id")) in chosen
        order, found = read_draft_order(resource, protocol=protocol, today=today, selected=selected, index=index)
        drafts.append(order)
        issues.extend(found)
    issues.extend(unidentified_medications(draft_entries, index, "draftOrders"))
    issues.extend(unidentified_medications(administered, index, "administrations"))

    return OrderFacts(
        draft_orders=tuple(drafts),
        companion_orders=build_companions(draft_entries, medications, index),
        platinum_history=platinum_references([*medications, *administered], index),
        issues=tuple(issues),
    )
