"""Recognising concepts in raw FHIR JSON with cheap dict work (before any model validation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .protocol import Protocol


def codings(concept: Any) -> Iterator[tuple[str, str, str]]:
    """(system, code, display) of every well-formed coding of a CodeableConcept dict."""
    if not isinstance(concept, dict):
        return
    items = concept.get("coding")
    if not isinstance(items, list):
        return
    for coding in items:
        if isinstance(coding, dict):
            system, code = coding.get("system"), coding.get("code")
            display = coding.get("display")
            yield (
                system if isinstance(system, str) else "",
                code if isinstance(code, str) else "",
                display if isinstance(display, str) else "",
            )


def concept_text(concept: Any) -> str:
    """All human text of a CodeableConcept (text and coding displays), lower-cased."""
    if not isinstance(concept, dict):
        return ""
    parts = [concept.get("text")] + [d for _, _, d in codings(concept)]
    return " ".join(p for p in parts if isinstance(p, str)).lower()


def medication_concept(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The medication CodeableConcept of a MedicationRequest/Administration/Statement (R4 shape).

    A `medicationReference` is resolved against `contained` Medications; its display text is used otherwise.
    """
    concept = resource.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    ref = resource.get("medicationReference")
    if isinstance(ref, dict):
        target = ref.get("reference")
        if isinstance(target, str) and target.startswith("#"):
            for contained in resource.get("contained") or ():
                if (
                    isinstance(contained, dict)
                    and contained.get("resourceType") == "Medication"
                    and contained.get("id") == target[1:]
                    and isinstance(contained.get("code"), dict)
                ):
                    return contained["code"]
        display = ref.get("display")
        if isinstance(display, str):
            return {"text": display}
    return None


def is_medication(resource: dict[str, Any], protocol: Protocol, name: str) -> bool:
    """Whether a medication resource is the concept `name` of protocol `medications` (codes or text)."""
    concept = medication_concept(resource)
    if concept is None:
        return False
    rxnorm, ndc, texts = protocol.medication_codes(name)
    systems = protocol.data["systems"]
    for system, code, _ in codings(concept):
        if system == systems["rxnorm"] and code in rxnorm:
            return True
        if system == systems["ndc"] and (code in ndc or code.replace("-", "") in ndc):
            return True
    text = concept_text(concept)
    return any(t in text for t in texts)


def reference_id(ref: Any, resource_type: str) -> str | None:
    """The id of a `{"reference": "Type/id"}` dict when it points at `resource_type`."""
    if isinstance(ref, dict):
        target = ref.get("reference")
        if isinstance(target, str) and target.startswith(resource_type + "/"):
            return target.split("/", 1)[1].split("/_history", 1)[0]
    return None
