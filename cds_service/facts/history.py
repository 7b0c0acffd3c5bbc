"""Tarlatamab administration history: one dose per local date, and the schedule position of each dose.

Reads MedicationAdministrations through `reading.administrations` (status policy of the clinical specification
section 12) and places the doses in the schedule (section 2.1). The position arithmetic lives here, in the
facts, so that the rules (`rules.schedule`) only read positions and never rebuild them.

- Split administrations: the records of one local date are one dose (doses added: 0.3 mg + 0.7 mg = 1 mg);
  a split or interrupted infusion never shifts the position.
- A record without `dosage.dose` takes its dose from its product (1 mg kit, 10 mg kit). Only when neither
  tells the dose and that dose decides the expected dose (the last dose, or a dose of the current
  sequence) is a data-quality issue raised, once for the request.
- `unknown` status: counted as given, with a data-quality issue saying the position assumes so.
- A record whose date cannot be read cannot be placed: it is left out and reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any, Literal

from ..fhir_validation import first_problem
from ..protocol import Protocol
from ..reading import administrations as adm_reading
from ..reading.codes import ndc_products
from ..reading.dates import When, after
from ..reading.identity import record_id, reference_of
from ..reading.medications import MedicationIndex, product_products
from ..reading.quantities import convert, number_text
from .model import Administration, DataIssue, Dose, SchedulePosition, ToxicityEpisode

PositionClass = Literal["step-up", "first-target", "restart-target", "later"]
RestartReason = Literal["restart-delay", "restart-crs-grade3"]

R1 = SchedulePosition(label="R1", cycle=None, day=None, restart_step=1)
C1D1 = SchedulePosition(label="C1D1", cycle=1, day=1)


# --- doses -------------------------------------------------------------------------------------------
def dose_from_quantity(quantity: Any, protocol: Protocol) -> Dose:
    """A tarlatamab dose in mg from a Quantity (units of `doses.unit_to_mg`)."""
    if quantity is None:
        return Dose(mg=None, problem="no dose stated")
    converted = convert(quantity, protocol.section("doses")["unit_to_mg"], "mg")
    problem = converted.problem
    if problem is None and converted.comparator is not None:
        problem = "the dose is written as a limit, not an amount"
    raw_value = converted.raw_value
    if raw_value is not None and converted.comparator:
        raw_value = f"{converted.comparator}{raw_value}"
    if problem == "no value":
        problem = "no numeric amount stated"
    return Dose(
        mg=None if problem else converted.value, raw_value=raw_value, raw_unit=converted.raw_unit, problem=problem
    )


def kit_strengths(protocol: Protocol) -> dict[str, float]:
    """9-digit NDC product code -> mg of the tarlatamab kits (protocol `orderables.tarlatamab_kits`)."""
    out: dict[str, float] = {}
    for mg, coding in protocol.section("orderables")["tarlatamab_kits"].items():
        for product in ndc_products(str(coding["code"])):
            out[product] = float(mg)
    return out


def product_dose(concept: dict[str, Any] | None, protocol: Protocol) -> float | None:
    """The strength of the tarlatamab kit a medication concept names (None: no kit, or two different kits)."""
    strengths = kit_strengths(protocol)
    found = {strengths[p] for p in product_products(concept, protocol) if p in strengths}
    return found.pop() if len(found) == 1 else None


# --- reading the records -----------------------------------------------------------------------------
def _issue(reference: str, message: str, element: str | None, affects: str = "schedule position") -> DataIssue:
    return DataIssue("unusable", "administrations", message, reference, element, affects=affects)


def given_tarlatamab(resources: Iterable[dict[str, Any]], index: MedicationIndex) -> list[dict[str, Any]]:
    """Tarlatamab MedicationAdministrations whose status counts as given (or assumed given)."""
    return [
        r
        for r in resources
        if isinstance(r, dict)
        and r.get("resourceType") == "MedicationAdministration"
        and adm_reading.given_class(r) != "not-given"
        and index.is_(r, "tarlatamab")
    ]


def first_dose_date(resources: Iterable[dict[str, Any]], index: MedicationIndex) -> date | None:
    """The local date of the first tarlatamab dose given (None: never treated)."""
    dates = [
        when.local_date
        for r in given_tarlatamab(resources, index)
        if (when := adm_reading.administration_when(r)[0]) is not None
    ]
    return min(dates) if dates else None


def read_administration(
    resource: dict[str, Any], protocol: Protocol, index: MedicationIndex | None = None
) -> tuple[Administration | None, list[DataIssue]]:
    """One administration record (None when its date cannot be read), with the problems found in it."""
    issues: list[DataIssue] = []
    reference = reference_of(resource, "MedicationAdministration")
    problem = first_problem(resource, adm_reading.READ_ELEMENTS)
    if problem is not None:
        element, message = problem
        issues.append(_issue(reference, f"The administration is not valid FHIR: {message}.", element))
    when, element, _ = adm_reading.administration_when(resource)
    if when is None:
        issues.append(
            _issue(
                reference,
                "A tarlatamab dose is recorded without a readable date; it could not be placed in the schedule, "
                "so the schedule position of the next dose may be wrong.",
                element,
            )
        )
        return None, issues
    if adm_reading.given_class(resource) == "assumed-given":
        issues.append(
            _issue(
                reference,
                f"A tarlatamab dose of {when.local_date.isoformat()} has "
                + ("status 'unknown'" if adm_reading.status_written(resource) else "no FHIR status")
                + "; the schedule position assumes it was given.",
                "status",
                affects="schedule position (assumed given)",
            )
        )
    quantity = adm_reading.dose_quantity(resource)
    dose = dose_from_quantity(quantity, protocol)
    source: Literal["dosage", "product", "none"] = "dosage"
    if quantity is None:
        concept = (index or MedicationIndex(protocol)).concept(resource)
        kit = product_dose(concept, protocol)
        if kit is not None:
            dose = Dose(mg=kit, raw_value=number_text(kit), raw_unit="mg (from the product)")
            source = "product"
        else:
            source = "none"
    elif dose.mg is None:
        source = "none"
    adm = Administration(
        resource_id=record_id(resource),
        status=str(resource.get("status")),
        start=when.moment,
        local_date=when.local_date,
        dose=dose,
        instant=when.instant,
        records=(record_id(resource),),
        dose_source=source,
    )
    return adm, issues


def merge_same_day(records: Sequence[Administration]) -> Administration:
    """The records of one local date as one dose (split or interrupted infusion)."""
    if len(records) == 1:
        return records[0]
    first = records[0]
    ids = tuple(i for r in records for i in r.records)
    if all(r.dose_source == "dosage" and r.dose.mg is not None for r in records):
        total = sum(r.dose.mg for r in records if r.dose.mg is not None)
        dose = Dose(mg=total, raw_value=number_text(round(total, 6)), raw_unit="mg (records of the day added)")
        source: Literal["dosage", "product", "none"] = "dosage"
    elif all(r.dose_source == "product" for r in records) and len({r.dose.mg for r in records}) == 1:
        dose, source = first.dose, "product"
    else:
        shown = "; ".join(r.dose.display for r in records)
        dose = Dose(mg=None, raw_value=shown, raw_unit="", problem="the day's records do not all state a dose")
        source = "none"
    return replace(first, resource_id=first.resource_id, records=ids, dose=dose, dose_source=source)


def one_dose_per_date(records: Sequence[Administration]) -> list[Administration]:
    by_date: dict[date, list[Administration]] = {}
    for record in sorted(records, key=lambda a: (a.local_date, a.start, a.resource_id)):
        by_date.setdefault(record.local_date, []).append(record)
    return [merge_same_day(day) for _, day in sorted(by_date.items())]


def undecided_dose_issue(doses: Sequence[Administration]) -> DataIssue | None:
    """One issue for the doses whose amount is unknown and decides the expected dose (last or current sequence)."""
    if not doses:
        return None
    start = max((i for i, a in enumerate(doses) if a.position is not None and a.position.restart_step == 1), default=0)
    deciding = [a for i, a in enumerate(doses) if a.dose.mg is None and (i >= start or i == len(doses) - 1)]
    if not deciding:
        return None
    dates = ", ".join(a.local_date.isoformat() for a in deciding)
    return DataIssue(
        "unusable",
        "administrations",
        f"The amount of the tarlatamab dose given on {dates} is not recorded (no dose and no identifiable kit); "
        "a restart step-up dose cannot be recognised, so the expected dose may be wrong.",
        ", ".join(a.reference for a in deciding),
        "dosage.dose",
        affects="schedule position",
    )


def build_administrations(
    resources: Iterable[dict[str, Any]],
    episodes: tuple[ToxicityEpisode, ...],
    protocol: Protocol,
    index: MedicationIndex | None = None,
) -> tuple[tuple[Administration, ...], list[DataIssue]]:
    index = index or MedicationIndex(protocol)
    issues: list[DataIssue] = []
    records: list[Administration] = []
    for resource in given_tarlatamab(resources, index):
        adm, found = read_administration(resource, protocol, index)
        issues.extend(found)
        if adm is not None:
            records.append(adm)
    doses = assign_positions(one_dose_per_date(records), episodes, protocol)
    undecided = undecided_dose_issue(doses)
    if undecided is not None:
        issues.append(undecided)
    return doses, issues


def future_dose_issues(doses: Iterable[Administration], now: datetime, today: date) -> list[DataIssue]:
    """A tarlatamab dose recorded for after the time of the check (a date typed wrong, a local time written as
    UTC) is reported: the schedule cannot tell whether it was given. `today`: the site's local date."""
    return [
        _issue(
            f"MedicationAdministration/{dose.resource_id}",
            f"A tarlatamab dose is recorded for {dose.local_date.isoformat()}, after the time of this check: "
            "check its date; the schedule position may be wrong.",
            "effective[x]",
        )
        for dose in doses
        if When(dose.local_date, dose.instant).after(now, today)
    ]


