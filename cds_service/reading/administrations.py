"""MedicationAdministration: status policy and the elements the schedule reads (clinical specification section 12).

`completed`, `in-progress`, `stopped`, `on-hold`: given. `not-done`, `entered-in-error`: not given.
`unknown`: counted as given, and the facts say the schedule position assumes so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from .dates import When, read_when

GIVEN_STATUSES = frozenset({"completed", "in-progress", "stopped", "on-hold"})
ASSUMED_GIVEN_STATUSES = frozenset({"unknown"})
NOT_GIVEN_STATUSES = frozenset({"not-done", "entered-in-error"})

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
    if not isinstance(status, str):
        return "not-given"
    if status in GIVEN_STATUSES:
        return "given"
    if status in ASSUMED_GIVEN_STATUSES:
        return "assumed-given"
    return "not-given"


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
