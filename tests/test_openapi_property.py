"""The OpenAPI description at GET /openapi.json, and a property-based run of schemathesis against it.

Every request is sent with a freshly minted client JWT (aud = the URL called, unique jti), so the run goes
through the real verification. Requirement: no 5xx and no response outside the description (status code,
content type, headers and body schema).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support_security import BASE, bearer, claims, issuer_entry, new_key, write_issuers

KEY = new_key("ES384")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def jwt_app(make_app: Callable[..., Any], tmp_path: Path) -> Any:
    path = write_issuers(tmp_path / "issuers.json", issuer_entry([KEY]))
    return make_app(trusted_issuers_file=path, public_base_url=BASE, audit_enabled=False)


@pytest.fixture
def api_schema(jwt_app: Any) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", jwt_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=3000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_description(case: Any) -> None:
    headers = bearer(KEY.sign(claims(aud=BASE + case.formatted_path)))
    response = case.call(headers=headers)
    case.validate_response(response, checks=CHECKS, headers=headers)


# --- the document itself -----------------------------------------------------------------------------------


def test_openapi_document_is_served_and_valid(jwt_app: Any) -> None:
    response = jwt_app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": BASE}]
    paths = document["paths"]
    assert set(paths) >= {
        "/cds-services",
        "/cds-services/tarlatamab-order-sign",
        "/cds-services/tarlatamab-order-select",
        "/cds-services/tarlatamab-patient-view",
        "/cds-services/{service_id}/feedback",
    }
    for code in ("200", "400", "401", "404", "412", "413", "415"):
        assert code in paths["/cds-services/tarlatamab-order-sign"]["post"]["responses"]
    assert paths["/cds-services"]["get"]["security"] == []
    assert document["components"]["securitySchemes"]["clientJwt"]["bearerFormat"] == "JWT"
    # schemathesis loads and understands it
    loaded = schemathesis.openapi.from_dict(document)
    assert len(list(loaded.get_all_operations())) >= 6


def test_discovery_matches_its_schema(jwt_app: Any) -> None:
    import jsonschema

    document = jwt_app.test_client().get("/openapi.json").get_json()
    discovery = jwt_app.test_client().get("/cds-services").get_json()
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/Discovery", "components": document["components"]}
    )
    validator.validate(discovery)
    assert {s["id"] for s in discovery["services"]} == {
        p.removeprefix("/cds-services/") for p in document["paths"] if p.count("/") == 2 and "{" not in p
    }
