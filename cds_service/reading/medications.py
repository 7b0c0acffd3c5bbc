"""Medication identity of a MedicationRequest / MedicationAdministration / MedicationStatement.

The medication is read from `medicationCodeableConcept`, a contained `Medication` (`#id`), a `Medication`
of the prefetch, or one fetched from `fhirServer` (the intake stage puts both in the catalog), and, failing
those, the reference's display text. Spec/protocol.md section 12, "Medication identity".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..protocol import Protocol
from .codes import codings, ndc_products


def medication_reference(resource: Mapping[str, Any]) -> str | None:
    """The literal `medicationReference.reference` of a resource ("#k1", "Medication/k1", an absolute URL)."""
    ref = resource.get("medicationReference")
    target = ref.get("reference") if isinstance(ref, dict) else None
    return target.strip() if isinstance(target, str) and target.strip() else None


_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def catalog_key(reference: str) -> str | None:
    """`Medication/<id>` of a relative or absolute reference (None for contained, other types, or an id that
    is not a FHIR id: only such keys are ever fetched)."""
    parts = reference.split("?", 1)[0].split("#", 1)[0].rstrip("/").split("/")
    rid = None
    if len(parts) >= 2 and parts[-2] == "Medication":
        rid = parts[-1]
    elif len(parts) >= 4 and parts[-4] == "Medication" and parts[-2] == "_history":
        rid = parts[-3]
    if rid is None or not _FHIR_ID.match(rid) or set(rid) == {"."}:
        return None
    return f"Medication/{rid}"


def build_catalog(resources: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """`Medication/<id>` -> Medication resource, for the Medications of the prefetch or fetched."""
    out: dict[str, dict[str, Any]] = {}
    for resource in resources:
        if isinstance(resource, dict) and resource.get("resourceType") == "Medication":
            rid = resource.get("id")
            if isinstance(rid, str) and rid:
                out.setdefault(f"Medication/{rid}", resource)
    return out


def medication_concept(
    resource: Mapping[str, Any], catalog: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    """The medication CodeableConcept of a medication resource; None when it cannot be identified at all."""
    concept = resource.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    ref = resource.get("medicationReference")
    if not isinstance(ref, dict):
        return None
    target = medication_reference(resource)
    medication: Any = None
    if target is not None and target.startswith("#"):
        medication = next(
            (
                c
                for c in resource.get("contained") or ()
                if isinstance(c, dict) and c.get("resourceType") == "Medication" and c.get("id") == target[1:]
            ),
            None,
        )
    elif target is not None and catalog:
        key = catalog_key(target)
        medication = catalog.get(key) if key is not None else None
    if isinstance(medication, dict) and isinstance(medication.get("code"), dict):
        return medication["code"]
    display = ref.get("display")
    if isinstance(display, str) and display.strip():
        return {"text": display}
    return None


def unresolved_reference(resource: Mapping[str, Any], catalog: Mapping[str, dict[str, Any]]) -> str | None:
    """`Medication/<id>` a resource refers to that is neither contained nor in the catalog (to fetch)."""
    if isinstance(resource.get("medicationCodeableConcept"), dict):
        return None
    target = medication_reference(resource)
    if target is None or target.startswith("#"):
        return None
    key = catalog_key(target)
    return key if key is not None and key not in catalog else None


_NO_NAMES: frozenset[str] = frozenset()


def concept_kinds(concept: Mapping[str, Any] | None, protocol: Protocol) -> frozenset[str]:
    """The protocol `medications` concepts (tarlatamab, dexamethasone, ...) a medication concept is.

    Codes: RxNorm exactly, NDC in every form (product code); text: concept text and coding displays against
    the protocol's text fragments, case-insensitively.
    """
    if concept is None:
        return _NO_NAMES
    by_code = protocol.medication_code_index
    by_product = protocol.medication_ndc_products
    ndc = protocol.data["systems"]["ndc"]
    names: set[str] = set()
    text = concept.get("text")
    parts = [text] if text.__class__ is str else []
    for system, code, display in codings(concept):
        if system and code:
            names |= by_code.get((system, code), _NO_NAMES)
            if system == ndc:
                for product in ndc_products(code):
                    names |= by_product.get(product, _NO_NAMES)
        if display:
            parts.append(display)
    pattern, by_fragment = protocol.medication_text_pattern
    if parts and pattern is not None:
        for match in pattern.finditer(" ".join(parts).lower()):
            names |= by_fragment[match.group(0)]
    return frozenset(names) if names else _NO_NAMES


def product_products(concept: Mapping[str, Any] | None, protocol: Protocol) -> frozenset[str]:
    """The 9-digit NDC product codes written on a medication concept."""
    if concept is None:
        return frozenset()
    ndc = protocol.data["systems"]["ndc"]
    out: set[str] = set()
    for system, code, _ in codings(concept):
        if system == ndc and code:
            out |= ndc_products(code)
    return frozenset(out)


class MedicationIndex:
    """Medication concepts and kinds of the resources of one request, each resource classified once."""

    def __init__(self, protocol: Protocol, catalog: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.protocol = protocol
        self.catalog = catalog or {}
        self._kinds: dict[int, tuple[Mapping[str, Any], frozenset[str]]] = {}
        # Kinds by what `concept_kinds` reads of a concept (its text and codings): a record repeats a few
        # products (every carboplatin dose, every dexamethasone order); kept for this request only.
        self._by_content: dict[tuple[Any, ...], frozenset[str]] = {}

    def concept(self, resource: Mapping[str, Any]) -> dict[str, Any] | None:
        return medication_concept(resource, self.catalog)

    def kinds(self, resource: Mapping[str, Any]) -> frozenset[str]:
        cached = self._kinds.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1]
        concept = self.concept(resource)
        if concept is None:
            found = _NO_NAMES
        else:
            text = concept.get("text")
            key = (text if text.__class__ is str else None, *codings(concept))
            known = self._by_content.get(key)
            found = known if known is not None else concept_kinds(concept, self.protocol)
            self._by_content[key] = found
        self._kinds[id(resource)] = (resource, found)  # holding the resource keeps its id from being reused
        return found

    def is_(self, resource: Mapping[str, Any], name: str) -> bool:
        return name in self.kinds(resource)

    def identified(self, resource: Mapping[str, Any]) -> bool:
        """Whether the medication can be identified at all (a code or a text)."""
        return concept_identifies(self.concept(resource))


def concept_identifies(concept: Mapping[str, Any] | None) -> bool:
    """Whether a medication concept names anything (a code, a display or a text): `{}` does not."""
    if concept is None:
        return False
    text = concept.get("text")
    return bool((isinstance(text, str) and text.strip()) or any(c or d for _, c, d in codings(concept)))


def is_medication(
    resource: Mapping[str, Any],
    protocol: Protocol,
    name: str,
    catalog: Mapping[str, dict[str, Any]] | None = None,
) -> bool:
    """Whether a medication resource is the concept `name` of protocol `medications` (codes or text)."""
    return name in concept_kinds(medication_concept(resource, catalog), protocol)
