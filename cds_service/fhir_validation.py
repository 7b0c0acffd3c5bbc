"""Validation of the FHIR R4 resources the evaluator reads.

Only resources the rules use are validated (the caller selects them by type, code and date first).
The prefetched record (Observation, Condition, MedicationAdministration, Patient) is checked element by
element, for exactly the elements the rules read, by `reading.structure`; what must be valid FHIR (the draft
orders, anything else) is validated with fhir.resources' R4B models. Errors name the element (FHIRPath-like)
and never echo the submitted value.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Collection
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .errors import Issue
from .hook_request import json_depth_exceeds
from .reading import structure

# The deepest nesting accepted inside one resource the evaluator reads (the request body as a whole is
# limited by orjson's parser); validation recurses, so hostile nesting is refused before it.
MAX_RESOURCE_DEPTH = 64

_ISSUE_CODE = {
    "missing": "required",
    "model_field_validation.missing": "required",
    "extra_forbidden": "structure",
    "json_invalid": "structure",
    "model_validation_format": "structure",
    "fhir-validation-wrong-resource-type": "invalid",
}

_MODEL_CACHE: dict[str, Any] = {}


def model_class(resource_type: str) -> Any:
    cls = _MODEL_CACHE.get(resource_type)
    if cls is None:
        cls = get_fhir_model_class(resource_type)
        _MODEL_CACHE[resource_type] = cls
    return cls


def _path(root: str, loc: tuple[Any, ...]) -> str:
    out = root
    for part in loc:
        if part == "root":
            continue
        if part == "resource_type":
            part = "resourceType"
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "json_invalid":
        return "Expected a JSON object here, found a string"
    return " ".join(str(err["msg"]).split())


Problem = tuple[str, str, tuple[Any, ...]]  # (message, issue code, location inside the resource)

# Validation with fhir.resources (the draft orders; not the prefetched record, which `reading.structure` checks
# for a few microseconds per resource) is a pure function of the resource's JSON, and EHRs send the same
# resources again (order-select, then order-sign). Results are kept per
# worker, keyed by a digest of the resource's JSON bytes: only the digest and the problem list (element
# paths and messages, never values) are held, never the resource.
VALIDATION_CACHE_SIZE = 20000
_validation_cache: dict[bytes, tuple[Problem, ...]] = {}
_cache_lock = threading.Lock()
cache_stats = {"hits": 0, "misses": 0}


def _digest(resource: dict[str, Any]) -> bytes | None:
    try:
        return hashlib.blake2b(orjson.dumps(resource), digest_size=16).digest()
    except (TypeError, orjson.JSONEncodeError):
        return None


def configure_cache(size: int) -> None:
    """Set the cache size of this worker (0 turns caching off) and empty the cache."""
    global VALIDATION_CACHE_SIZE
    with _cache_lock:
        VALIDATION_CACHE_SIZE = max(0, size)
        _validation_cache.clear()


def _problems(resource: dict[str, Any], depth_checked: bool = False) -> tuple[Problem, ...]:
    if VALIDATION_CACHE_SIZE == 0:
        cache_stats["misses"] += 1
        return _validate(resource, depth_checked)
    key = _digest(resource)
    if key is not None:
        cached = _validation_cache.get(key)
        if cached is not None:
            cache_stats["hits"] += 1
            return cached
    cache_stats["misses"] += 1
    found = _validate(resource, depth_checked)
    if key is not None:
        with _cache_lock:
            if len(_validation_cache) >= VALIDATION_CACHE_SIZE:
                _validation_cache.clear()  # simple and bounded: a worker refills it within a few requests
            _validation_cache[key] = found
    return found


def _validate(resource: dict[str, Any], depth_checked: bool = False) -> tuple[Problem, ...]:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return (("The resource has no resourceType", "required", ("resourceType",)),)
    if not depth_checked and json_depth_exceeds(resource, MAX_RESOURCE_DEPTH):
        return ((f"The resource nests deeper than {MAX_RESOURCE_DEPTH} levels", "too-costly", ()),)
    try:
        cls = model_class(rtype)
    except (ValueError, KeyError):
        return ((f"Unsupported resource type {rtype}", "not-supported", ("resourceType",)),)
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        return tuple(
            (_message(err), _ISSUE_CODE.get(err["type"], "value"), tuple(err["loc"]))
            for err in exc.errors(include_url=False, include_input=False)
        )
    except (KeyError, ValueError, TypeError, RecursionError) as exc:  # unknown type inside contained, odd shapes
        return ((f"The resource could not be read ({type(exc).__name__})", "structure", ()),)
    return ()


def validation_issues(resource: dict[str, Any], root: str) -> list[Issue]:
    """Issues of an R4 resource (empty when valid).

    `root` is the path shown in the issues, e.g. `context.draftOrders.entry[0].resource`.
    """
    return [Issue(message, code=code, expression=(_path(root, loc),)) for message, code, loc in _problems(resource)]


def first_problem(resource: dict[str, Any], read: Collection[str] | None = None) -> tuple[str, str] | None:
    """(element, message) of the first validation problem of a resource, or None when valid.

    `read`: the top-level elements the rules read; problems elsewhere are ignored (clinical specification section 12,
    "Validation scope": an invalid element the rules never read never makes a resource unusable). With `read`,
    a prefetched resource type `reading.structure` knows is checked there, without fhir.resources.
    """
    rtype = str(resource.get("resourceType", "Resource"))
    if read is not None:
        # Only the elements read are validated at all: the rest of the resource (narrative, identifiers,
        # performers, extensions...) costs nothing, however broken it is; hostile nesting anywhere in the
        # resource is still refused before it is read.
        if json_depth_exceeds(resource, MAX_RESOURCE_DEPTH):
            return rtype, f"The resource nests deeper than {MAX_RESOURCE_DEPTH} levels"
        if structure.supports(rtype):
            # A prefetched resource the rules read: the lean structure check of exactly those elements
            # (fhir.resources stays for what must be valid FHIR: the draft orders, the suggestions).
            found = structure.first_structure_problem(resource, read)
            return None if found is None else (_path(rtype, found[0]), found[1])
        resource = {k: v for k, v in resource.items() if k in read or k == "resourceType"}
    for message, _, loc in _problems(resource, depth_checked=read is not None):
        if read is not None and loc and loc[0] not in read and loc[0] != "resource_type":
            continue
        return _path(rtype, loc), message
    return None


def warm_up() -> None:
    """Import the models the request path uses, so the first request does not pay for lazy imports."""
    for name in (
        "Patient",
        "Observation",
        "MedicationRequest",
        "MedicationAdministration",
        "Condition",
        "MedicationStatement",
        "ServiceRequest",
        "Bundle",
    ):
        model_class(name)
    model_class("Observation").model_validate(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
            "effectiveDateTime": "2026-01-01T08:00:00Z",
            "valueQuantity": {"value": 1.5, "unit": "10*9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"},
            "referenceRange": [{"high": {"value": 7.5, "unit": "10*9/L"}}],
        }
    )
    model_class("MedicationRequest").model_validate(
        {
            "resourceType": "MedicationRequest",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/x"},
            "medicationCodeableConcept": {"text": "tarlatamab"},
            "dosageInstruction": [
                {
                    "timing": {"event": ["2026-01-01T08:00:00Z"]},
                    "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "mg"}}],
                }
            ],
        }
    )
