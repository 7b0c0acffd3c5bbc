"""Schedule position and expected dose (spec/protocol.md sections 2.1 and 2.2).

INTERFACE FIXED, IMPLEMENTATION PENDING (issue 3): other rule modules call `expected_dose`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from ..facts import Administration, PatientFacts, SchedulePosition
from ..protocol import Protocol


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


def expected_dose(facts: PatientFacts, planned_date: date, protocol: Protocol) -> ExpectedDose | None:
    """The expected position and dose of a dose planned for `planned_date`.

    None when the administration history is unavailable (`"administrations" in facts.unavailable`):
    callers then must not assume any position.
    """
    raise NotImplementedError
