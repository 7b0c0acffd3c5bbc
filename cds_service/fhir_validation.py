"""Validation of the FHIR R4 resources the evaluator reads, with fhir.resources' R4B models.

Only resources the rules use are validated (the caller selects them by type, code and date first).
Errors name the element (FHIRPath-like) and never echo the submitted value.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .errors import Issue
from .hook_request import json_depth_exceeds

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


def validation_issues(resource: dict[str, Any], root: str) -> list[Issue]:
    """Issues of an R4 resource (empty when valid).

    `root` is the path shown in the issues, e.g. `context.draftOrders.entry[0].resource`.
    """
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return [Issue("The resource has no resourceType", code="required", expression=(f"{root}.resourceType",))]
    if json_depth_exceeds(resource, MAX_RESOURCE_DEPTH):
        return [
            Issue(f"The resource nests deeper than {MAX_RESOURCE_DEPTH} levels", code="too-costly", expression=(root,))
        ]
    try:
        cls = model_class(rtype)
    except (ValueError, KeyError):
        return [Issue(f"Unsupported resource type {rtype}", code="not-supported", expression=(f"{root}.resourceType",))]
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False, include_input=False):
            issues.append(
                Issue(_message(err), code=_ISSUE_CODE.get(err["type"], "value"), expression=(_path(root, err["loc"]),))
            )
        return issues
    except (
        KeyError,
        ValueError,
        TypeError,
        RecursionError,
    ) as exc:  # unknown resourceType inside contained, odd shapes
        return [Issue(f"The resource could not be read ({type(exc).__name__})", code="structure", expression=(root,))]
    return []


def first_problem(resource: dict[str, Any]) -> tuple[str, str] | None:
    """(element, message) of the first validation problem of a resource, or None when valid."""
    rtype = resource.get("resourceType", "Resource")
    issues = validation_issues(resource, str(rtype))
    if not issues:
        return None
    issue = issues[0]
    element = issue.expression[0] if issue.expression else str(rtype)
    return element, issue.diagnostics


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
