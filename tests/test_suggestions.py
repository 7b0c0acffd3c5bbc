"""Suggestion resources: valid R4, only 1 mg or 10 mg, the product kit following the dose."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir_builders import NDC, hook_request, tarlatamab_order

from cds_service.facts import Dose, DraftOrder
from cds_service.findings import SuggestionSpec
from cds_service.protocol import Protocol
from cds_service.suggestions import SuggestionBuilder


def _builder(protocol: Protocol, order: dict[str, Any]) -> SuggestionBuilder:
    draft = DraftOrder(
        resource_id=order["id"],
        status="draft",
        planned_date=date(2026, 11, 21),
        planned_source="timing.event",
        dose=Dose(mg=10.0, raw_value="10", raw_unit="mg"),
        resource=order,
    )
    return SuggestionBuilder(protocol, patient_id="pt-1", hook_instance="h-1", draft_orders={order["id"]: draft})


def test_dose_update_to_the_step_up_dose_also_changes_the_kit(protocol: Protocol) -> None:
    order = tarlatamab_order("2026-11-21T10:00:00Z", 10)
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "55513-077-01"  # the 10 mg kit
    [action] = _builder(protocol, order).actions(SuggestionSpec("update-dose", order["id"], {"dose_mg": 1}), "x")
    resource = action["resource"]
    MedicationRequest.model_validate(resource)
    assert action["type"] == "update"
    assert resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] == {
        "value": 1, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg",
    }  # fmt: skip
    assert resource["medicationCodeableConcept"]["coding"] == [
        {"system": NDC, "code": "55513-059-01", "display": "IMDELLTRA (tarlatamab-dlle) 1 mg kit"}
    ]
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "55513-077-01"  # the draft is not mutated


def test_dose_update_keeps_a_product_coding_that_is_not_a_kit(protocol: Protocol) -> None:
    order = tarlatamab_order("2026-11-21T10:00:00Z", 10)
    order["medicationCodeableConcept"] = {"text": "tarlatamab-dlle"}
    [action] = _builder(protocol, order).actions(SuggestionSpec("update-dose", order["id"], {"dose_mg": 1}), "x")
    assert action["resource"]["medicationCodeableConcept"] == {"text": "tarlatamab-dlle"}


@pytest.mark.parametrize("dose", [0.5, 5, 100, 8])
def test_no_other_tarlatamab_dose_is_ever_suggested(protocol: Protocol, dose: float) -> None:
    order = tarlatamab_order("2026-11-21T10:00:00Z", 10)
    with pytest.raises(ValueError, match="refusing"):
        _builder(protocol, order).actions(SuggestionSpec("update-dose", order["id"], {"dose_mg": dose}), "x")


def test_lab_order_is_a_valid_service_request_with_the_protocol_codes(protocol: Protocol) -> None:
    order = tarlatamab_order("2026-11-21T10:00:00Z", 10)
    spec = SuggestionSpec("create-lab", order["id"], {"orderable": "cbc_panel"})
    [action] = _builder(protocol, order).actions(spec, "Order CBC")
    resource = action["resource"]
    ServiceRequest.model_validate(resource)
    orderables = protocol.section("orderables")
    assert resource["code"]["coding"] == [orderables["cbc_panel"]]
    assert resource["category"][0]["coding"] == [orderables["lab_category"]]
    assert resource["occurrenceDateTime"] == "2026-11-21"
    assert resource["subject"] == {"reference": "Patient/pt-1"}


def test_step_up_skipped_card_offers_the_1mg_kit(client: Any) -> None:
    body = hook_request(drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 10)])
    cards = client.post("/cds-services/tarlatamab-order-sign", json=body).json["cards"]
    [dose_card] = [c for c in cards if c["source"]["topic"]["code"] == "dose"]
    resource = dose_card["suggestions"][0]["actions"][0]["resource"]
    assert resource["medicationCodeableConcept"]["coding"][0]["code"] == "55513-059-01"


def test_dose_update_does_not_copy_empty_elements_of_the_draft(protocol: Protocol) -> None:
    """A suggestion is built from clean values: empty strings, lists and objects of the draft (invalid FHIR,
    and noise for the EHR) are left out; the rest of the draft is kept."""
    order = tarlatamab_order("2026-11-21T10:00:00Z", 10)
    order["note"] = [{"text": ""}, {}]
    order["reasonCode"] = []
    order["dosageInstruction"][0]["patientInstruction"] = "   "
    order["dosageInstruction"][0]["additionalInstruction"] = [{"text": None}]
    order["requester"]["display"] = ""
    [action] = _builder(protocol, order).actions(SuggestionSpec("update-dose", order["id"], {"dose_mg": 1}), "x")
    resource = action["resource"]
    MedicationRequest.model_validate(resource)
    assert "note" not in resource and "reasonCode" not in resource
    assert "patientInstruction" not in resource["dosageInstruction"][0]
    assert "additionalInstruction" not in resource["dosageInstruction"][0]
    assert resource["requester"] == {"reference": "Practitioner/onc-42"}
    assert resource["authoredOn"] == order["authoredOn"] and resource["intent"] == "order"


def test_dose_update_of_a_draft_without_a_subject_names_the_patient(protocol: Protocol) -> None:
    order = tarlatamab_order("2026-11-21T10:00:00Z", 10)
    order["subject"] = {}
    [action] = _builder(protocol, order).actions(SuggestionSpec("update-dose", order["id"], {"dose_mg": 1}), "x")
    assert action["resource"]["subject"] == {"reference": "Patient/pt-1"}
