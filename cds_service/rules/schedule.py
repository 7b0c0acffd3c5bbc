"""Schedule position and expected dose (spec/protocol.md sections 2.1 and 2.2).

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any, Literal

from ..facts import Administration, PatientFacts, SchedulePosition, ToxicityEpisode
from ..protocol import Protocol

PositionClass = Literal["step-up", "first-target", "restart-target", "later"]
RestartReason = Literal["restart-delay", "restart-crs-grade3"]

R1 = SchedulePosition(label="R1", cycle=None, day=None, restart_step=1)
C1D1 = SchedulePosition(label="C1D1", cycle=1, day=1)


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


# --- position arithmetic ----------------------------------------------------------------------------
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


# --- toxicity -----------------------------------------------------------------------------------------
def onset_between(episode: ToxicityEpisode, after: date, until: date) -> bool:
    """Whether an episode began on or after the dose dated `after` and no later than `until`."""
    onset = episode.onset.date()
    return after <= onset <= until


def first_grade3_crs(episodes: Iterable[ToxicityEpisode]) -> ToxicityEpisode | None:
    """The first Grade 3 CRS episode (a second one, or any Grade 4, discontinues: another rule's card).

    Only Grade 3 re-initiates with the step-up schedule (spec 6.2); Grade 4 is a permanent discontinuation and
    must not be presented as a re-initiation.
    """
    severe = sorted((e for e in episodes if e.kind == "crs" and e.grade == 3), key=lambda e: e.onset)
    return severe[0] if severe else None


def crs_restart_episode(
    episodes: Sequence[ToxicityEpisode], last: Administration, until: date
) -> ToxicityEpisode | None:
    """The first Grade 3 CRS episode when it began after `last` (and by `until`): re-initiate at 1 mg."""
    episode = first_grade3_crs(episodes)
    if episode is not None and onset_between(episode, last.local_date, until):
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
    """Why a dose on `day` must restart the step-up after `last` (None when the schedule continues).

    `onset_until`: the latest onset date of a CRS episode that counts (default `day`).
    """
    if last.position is None:
        return None, None
    episode = crs_restart_episode(episodes, last, onset_until or day)
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


def _last_numbered(administrations: Sequence[Administration]) -> SchedulePosition | None:
    for adm in reversed(administrations):
        if adm.position is not None and adm.position.restart_step != 1:
            return adm.position
    return None


def is_dose(mg: float | None, target: float, protocol: Protocol) -> bool:
    return mg is not None and abs(mg - target) <= float(protocol.section("doses")["tolerance_mg"])


# --- section 2.1: positions of the given doses -----------------------------------------------------
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
        position = continued_position(last.position, _last_numbered(placed), protocol)
        placed.append(replace(adm, position=position, restart_reason=None))
    return tuple(placed)


# --- section 2.2: the expected next dose ------------------------------------------------------------
def doses_by(facts: PatientFacts, planned_date: date) -> tuple[Administration, ...]:
    """The doses given on or before `planned_date` (a dose already given that day counts as the last)."""
    return tuple(a for a in facts.administrations if a.local_date <= planned_date)


def expected_dose(facts: PatientFacts, planned_date: date, protocol: Protocol) -> ExpectedDose | None:
    """The expected position and dose of a dose planned for `planned_date`.

    None when the administration history is unavailable (`"administrations" in facts.unavailable`):
    callers then must not assume any position.
    """
    if "administrations" in facts.unavailable:
        return None
    doses = protocol.section("doses")
    step_up, target = int(doses["step_up_mg"]), int(doses["target_mg"])
    given = doses_by(facts, planned_date)
    if not given:
        return ExpectedDose(C1D1, step_up, "first-dose", None, None, None, None)
    last = given[-1]
    last_position = last.position
    if last_position is None:  # positions are always filled by build_order_facts; recompute if not
        placed = assign_positions(given, facts.episodes, protocol)
        last, last_position = placed[-1], placed[-1].position
        given = placed
    assert last_position is not None
    gap = (planned_date - last.local_date).days
    max_gap = max_gap_after(last_position, protocol)
    interval = interval_after(last_position, protocol)
    reason, episode = restart_reason(last, planned_date, facts.episodes, protocol)
    if reason is not None:
        return ExpectedDose(R1, step_up, reason, last, gap, max_gap, interval, crs_episode=episode)
    position = continued_position(last_position, _last_numbered(given), protocol)
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