# --- position arithmetic (section 2.1) ----------------------------------------------------------------
def position_class(position: SchedulePosition) -> PositionClass:
    """The class of a given dose that decides the longest gap and the interval after it."""
    if position.restart_step == 1 or position.label == "C1D1":
        return "step-up"
    if position.restart_step == 2:
        return "restart-target"
    if position.label == "C1D8":
        return "first-target"
    return "later"


def max_gap_after(position: SchedulePosition, protocol: Protocol) -> int:
    """Longest gap (days) after a dose at `position` that still continues the schedule (label Table 4)."""
    gaps = protocol.section("schedule")["max_gap_days"]
    cls = position_class(position)
    if cls == "step-up":
        return int(gaps["after_step_up"])
    if cls in ("first-target", "restart-target"):  # R2 is treated as C1D8 [P]
        return int(gaps["after_first_target"])
    return int(gaps["after_later"])


def interval_after(position: SchedulePosition, protocol: Protocol) -> int:
    """Planned interval (days) from a dose at `position` to the next dose."""
    intervals = protocol.section("schedule")["interval_days"]
    key = {
        "step-up": "after_step_up",
        "first-target": "after_first_target",
        "restart-target": "after_restart_target",
        "later": "after_later",
    }[position_class(position)]
    return int(intervals[key])


