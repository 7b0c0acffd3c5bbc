"""FHIR dates and date-times (clinical specification section 12, "Dates and time zones").

A record's moment is read as two things: the **local date as written** (used for calendar-day arithmetic:
gaps, windows, "within N days") and, when the value carries a time **and** an offset, the **instant**
(used to order events, e.g. "was the toxicity after that dose?"). The evaluation time is turned into a local
date in the site's time zone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


@dataclass(frozen=True, slots=True)
class When:
    """A point in a record: the local date as written and, when a time and offset exist, the instant.

    `moment` is the instant when known, else the start of the local date read as UTC: it compares a record with
    the evaluation time; it never decides calendar-day arithmetic. Records are put in order (newest result,
    order of grades) with `event_sort_key`.
    """

    local_date: date
    instant: datetime | None

    @property
    def moment(self) -> datetime:
        if self.instant is not None:
            return self.instant
        return datetime(self.local_date.year, self.local_date.month, self.local_date.day, tzinfo=UTC)

    @property
    def exact(self) -> bool:
        return self.instant is not None

    def after(self, now: datetime, today: date) -> bool:
        """Whether the record is dated after the time of the check: its instant after `now`, or, without one,
        its local date after the site's `today`."""
        return self.instant > now if self.instant is not None else self.local_date > today


def event_sort_key(whens: Iterable[When]) -> Callable[[When], Any]:
    """A sort key that puts these records in event order, the same whatever order they come in.

    When every record has an instant: the instants (section 12: instants when both records carry a time and an
    offset). When one has only a date: local dates, then the moment: a date-only "2026-11-20" comes after
    "2026-11-19T22:00:00-05:00", whose instant is later than 2026-11-20T00:00Z. (Comparing pair by pair, instants
    here and dates there, is not an order at all: the newest record would depend on the order received.)
    """
    if all(when.instant is not None for when in whens):
        return _instant_of
    return _date_then_moment


def _instant_of(when: When) -> Any:
    return when.instant


def _date_then_moment(when: When) -> Any:
    return (when.local_date, when.moment)


def read_when(value: Any) -> When | None:
    """A FHIR date / dateTime / instant string; None when absent, partial (year, year-month) or invalid."""
    if not isinstance(value, str):
        return None
    return _read_text(value.strip())


@functools.lru_cache(maxsize=16384)  # a record's dates recur on every call for the same patient
def _read_text(text: str) -> When | None:
    try:
        if _DATE_RE.match(text):
            return When(date.fromisoformat(text), None)
        if _DATETIME_RE.match(text):
            moment = datetime.fromisoformat(text)
            written = moment.date()
            return When(written, moment if moment.tzinfo is not None else None)
    except ValueError:
        return None
    return None


def local_date(value: Any) -> date | None:
    """The calendar date written in a FHIR date/dateTime string (None when it has no full, valid date)."""
    when = read_when(value)
    return when.local_date if when is not None else None


def after(
    later_date: date, later_instant: datetime | None, earlier_date: date, earlier_instant: datetime | None
) -> bool:
    """Whether an event (`later`) happened on or after another (`earlier`).

    Instants are compared when both records carry a time and an offset; local dates otherwise (an event on
    the same local date counts as after: nobody records a toxicity before the dose that day by date alone).
    """
    if later_instant is not None and earlier_instant is not None:
        return later_instant >= earlier_instant
    return later_date >= earlier_date


def site_zone(name: str) -> tzinfo:
    """The site's time zone from its IANA name ("UTC", "America/New_York"); ValueError when unknown."""
    if name.strip().upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {name!r}") from exc


def site_date(now: datetime, zone: tzinfo) -> date:
    """The local date of the evaluation time in the site's time zone."""
    moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return moment.astimezone(zone).date()
