"""Condition: verification and clinical status, onset and resolution (clinical specification section 12).

`verificationStatus` refuted / entered-in-error: ignored. `clinicalStatus` active / recurrence / relapse
without `abatement[x]`: active; inactive / remission / resolved: resolved at `abatement[x]`, else at the time
it is recorded resolved (`recordedDate`, failing that its onset).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .codes import first_code
from .dates import When, read_when

IGNORED_VERIFICATION = frozenset({"refuted", "entered-in-error"})

READ_ELEMENTS = frozenset(
    {
        "resourceType",
        "id",
        "code",
        "clinicalStatus",
        "verificationStatus",
        "onsetDateTime",
        "onsetPeriod",
        "abatementDateTime",
        "abatementPeriod",
        "abatementString",
        "abatementAge",
        "abatementRange",
        "abatementBoolean",
        "recordedDate",
    }
)


@dataclass(frozen=True, slots=True)
class ConditionStatus:
    active: bool
    onset: When | None
    resolved: When | None  # when it is known to have resolved (None while active or when undated)


def ignored(condition: Mapping[str, Any]) -> bool:
    return first_code(condition.get("verificationStatus")) in IGNORED_VERIFICATION


def has_abatement(condition: Mapping[str, Any]) -> bool:
    return any(key.startswith("abatement") for key in condition)


def onset_of(condition: Mapping[str, Any]) -> When | None:
    period = condition.get("onsetPeriod")
    for candidate in (
        condition.get("onsetDateTime"),
        period.get("start") if isinstance(period, dict) else None,
        condition.get("recordedDate"),
    ):
        when = read_when(candidate)
        if when is not None:
            return when
    return None


def condition_status(condition: Mapping[str, Any], active_codes: Collection[str]) -> ConditionStatus:
    status = first_code(condition.get("clinicalStatus"))
    active = (status is None or status in active_codes) and not has_abatement(condition)
    onset = onset_of(condition)
    resolved: When | None = None
    if not active:
        period = condition.get("abatementPeriod")
        resolved = read_when(condition.get("abatementDateTime")) or (
            read_when(period.get("end") or period.get("start")) if isinstance(period, dict) else None
        )
        if resolved is None:
            resolved = read_when(condition.get("recordedDate")) or onset
    return ConditionStatus(active=active, onset=onset, resolved=resolved)
