"""FHIR resources for card suggestions: update or delete the draft order, create missing orders.

Created resources are built as dicts and validated with fhir.resources (R4B models, R4 JSON) before they
leave the service, so an EHR applying a suggestion never receives invalid FHIR.
"""

from __future__ import annotations

import copy
import uuid
from datetime import date
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from .facts import DraftOrder
from .findings import SuggestionSpec
from .protocol import Protocol

_UUID_NAMESPACE = uuid.UUID("0d3e6f9e-5b0b-4b8e-9d59-4b7d8a1c2e10")


def pruned(value: Any) -> Any:
    """`value` without empty elements (None, "", whitespace-only strings, [] and {}), recursively; FHIR forbids
    them, and a suggestion must not echo a draft's empty or blank fields back to the EHR."""
    if isinstance(value, dict):
        out = {k: pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if not _empty(v)}
    if isinstance(value, list):
        items = [pruned(v) for v in value]
        return [v for v in items if not _empty(v)]
    return value


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value in ({}, [])


class SuggestionBuilder:
    """Builds the actions of suggestions for one request."""

    def __init__(
        self,
        protocol: Protocol,
        *,
        patient_id: str,
        hook_instance: str,
        draft_orders: dict[str, DraftOrder],
        encounter_id: str | None = None,
        requester: str | None = None,
    ) -> None:
        self.protocol = protocol
        self.patient_id = patient_id
        self.hook_instance = hook_instance
        self.draft_orders = draft_orders
        self.encounter_id = encounter_id
        self.requester = requester

    def actions(self, spec: SuggestionSpec, label: str) -> list[dict[str, Any]]:
        order = self.draft_orders.get(spec.order_id) if spec.order_id else None
        if spec.kind == "update-dose":
            if order is None:
                return []
            dose = spec.params["dose_mg"]
            doses = self.protocol.section("doses")
            if dose not in (doses["step_up_mg"], doses["target_mg"]):  # never suggest any other dose [L]
                raise ValueError(f"refusing to suggest a tarlatamab dose of {dose} mg")
            try:
                updated = self.updated_dose(order, int(dose))
            except ValueError:  # the draft cannot be made valid FHIR: the card stays, without a button
                return []
            return [{"type": "update", "description": label, "resource": updated}]
        if spec.kind == "delete-order":
            if order is None:
                return []
            return [{"type": "delete", "description": label, "resourceId": f"MedicationRequest/{order.resource_id}"}]
        if spec.kind in ("create-dexamethasone-premed", "create-saline", "create-dexamethasone-neurotox"):
            return [{"type": "create", "description": label, "resource": self.medication_request(spec, order)}]
        if spec.kind == "create-lab":
            return [{"type": "create", "description": label, "resource": self.service_request(spec, order)}]
        raise ValueError(f"unknown suggestion kind {spec.kind}")

    # --- resources ------------------------------------------------------------------------------
    def updated_dose(self, order: DraftOrder, dose_mg: int) -> dict[str, Any]:
        """The draft order with the expected dose; elements the draft left empty are not copied."""
        resource = pruned(copy.deepcopy(order.resource))
        if not isinstance(resource, dict):
            resource = {}
        resource.setdefault("resourceType", "MedicationRequest")
        if not isinstance(resource.get("subject"), dict) or not resource["subject"].get("reference"):
            resource["subject"] = {"reference": f"Patient/{self.patient_id}"}
        quantity = {"value": dose_mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
        instructions = resource.get("dosageInstruction")
        if not isinstance(instructions, list) or not instructions or not isinstance(instructions[0], dict):
            instructions = [{}]
            resource["dosageInstruction"] = instructions
        first = instructions[0]
        rates = first.get("doseAndRate")
        if not isinstance(rates, list) or not rates or not isinstance(rates[0], dict):
            rates = [{}]
            first["doseAndRate"] = rates
        rates[0].pop("doseRange", None)
        rates[0]["doseQuantity"] = quantity
        if isinstance(first.get("text"), str):
            minutes = self.protocol.section("administration")["infusion_minutes"]
            first["text"] = f"tarlatamab {dose_mg} mg IV over {minutes} minutes"
        self._swap_kit(resource, dose_mg)
        MedicationRequest.model_validate(resource)
        return resource

    def _swap_kit(self, resource: dict[str, Any], dose_mg: int) -> None:
        """Replace the product coding of the other strength's kit (e.g. the 10 mg kit on a 1 mg dose)."""
        kits = {str(k): v for k, v in self.protocol.section("orderables")["tarlatamab_kits"].items()}
        wanted = kits.get(str(dose_mg))
        concept = resource.get("medicationCodeableConcept")
        if wanted is None or not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
            return
        other = {(k["system"], k["code"]) for strength, k in kits.items() if strength != str(dose_mg)}
        swapped = False
        for i, coding in enumerate(concept["coding"]):
            if isinstance(coding, dict) and (coding.get("system"), coding.get("code")) in other:
                concept["coding"][i] = dict(wanted)
                swapped = True
        if swapped and isinstance(concept.get("text"), str):
            concept["text"] = wanted["display"]

    def _id(self, spec: SuggestionSpec) -> str:
        return str(uuid.uuid5(_UUID_NAMESPACE, f"{self.hook_instance}|{spec.kind}|{spec.order_id}|{spec.params}"))

    def _common(self, resource_type: str, spec: SuggestionSpec) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resourceType": resource_type,
            "id": self._id(spec),
            "status": "draft",
            "intent": "order",
            "subject": {"reference": f"Patient/{self.patient_id}"},
        }
        if self.encounter_id:
            out["encounter"] = {"reference": f"Encounter/{self.encounter_id}"}
        if self.requester and "/" in self.requester:
            out["requester"] = {"reference": self.requester}
        return out

    def medication_request(self, spec: SuggestionSpec, order: DraftOrder | None) -> dict[str, Any]:
        premed = self.protocol.section("premedication")
        orderables = self.protocol.section("orderables")
        route = {"coding": [dict(orderables["route_iv"])]}
        planned: date | None = order.planned_date if order else None
        resource = self._common("MedicationRequest", spec)
        if spec.kind == "create-saline":
            med = orderables["sodium_chloride"]
            hours_min, hours_max = premed["saline_hours_min"], premed["saline_hours_max"]
            volume = premed["saline_volume_ml"]
            dosage: dict[str, Any] = {
                "text": f"sodium chloride 0.9% {volume} mL IV over {hours_min}-{hours_max} hours, "
                "started immediately after the tarlatamab infusion ends",
                "timing": {
                    "repeat": {"count": 1, "duration": hours_min, "durationMax": hours_max, "durationUnit": "h"}
                },
                "route": route,
                "doseAndRate": [
                    {
                        "doseQuantity": {
                            "value": volume,
                            "unit": "mL",
                            "system": "http://unitsofmeasure.org",
                            "code": "mL",
                        }
                    }
                ],
            }
        else:
            med = orderables["dexamethasone"]
            neuro = spec.kind == "create-dexamethasone-neurotox"
            dose = premed["neurotox_dexamethasone_mg"] if neuro else premed["dexamethasone_mg"]
            when = (
                "for Grade 1-2 neurologic toxicity"
                if neuro
                else f"once, {premed['dexamethasone_minutes_before']} minutes before the tarlatamab infusion"
            )
            dosage = {
                "text": f"dexamethasone {dose} mg IV {when}",
                "timing": {"repeat": {"count": 1}},
                "route": route,
                "doseAndRate": [
                    {"doseQuantity": {"value": dose, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}
                ],
            }
        if planned is not None and spec.kind != "create-dexamethasone-neurotox":
            dosage["timing"]["repeat"]["boundsPeriod"] = {"start": planned.isoformat(), "end": planned.isoformat()}
        resource["medicationCodeableConcept"] = {"coding": [dict(med)], "text": med["display"]}
        resource["dosageInstruction"] = [dosage]
        MedicationRequest.model_validate(resource)
        return resource

    def service_request(self, spec: SuggestionSpec, order: DraftOrder | None) -> dict[str, Any]:
        orderable = self.protocol.section("orderables")[str(spec.params["orderable"])]
        resource = self._common("ServiceRequest", spec)
        resource["category"] = [{"coding": [dict(self.protocol.section("orderables")["lab_category"])]}]
        resource["code"] = {"coding": [dict(orderable)], "text": orderable["display"]}
        if order is not None:
            resource["occurrenceDateTime"] = order.planned_date.isoformat()
            resource["reasonReference"] = [{"reference": f"MedicationRequest/{order.resource_id}"}]
        resource["note"] = [{"text": "Pre-dose check for tarlatamab (IMDELLTRA)"}]
        ServiceRequest.model_validate(resource)
        return resource
