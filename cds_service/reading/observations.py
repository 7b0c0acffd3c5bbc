"""Observations: status policy, effective time, panel components (clinical specification section 12).

Status policy: `final`, `amended`, `corrected` are results; `preliminary` may raise a finding (the card says
it is preliminary) but never satisfies a required lab and never clears a hold; `registered`, `cancelled`,
`entered-in-error`, `unknown` are not results. A record with no status, or one that is not a FHIR Observation
status ("FINAL", "done"), is malformed: it is kept, and read as an unusable record (reported; no older result
stands in for it), never dropped as if it were not a result.

Panels: a lab recognised by its code counts whether it is the Observation's own code or a `component` of a
panel Observation; `component_views` presents each component as an Observation-shaped view (its code, value
and reference range, the panel's status, time and id) so that one reader serves both shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

from .dates import When, read_when

FINAL_STATUSES = frozenset({"final", "amended", "corrected"})
PRELIMINARY_STATUSES = frozenset({"preliminary"})
NOT_A_RESULT_STATUSES = frozenset({"registered", "cancelled", "entered-in-error", "unknown"})
MALFORMED_STATUS = "status missing or not a FHIR Observation status"

StatusClass = Literal["final", "preliminary", "not-a-result", "malformed"]

_COMPONENT_KEYS = ("code", "referenceRange", "interpretation", "dataAbsentReason")
_TIME_KEYS = ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued")


def status_of(resource: Mapping[str, Any]) -> str:
    status = resource.get("status")
    return status if isinstance(status, str) else "(none)"


def status_class(resource: Mapping[str, Any]) -> StatusClass:
    status = status_of(resource)
    if status in FINAL_STATUSES:
        return "final"
    if status in PRELIMINARY_STATUSES:
        return "preliminary"
    if status in NOT_A_RESULT_STATUSES:
        return "not-a-result"
    return "malformed"


def observation_when(obs: Mapping[str, Any]) -> When | None:
    """effective[x] (dateTime, instant, period start), else `issued`; None when the first present is unreadable."""
    period = obs.get("effectivePeriod")
    for candidate in (
        obs.get("effectiveDateTime"),
        obs.get("effectiveInstant"),
        period.get("start") if isinstance(period, dict) else None,
        obs.get("issued"),
    ):
        if candidate is not None:
            return read_when(candidate)
    return None


def time_element(obs: Mapping[str, Any]) -> str:
    return next((key for key in _TIME_KEYS if key in obs), "effective[x]")


def component_views(obs: Mapping[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, Observation-shaped view) of every component of a panel Observation."""
    components = obs.get("component")
    if not isinstance(components, list):
        return
    shared = {k: v for k, v in obs.items() if k not in ("component", "referenceRange", "interpretation", "code")}
    shared = {k: v for k, v in shared.items() if not k.startswith("value") and k != "dataAbsentReason"}
    for index, component in enumerate(components):
        if not isinstance(component, dict):
            continue
        view = dict(shared)
        for key in _COMPONENT_KEYS:
            if key in component:
                view[key] = component[key]
        for key, value in component.items():
            if key.startswith("value"):
                view[key] = value
        view["_component"] = index
        yield index, view


def element_path(obs: Mapping[str, Any], element: str) -> str:
    """The element path of a problem, inside the component when the view is a panel component."""
    index = obs.get("_component")
    return f"component[{index}].{element}" if isinstance(index, int) else element


def without_view_keys(obs: Mapping[str, Any]) -> dict[str, Any]:
    """The view without the service's own bookkeeping keys (for validation)."""
    return {k: v for k, v in obs.items() if not k.startswith("_")}


def classify(
    observations: Iterator[Any] | list[Any] | tuple[Any, ...], tables: Mapping[str, Mapping[str, str]]
) -> dict[str, list[dict[str, Any]]]:
    """Observations (and panel components) by key, from `tables`: system -> code -> key.

    Records that are not results (registered, cancelled, entered-in-error, unknown) are left out: a cancelled
    lab counts as missing. A record with a malformed status is kept (its reader reports it). A panel Observation
    is classified by its own code and by each of its components.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for obs in observations:  # every Observation of the record passes here: plain dict work only
        if not isinstance(obs, dict) or obs.get("resourceType") != "Observation":
            continue
        if status_class(obs) == "not-a-result":
            continue
        key = _key_of(obs.get("code"), tables)
        if key is not None:
            out.setdefault(key, []).append(obs)
        if "component" in obs:
            for _, view in component_views(obs):
                component_key = _key_of(view.get("code"), tables)
                if component_key is not None and component_key != key:
                    out.setdefault(component_key, []).append(view)
    return out


def _key_of(concept: Any, tables: Mapping[str, Mapping[str, str]]) -> str | None:
    items = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(items, list):
        return None
    for coding in items:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        table = tables.get(system.strip()) if system.__class__ is str else None
        # A code with stray whitespace is still that lab: classified, then refused by the structure check and
        # reported, rather than never seen.
        key = table.get(code.strip()) if table is not None and code.__class__ is str else None
        if key is not None:
            return key
    return None


# The elements of an Observation the rules read; a problem anywhere else is ignored (section 12).
READ_ELEMENTS = frozenset(
    {
        "resourceType",
        "id",
        "status",
        "code",
        "effectiveDateTime",
        "effectiveInstant",
        "effectivePeriod",
        "issued",
        "valueQuantity",
        "valueInteger",
        "valueCodeableConcept",
        "valueString",
        "dataAbsentReason",
        "interpretation",
        "referenceRange",
    }
)
