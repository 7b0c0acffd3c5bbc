"""The OpenAPI request schemas are the validation models' own (cds_service.models): they cannot drift."""

from __future__ import annotations

from typing import Any

import fhir_builders as fb
import jsonschema
import pytest

from cds_service.models import REQUEST_MODELS, request_schemas
from cds_service.services import REQUIRED_CONTEXT, SERVICES


def document(client: Any) -> dict[str, Any]:
    return client.get("/openapi.json").get_json()


def test_every_hook_has_a_request_model() -> None:
    assert set(REQUEST_MODELS) == set(REQUIRED_CONTEXT) == {s.hook for s in SERVICES}


def test_the_document_carries_the_models_schemas(client: Any) -> None:
    schemas = document(client)["components"]["schemas"]
    for name, schema in request_schemas().items():
        assert schemas[name] == schema, name
    for service in SERVICES:
        body = document(client)["paths"][f"/cds-services/{service.id}"]["post"]["requestBody"]
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{REQUEST_MODELS[service.hook].__name__}"


def _validator(client: Any, name: str) -> jsonschema.Draft202012Validator:
    doc = document(client)
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


@pytest.mark.parametrize(
    ("body", "documented_valid"),
    [
        ({"feedback": [{"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T09:05:31Z"}]}, True),
        ({"feedback": [{"card": "c1", "outcome": "accepted", "outcomeTimestamp": "2026-11-21T09:05:31Z"}]}, False),
        ({"feedback": [{"card": "c\x00", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T09:05:31Z"}]}, False),
        ({"feedback": [{"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:05:31+01:00"}]}, False),
        ({"feedback": []}, False),
    ],
)
def test_feedback_document_and_validation_agree(client: Any, body: dict[str, Any], documented_valid: bool) -> None:
    assert _validator(client, "FeedbackRequest").is_valid(body) is documented_valid
    status = client.post("/cds-services/tarlatamab-order-sign/feedback", json=body).status_code
    assert (status == 200) is documented_valid


def test_fhir_authorization_is_documented_as_validated(client: Any) -> None:
    """The old hand-written document required expires_in/scope/subject, which the service never did."""
    body = fb.hook_request(drafts=[fb.tarlatamab_order("2026-11-21T10:00:00Z", 1)])
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer"}
    assert _validator(client, "OrderSignRequest").is_valid(body)
    assert client.post("/cds-services/tarlatamab-order-sign", json=body).status_code == 200
    del body["fhirServer"]
    assert client.post("/cds-services/tarlatamab-order-sign", json=body).status_code == 400
