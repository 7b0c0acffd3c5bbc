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
            system = coding.get("system")
            code = coding.get("code")
            display = coding.get("display")
            yield (
                system if system.__class__ is str else "",
                code if code.__class__ is str else "",
                display if display.__class__ is str else "",
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


_NO_NAMES: frozenset[str] = frozenset()


def medication_kinds(resource: dict[str, Any], protocol: Protocol) -> frozenset[str]:
    """The protocol `medications` concepts (tarlatamab, dexamethasone, ...) a medication resource is.

    One pass over the codings collects both the codes (RxNorm, NDC with or without dashes) and the text
    (concept text and coding displays) matched against the protocol's text fragments.
    """
    concept = medication_concept(resource)
    if concept is None:
        return _NO_NAMES
    by_code = protocol.medication_code_index
    ndc = protocol.data["systems"]["ndc"]
    names: set[str] = set()
    text = concept.get("text")
    parts = [text] if text.__class__ is str else []
    items = concept.get("coding")
    if items.__class__ is list:
        for coding in items:
            if coding.__class__ is not dict:
                continue
            system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
            if system.__class__ is str and code.__class__ is str:
                names |= by_code.get((system, code), _NO_NAMES)
                if system == ndc:
                    names |= by_code.get((system, code.replace("-", "")), _NO_NAMES)
            if display.__class__ is str:
                parts.append(display)
    pattern, by_fragment = protocol.medication_text_pattern
    if parts and pattern is not None:
        for match in pattern.finditer(" ".join(parts).lower()):
            names |= by_fragment[match.group(0)]
    return frozenset(names) if names else _NO_NAMES


def is_medication(resource: dict[str, Any], protocol: Protocol, name: str) -> bool:
    """Whether a medication resource is the concept `name` of protocol `medications` (codes or text)."""
    return name in medication_kinds(resource, protocol)


class MedicationIndex:
    """Medication kinds of the resources of one request, each resource classified once."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self._kinds: dict[int, tuple[dict[str, Any], frozenset[str]]] = {}

    def kinds(self, resource: dict[str, Any]) -> frozenset[str]:
        cached = self._kinds.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1]
        found = medication_kinds(resource, self.protocol)
        self._kinds[id(resource)] = (resource, found)  # holding the resource keeps its id from being reused
        return found

    def is_(self, resource: dict[str, Any], name: str) -> bool:
        return name in self.kinds(resource)
