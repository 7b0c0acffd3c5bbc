"""Order facts from MedicationRequest / MedicationAdministration / MedicationStatement resources.

Everything is selected with cheap dict work first (resource type, medication code, status); only the
selected tarlatamab administrations are validated with fhir.resources (the engine has already validated
the draft tarlatamab orders).

Decisions where the spec is silent:
- An administration whose status counts as given and whose date can be read counts as a dose even when the
  resource is otherwise invalid FHIR or its dose cannot be converted: a readable date means a dose was given,
  and leaving it out could make the service expect a step-up dose that was already given, or miss a too-early
  dose. The problem is reported as a DataIssue ("schedule position") so the clinician sees it.
- An administration whose date cannot be read (missing, or only a year/month) cannot be placed in the
  schedule: it is left out of the history and reported as a DataIssue.
- Dates are the YYYY-MM-DD part as written in the resource (no time-zone conversion). A date-time without
  an offset, or a bare date, is read as UTC for ordering doses given on the same day.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from .codes import MedicationIndex
from .facts import Administration, CompanionOrder, DataIssue, Dose, DraftOrder, ToxicityEpisode
from .fhir_validation import first_problem
from .protocol import Protocol
from .rules.schedule import assign_positions
from .units import table_factor

_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
_INACTIVE_REQUEST = frozenset({"cancelled", "entered-in-error", "stopped", "completed", "revoked"})
_NOT_GIVEN = frozenset({"not-done", "entered-in-error", "not-taken"})

PlannedSource = Literal["timing.event", "timing.repeat.boundsPeriod.start", "evaluation time"]


@dataclass(frozen=True)
class OrderFacts:
    administrations: tuple[Administration, ...] = ()
    draft_orders: tuple[DraftOrder, ...] = ()
    companion_orders: tuple[CompanionOrder, ...] = ()
    platinum_history: tuple[str, ...] = ()
    issues: tuple[DataIssue, ...] = ()


# --- small readers ----------------------------------------------------------------------------------
def local_date(value: Any) -> date | None:
    """The calendar date written in a FHIR date/dateTime string (None when it has no full date)."""
    if not isinstance(value, str):
        return None
    match = _DATE_RE.match(value)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def instant(value: str, day: date) -> datetime:
    """The moment of a FHIR dateTime (timezone-aware; a bare date or no offset is read as UTC)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = datetime(day.year, day.month, day.day)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def number_text(value: float) -> str:
    """A number as a clinician writes it (10, 0.5, 1000)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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


def quantity_unit(quantity: dict[str, Any]) -> str | None:
    """The unit of a Quantity: its UCUM `code`, else its `unit` text."""
    for key in ("code", "unit"):
        unit = quantity.get(key)
        if isinstance(unit, str) and unit.strip():
            return unit.strip()
    return None


def convert_quantity(quantity: Any, table: dict[str, Any]) -> tuple[float | None, str | None, str | None, str | None]:
    """(converted value, raw value, raw unit, problem) of a Quantity against a unit -> factor table."""
    if not isinstance(quantity, dict):
        return None, None, None, "no amount stated"
    value = _number(quantity.get("value"))
    unit = quantity_unit(quantity)
    if value is None:
        return None, None, unit, "no numeric amount stated"
    raw = number_text(value)
    if unit is None:
        return None, raw, None, "no unit stated"
    matched = table_factor(table, quantity)
    if matched is None:
        return None, raw, unit, f"the unit {unit!r} cannot be converted"
    return value * matched[0], raw, unit, None


def dose_from_quantity(quantity: Any, protocol: Protocol) -> Dose:
    """A tarlatamab dose in mg from a Quantity (units of `doses.unit_to_mg`)."""
    mg, raw, unit, problem = convert_quantity(quantity, protocol.section("doses")["unit_to_mg"])
    if problem is not None:
        problem = "no dose stated" if quantity is None else problem.replace("converted", "converted to mg")
    return Dose(mg=mg, raw_value=raw, raw_unit=unit, problem=problem)


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
        rng = entry["doseRange"] if isinstance(entry["doseRange"], dict) else {}
        low, high = _mapping(rng.get("low")), _mapping(rng.get("high"))
        lo, hi = _number(low.get("value")), _number(high.get("value"))
        raw = f"{number_text(lo) if lo is not None else '?'}-{number_text(hi) if hi is not None else '?'}"
        unit = quantity_unit(low) or quantity_unit(high)
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
    """(planned date, source, unreadable value) from timing.event, else timing.repeat.boundsPeriod.start.

    A value that is present but has no full date is returned as the third element (it is skipped).
    """
    unreadable: str | None = None
    instructions = _dosage_instructions(resource)
    for instruction in instructions:
        timing = instruction.get("timing")
        events = timing.get("event") if isinstance(timing, dict) else None
        if isinstance(events, list) and events:
            day = local_date(events[0])
            if day is not None:
                return day, "timing.event", None
            unreadable = unreadable or str(events[0])
    for instruction in instructions:
        timing = instruction.get("timing")
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
        if isinstance(bounds, dict) and "start" in bounds:
            day = local_date(bounds["start"])
            if day is not None:
                return day, "timing.repeat.boundsPeriod.start", unreadable
            unreadable = unreadable or str(bounds["start"])
    return None, None, unreadable


def order_rate(resource: dict[str, Any], protocol: Protocol) -> tuple[float | None, str | None]:
    """(rate in mL/h, the rate as written when its unit could not be read) of doseAndRate[].rate[x]."""
    table = protocol.section("administration")["rate_unit_to_ml_per_h"]
    for instruction in _dosage_instructions(resource):
        for entry in _list(instruction.get("doseAndRate")):
            if not isinstance(entry, dict):
                continue
            if "rateQuantity" in entry:
                value, raw, unit, problem = convert_quantity(entry["rateQuantity"], table)
                if problem is None:
                    return value, None
                return None, f"{raw or 'no value'} {unit or '(no unit)'}"
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


# --- administrations ----------------------------------------------------------------------------------
def _administration_issue(resource: dict[str, Any], message: str, element: str | None) -> DataIssue:
    return DataIssue(
        kind="unusable",
        dataset="administrations",
        message=message,
        reference=f"MedicationAdministration/{resource.get('id')}",
        element=element,
        affects="schedule position",
    )


def read_administration(resource: dict[str, Any], protocol: Protocol) -> tuple[Administration | None, list[DataIssue]]:
    """A given tarlatamab dose (None when its date cannot be read), with the problems found in it."""
    issues: list[DataIssue] = []
    problem = first_problem(resource)
    if problem is not None:
        element, message = problem
        issues.append(_administration_issue(resource, f"The administration is not valid FHIR: {message}.", element))
    period = resource.get("effectivePeriod")
    written = resource.get("effectiveDateTime")
    element = "effectiveDateTime"
    if written is None and isinstance(period, dict):
        written, element = period.get("start"), "effectivePeriod.start"
    day = local_date(written)
    if day is None or not isinstance(written, str):
        issues.append(
            _administration_issue(
                resource,
                "A tarlatamab dose is recorded without a readable date; it could not be placed in the schedule, "
                "so the schedule position of the next dose may be wrong.",
                element,
            )
        )
        return None, issues
    dosage = resource.get("dosage")
    dose = dose_from_quantity(dosage.get("dose") if isinstance(dosage, dict) else None, protocol)
    if dose.mg is None:
        issues.append(
            _administration_issue(
                resource,
                f"The dose given on {day.isoformat()} could not be read ({dose.problem}); a restart step-up dose "
                "cannot be recognised.",
                "dosage.dose",
            )
        )
    adm = Administration(
        resource_id=str(resource.get("id")),
        status=str(resource.get("status")),
        start=instant(written, day),
        local_date=day,
        dose=dose,
    )
    return adm, issues


def given_tarlatamab(resources: Iterable[dict[str, Any]], index: MedicationIndex) -> list[dict[str, Any]]:
    """Tarlatamab MedicationAdministrations whose status counts as a dose given (cheap dict work)."""
    statuses = set(index.protocol.data["administration_statuses_given"])
    return [
        r
        for r in resources
        if r.get("resourceType") == "MedicationAdministration"
        and _text(r.get("status")) in statuses
        and index.is_(r, "tarlatamab")
    ]


def build_administrations(
    resources: Iterable[dict[str, Any]],
    episodes: tuple[ToxicityEpisode, ...],
    protocol: Protocol,
    index: MedicationIndex | None = None,
) -> tuple[tuple[Administration, ...], list[DataIssue]]:
    issues: list[DataIssue] = []
    doses: list[Administration] = []
    for resource in given_tarlatamab(resources, index or MedicationIndex(protocol)):
        adm, found = read_administration(resource, protocol)
        issues.extend(found)
        if adm is not None:
            doses.append(adm)
    doses.sort(key=lambda a: (a.local_date, a.start, a.resource_id))
    return assign_positions(doses, episodes, protocol), issues


# --- draft tarlatamab orders ----------------------------------------------------------------------------
def _selected_ids(selections: tuple[str, ...]) -> set[str]:
    return {s.split("/", 1)[1] for s in selections if s.startswith("MedicationRequest/")}


def read_draft_order(
    resource: dict[str, Any], *, protocol: Protocol, now: datetime, selected: bool
) -> tuple[DraftOrder, list[DataIssue]]:
    issues: list[DataIssue] = []
    planned, source, unreadable = planned_date_of(resource)
    if unreadable is not None:
        issues.append(
            DataIssue(
                kind="unusable",
                dataset="draftOrders",
                message=f"The planned administration time {unreadable!r} has no full date; "
                + ("the next stated date was used." if planned else "the evaluation date was used."),
                reference=f"MedicationRequest/{resource.get('id')}",
                element="dosageInstruction.timing",
                affects="planned administration date",
            )
        )
    if planned is None or source is None:
        planned, source = now.date(), "evaluation time"
    rate, rate_display = order_rate(resource, protocol)
    duration, duration_display = order_duration(resource, protocol)
    order = DraftOrder(
        resource_id=str(resource.get("id")),
        status=str(resource.get("status")),
        planned_date=planned,
        planned_source=source,
        dose=order_dose(resource, protocol),
        rate_ml_per_h=rate,
        rate_display=rate_display,
        duration_minutes=duration,
        duration_display=duration_display,
        selected=selected,
        resource=resource,
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


def read_companion(resource: dict[str, Any], index: MedicationIndex, *, in_request: bool) -> CompanionOrder | None:
    protocol = index.protocol
    kind = _companion_kind(resource, index)
    if kind is None:
        return None
    planned, _, _ = planned_date_of(resource)
    if planned is None and not in_request:
        # An active order without timing is taken for the day it was written; a draft of this request is not
        # dated by authoredOn (the day the order set is composed), it goes with the doses it is signed with.
        planned = local_date(resource.get("authoredOn"))
    entry = _first_dose_and_rate(resource) or {}
    quantity = entry.get("doseQuantity")
    dose_mg = volume_ml = None
    if kind == "dexamethasone":
        dose_mg, raw, unit, problem = convert_quantity(quantity, protocol.section("doses")["unit_to_mg"])
    else:
        table = protocol.section("premedication")["volume_unit_to_ml"]
        volume_ml, raw, unit, problem = convert_quantity(quantity, table)
    if "doseRange" in entry:
        display = "a dose range"
    elif raw is None:
        display = "no amount stated"
    else:
        display = f"{raw} {unit or '(no unit)'}" + (f" ({problem})" if problem else "")
    return CompanionOrder(
        resource_id=str(resource.get("id")),
        medication=kind,
        status=str(resource.get("status")),
        in_request=in_request,
        planned_date=planned,
        dose_mg=dose_mg,
        volume_ml=volume_ml,
        dose_display=display,
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
        ref = f"{rtype}/{r.get('id')}"
        if ref not in refs:
            refs.append(ref)
    return tuple(refs)


def build_order_facts(
    resources: dict[str, list[dict[str, Any]]],
    *,
    draft_entries: tuple[dict[str, Any], ...],
    selections: tuple[str, ...],
    hook: str,
    protocol: Protocol,
    now: datetime,
    episodes: tuple[ToxicityEpisode, ...],
) -> OrderFacts:
    medications = [r for r in resources.get("medications") or () if isinstance(r, dict)]
    administered = [r for r in resources.get("administrations") or () if isinstance(r, dict)]
    draft_entries = tuple(r for r in draft_entries if isinstance(r, dict))
    index = MedicationIndex(protocol)
    administrations, issues = build_administrations(administered, episodes, protocol, index)

    chosen = _selected_ids(selections)
    drafts: list[DraftOrder] = []
    for resource in draft_entries:
        if resource.get("resourceType") != "MedicationRequest" or not index.is_(resource, "tarlatamab"):
            continue
        selected = hook != "order-select" or str(resource.get("id")) in chosen
        order, found = read_draft_order(resource, protocol=protocol, now=now, selected=selected)
        drafts.append(order)
        issues.extend(found)

    return OrderFacts(
        administrations=administrations,
        draft_orders=tuple(drafts),
        companion_orders=build_companions(draft_entries, medications, index),
        platinum_history=platinum_references([*medications, *administered], index),
        issues=tuple(issues),
    )