def numbered(cycle: int, day: int) -> SchedulePosition:
    return SchedulePosition(label=f"C{cycle}D{day}", cycle=cycle, day=day)


def next_numbered(position: SchedulePosition | None, protocol: Protocol) -> SchedulePosition:
    """The numbered position after `position` (C1D1 -> C1D8 -> C1D15 -> C2D1 -> C2D15 -> C3D1 ...)."""
    if position is None or position.cycle is None or position.day is None:
        return C1D1
    schedule = protocol.section("schedule")
    days = [int(d) for d in (schedule["first_cycle_days"] if position.cycle == 1 else schedule["maintenance_days"])]
    later = [d for d in days if d > position.day]
    if later:
        return numbered(position.cycle, later[0])
    return numbered(position.cycle + 1, int(schedule["maintenance_days"][0]))


def episode_after_dose(episode: ToxicityEpisode, dose: Administration) -> bool:
    """Whether an episode began after a dose: instants when both carry a time and offset, else local dates."""
    return after(
        episode.onset_local, episode.onset if episode.onset_exact else None, dose.local_date, dose.instant
    )


def onset_between(episode: ToxicityEpisode, after_dose: Administration | date, until: date) -> bool:
    """Whether an episode began after the dose `after_dose` (or on/after that date) and by `until`."""
    if episode.onset_local > until:
        return False
    if isinstance(after_dose, Administration):
        return episode_after_dose(episode, after_dose)
    return episode.onset_local >= after_dose


