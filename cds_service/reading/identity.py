"""How a record is named on a card and in the audit of a finding: `Observation/cbc-2211`.

A record's id is copied only when it is an id: the string FHIR requires, or the integer some interfaces
send. A list, an object or a boolean in `id` (a malformed or hostile record) is never echoed, its repr could
carry anything; the record is named `Observation/?` and its problem is reported by the structure checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UNREADABLE_ID = "?"


def record_id(resource: Mapping[str, Any]) -> str:
    """The record's id as text, or `?` when it has none or it is not an id."""
    rid = resource.get("id")
    if rid.__class__ is str:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)
    return UNREADABLE_ID


def reference_of(resource: Mapping[str, Any], resource_type: str | None = None) -> str:
    """`<resourceType>/<id>` of a record (`Resource/...` when its resourceType is not a string)."""
    if resource_type is None:
        rtype = resource.get("resourceType")
        resource_type = rtype if rtype.__class__ is str else "Resource"
    return f"{resource_type}/{record_id(resource)}"
