"""MedicationAdministration: status policy and the elements the schedule reads (clinical specification section 12).

`completed`, `in-progress`, `stopped`, `on-hold`: given. `not-done`, `entered-in-error`: not given.
`unknown`: counted as given, and the facts say the schedule position assumes so. So is a record with no status
or a status that is not a FHIR code ("Completed", "given"): only a record that says it was not given is left
out of the schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from .dates import When, read_when

GIVEN_STATUSES = frozenset({"completed", "in-progress", "stopped", "on-hold"})
ASSUMED_GIVEN_STATUSES = frozenset({"unknown"})
NOT_GIVEN_STATUSES = frozenset({"not-done", "entered-in-error"})
_KNOWN_STATUSES = GIVEN_STATUSES | ASSUMED_GIVEN_STATUSES | NOT_GIVEN_STATUSES

# The elements the schedule reads: an invalid element elsewhere never makes the record unusable.
READ_ELEMENTS = frozenset(
    {
        "resourceType",
        "id",
        "status",
        "effectiveDateTime",
        "effectivePeriod",
        "dosage",
        "medicationCodeableConcept",
        "medicationReference",
        "contained",
    }
)

GivenClass = Literal["given", "assumed-given", "not-given"]


def given_class(resource: Mapping[str, Any]) -> GivenClass:
    status = resource.get("status")
    if status.__class__ is str:
        if status in GIVEN_STATUSES:
            return "given"
        if status in NOT_GIVEN_STATUSES:
            return "not-given"
    return "assumed-given"  # unknown, absent or not a FHIR status: a dose that may have been given counts


def status_written(resource: Mapping[str, Any]) -> str | None:
    """The record's status when it is a FHIR administration status code, else None."""
    status = resource.get("status")
    return status if status.__class__ is str and status in _KNOWN_STATUSES else None


def administration_when(resource: Mapping[str, Any]) -> tuple[When | None, str, Any]:
    """(when, element read, value as written) of `effectiveDateTime`, else `effectivePeriod.start`."""
    written = resource.get("effectiveDateTime")
    element = "effectiveDateTime"
    period = resource.get("effectivePeriod")
    if written is None and isinstance(period, dict):
        written, element = period.get("start"), "effectivePeriod.start"
    return read_when(written), element, written


def dose_quantity(resource: Mapping[str, Any]) -> Any:
    """`dosage.dose` (None when there is no dosage or no dose)."""
    dosage = resource.get("dosage")
    return dosage.get("dose") if isinstance(dosage, dict) else None
