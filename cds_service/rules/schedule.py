"""Expected dose of a planned administration (clinical specification section 2.2).

The positions of the given doses are facts (`facts.history`, section 2.1); this module reads them.
Positions: a sequence starts at the first dose ever given (C1D1, C1D8, C1D15, C2D1, C2D15, C3D1, ...) and
again at every restart dose (R1, 1 mg), followed by R2 (10 mg, which takes the next position number of the
first numbering) and maintenance doses that continue that numbering.

A restart applies when the gap from the last dose exceeds `schedule.max_gap_days` for the last dose's
position class, or when a first Grade 3 CRS episode began after the last dose.

Dates: gaps are whole calendar days between the local dates written in the resources. A toxicity episode
counts as "after a dose" when its onset date is on or after the date of that dose (a dose is never given
during an active episode, so an onset on the dosing day follows the dose).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from ..facts import Administration, PatientFacts, SchedulePosition, ToxicityEpisode
from ..facts.history import (
    C1D1,
    R1,
    continued_position,
    interval_after,
    is_dose,
    last_numbered,
    max_gap_after,
    onset_between,
    position_class,
    restart_reason,
)
from ..protocol import Protocol

__all__ = [
    "C1D1",
    "R1",
    "ExpectedDose",
    "describe_last",
    "doses_by",
    "earliest_date",
    "expected_dose",
    "interval_after",
    "is_dose",
    "max_gap_after",
    "onset_between",
    "position_class",
    "position_display",
]


@dataclass(frozen=True)
class ExpectedDose:
    """What the next administration should be, for a planned administration date."""

    position: SchedulePosition  # the position the planned dose takes (C1D1, C2D15, R1, R2 ...)
    dose_mg: int  # 1 or 10, never anything else
    reason: Literal["first-dose", "continue", "restart-delay", "restart-crs-grade3"]
    last: Administration | None  # the last dose given before the planned date
    gap_days: int | None  # whole calendar days from the last dose to the planned date
    max_gap_days: int | None  # the longest gap that continues the schedule after `last`
    interval_days: int | None  # the planned interval after `last` (7 or 14)
    crs_episode: ToxicityEpisode | None = None  # the Grade 3 CRS episode behind a restart-crs-grade3


# --- section 2.2: the expected next dose ------------------------------------------------------------
def doses_by(facts: PatientFacts, planned_date: date) -> tuple[Administration, ...]:
    """The doses given on or before `planned_date` (a dose already given that day counts as the last)."""
    return tuple(a for a in facts.administrations if a.local_date <= planned_date)


def expected_dose(facts: PatientFacts, planned_date: date, protocol: Protocol) -> ExpectedDose | None:
    """The expected position and dose of a dose planned for `planned_date`.

    None when the administration history is unavailable (`"administrations" in facts.unavailable`):
    callers then must not assume any position. Most order rules ask for it: computed once per facts object.
    """
    key = ("expected_dose", planned_date)
    known: tuple[Protocol, ExpectedDose | None] | None = facts.derived.get(key)
    if known is not None and known[0] is protocol:
        return known[1]
    expected = _expected_dose(facts, planned_date, protocol)
    facts.derived[key] = (protocol, expected)
    return expected


def _expected_dose(facts: PatientFacts, planned_date: date, protocol: Protocol) -> ExpectedDose | None:
    if "administrations" in facts.unavailable:
        return None
    doses = protocol.section("doses")
    step_up, target = int(doses["step_up_mg"]), int(doses["target_mg"])
    given = doses_by(facts, planned_date)
    if not given:
        return ExpectedDose(C1D1, step_up, "first-dose", None, None, None, None)
    last = given[-1]
    last_position = last.position
    if last_position is None:  # positions are always filled by the facts; never guessed here
        return None
    gap = (planned_date - last.local_date).days
    max_gap = max_gap_after(last_position, protocol)
    interval = interval_after(last_position, protocol)
    reason, episode = restart_reason(last, planned_date, facts.episodes, protocol)
    if reason is not None:
        return ExpectedDose(R1, step_up, reason, last, gap, max_gap, interval, crs_episode=episode)
    position = continued_position(last_position, last_numbered(given), protocol)
    return ExpectedDose(position, target, "continue", last, gap, max_gap, interval)


def position_display(expected: ExpectedDose | None) -> str:
    return expected.position.display if expected is not None else "position unknown"


def describe_last(expected: ExpectedDose) -> dict[str, Any]:
    """Card values about the last dose (position, date) of an expected-dose result."""
    last = expected.last
    if last is None:
        return {"last_position": "none", "last_date": "none", "gap_days": "-"}
    return {
        "last_position": last.position.display if last.position else "unknown",
        "last_date": last.local_date.isoformat(),
        "gap_days": expected.gap_days,
    }


def earliest_date(expected: ExpectedDose, protocol: Protocol) -> date | None:
    """The earliest date the next dose is not too early (interval - tolerance after the last dose)."""
    if expected.last is None or expected.interval_days is None:
        return None
    tolerance = int(protocol.section("schedule")["too_early_tolerance_days"])
    return expected.last.local_date + timedelta(days=expected.interval_days - tolerance)
