"""Condition: verification and clinical status, onset and resolution (clinical specification section 12).

`verificationStatus` refuted / entered-in-error: ignored. `clinicalStatus` active / recurrence / relapse
without `abatement[x]`: active; inactive / remission / resolved: resolved at `abatement[x]`, else at the time
it is recorded resolved (`recordedDate`, failing that its onset).

Statuses are read from the codings of FHIR's own code systems (or codings without a system), whichever
position they hold: EHRs put a local status coding first. A `clinicalStatus` with no FHIR clinical status code
(a local code only, "Active" in another case, text only) cannot say the condition ended: it is taken as
active unless an `abatement[x]` is recorded, and reported (`status_readable`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .codes import codings
from .dates import When, read_when

CLINICAL_STATUS_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION_STATUS_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CLINICAL_STATUS_CODES = frozenset({"active", "recurrence", "relapse", "inactive", "remission", "resolved"})
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
    status_readable: bool = True  # False: clinicalStatus is present but holds no FHIR clinical status code


def _fhir_codes(concept: Any, system: str) -> list[str]:
    return [code for coding_system, code, _ in codings(concept) if code and coding_system in (system, "")]


def ignored(condition: Mapping[str, Any]) -> bool:
    return any(
        code in IGNORED_VERIFICATION
        for code in _fhir_codes(condition.get("verificationStatus"), VERIFICATION_STATUS_SYSTEM)
    )


def clinical_status_codes(condition: Mapping[str, Any]) -> tuple[frozenset[str], bool]:
    """The FHIR clinical status codes of a Condition, and whether its clinicalStatus could be read (True when
    it is absent: FHIR allows that, and the condition is then taken as active unless it has abated)."""
    concept = condition.get("clinicalStatus")
    if concept is None:
        return frozenset(), True
    found = frozenset(c for c in _fhir_codes(concept, CLINICAL_STATUS_SYSTEM) if c in CLINICAL_STATUS_CODES)
    return found, bool(found)


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
    codes, readable = clinical_status_codes(condition)
    # No readable status, or any active code among them (conflicting codings): not known to have ended.
    active = (not codes or not codes.isdisjoint(active_codes)) and not has_abatement(condition)
    onset = onset_of(condition)
    resolved: When | None = None
    if not active:
        period = condition.get("abatementPeriod")
        resolved = read_when(condition.get("abatementDateTime")) or (
            read_when(period.get("end") or period.get("start")) if isinstance(period, dict) else None
        )
        if resolved is None:
            resolved = read_when(condition.get("recordedDate")) or onset
    return ConditionStatus(active=active, onset=onset, resolved=resolved, status_readable=readable)