def first_grade3_crs(episodes: Iterable[ToxicityEpisode]) -> ToxicityEpisode | None:
    """The first Grade 3 CRS episode (a second one, or any Grade 4, discontinues: another rule's card)."""
    severe = sorted((e for e in episodes if e.kind == "crs" and e.grade == 3), key=lambda e: e.onset)
    return severe[0] if severe else None


def crs_restart_episode(
    episodes: Sequence[ToxicityEpisode], last: Administration, until: date, protocol: Protocol | None = None
) -> ToxicityEpisode | None:
    """The first Grade 3 CRS episode when it began after `last` (and by `until`): re-initiate at 1 mg.

    A site whose protocol says `toxicity.crs_grade3_restart: next-scheduled-dose` resumes instead (13.14).
    """
    if protocol is not None and protocol.section("toxicity").get("crs_grade3_restart", "step-up") != "step-up":
        return None
    episode = first_grade3_crs(episodes)
    if episode is not None and onset_between(episode, last, until):
        return episode
    return None


def restart_reason(
    last: Administration,
    day: date,
    episodes: Sequence[ToxicityEpisode],
    protocol: Protocol,
    *,
    onset_until: date | None = None,
) -> tuple[RestartReason | None, ToxicityEpisode | None]:
    """Why a dose on `day` must restart the step-up after `last` (None when the schedule continues)."""
    if last.position is None:
        return None, None
    episode = crs_restart_episode(episodes, last, onset_until or day, protocol)
    if episode is not None:
        return "restart-crs-grade3", episode
    if (day - last.local_date).days > max_gap_after(last.position, protocol):
        return "restart-delay", None
    return None, None


def continued_position(
    last: SchedulePosition, last_numbered: SchedulePosition | None, protocol: Protocol
) -> SchedulePosition:
    """The position of the dose after `last` when the schedule continues (R1 -> R2, else next number)."""
    following = next_numbered(last_numbered, protocol)
    if last.restart_step == 1:
        return replace(following, restart_step=2)
    return following


def last_numbered(administrations: Sequence[Administration]) -> SchedulePosition | None:
    for adm in reversed(administrations):
        if adm.position is not None and adm.position.restart_step != 1:
            return adm.position
    return None


def is_dose(mg: float | None, target: float, protocol: Protocol) -> bool:
    return mg is not None and abs(mg - target) <= float(protocol.section("doses")["tolerance_mg"])


def assign_positions(
    administrations: Sequence[Administration], episodes: Sequence[ToxicityEpisode], protocol: Protocol
) -> tuple[Administration, ...]:
    """The doses (oldest first) with `position` and `restart_reason` filled in (section 2.1 algorithm).

    A restart dose is a 1 mg dose given when a restart rule applied; a 10 mg dose given where a restart
    applied does not start a new sequence (the dose check flags such an order before it is given).
    """
    step_up = float(protocol.section("doses")["step_up_mg"])
    placed: list[Administration] = []
    for adm in administrations:
        if not placed:
            placed.append(replace(adm, position=C1D1, restart_reason=None))
            continue
        last = placed[-1]
        assert last.position is not None
        # An episode that began on the date of a later dose followed that dose (nobody doses during CRS).
        before = adm.local_date - timedelta(days=1)
        reason, _ = restart_reason(last, adm.local_date, episodes, protocol, onset_until=before)
        if reason is not None and is_dose(adm.dose.mg, step_up, protocol):
            kind = "delay" if reason == "restart-delay" else "crs-grade3"
            placed.append(replace(adm, position=R1, restart_reason=kind))
            continue
        position = continued_position(last.position, last_numbered(placed), protocol)
        placed.append(replace(adm, position=position, restart_reason=None))
    return tuple(placed)
