"""Protocol rules: small pure functions of (facts, protocol, evaluation context) -> findings.

Per-order rules take the draft tarlatamab order they judge; patient rules judge the patient as a whole.
No rule reads the clock: the evaluation time is `EvaluationContext.now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class EvaluationContext:
    hook: str  # order-sign, order-select or patient-view
    now: datetime
    local_today: date | None = None  # the evaluation time's local date in the site time zone

    @property
    def today(self) -> date:
        return self.local_today or self.now.date()
