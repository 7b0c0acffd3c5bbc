"""End to end: the real server process (gunicorn via `cds-service serve`) against a real FHIR server on
loopback. Proves the bearer token reaches the EHR's FHIR server (and nowhere else, and never the logs),
that an unreachable FHIR server is a bounded 412, and that feedback survives a restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fhir_builders as fb
import pytest
import requests
from card_validator import assert_valid_response
from support_fhir_server import FhirServer, Route, closed_port, running_fhir_server
from support_server_process import ServerProcess, start_server

from cds_service.services import PREFETCH_KEYS
from cds_service.store import Store

pytestmark = pytest.mark.e2e

TOKEN = "e2e-bearer-" + uuid.uuid4().hex
SIGN = "/cds-services/tarlatamab-order-sign"
VIEW = "/cds-services/tarlatamab-patient-view"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cds-data")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = start_server(data_dir, data_dir / "server.log", {"CDS_FHIR_TIMEOUT": "3"})
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def fhir() -> Iterator[FhirServer]:
    history = [fb.administration("2026-11-14T09:00:00Z", dose=1), fb.administration("2026-11-07T09:00:00Z", dose=1)]
    routes = {
        "Patient": Route(body=fb.patient()),
        "MedicationRequest": Route(body=fb.searchset([])),
        "MedicationAdministration": Route(body=fb.searchset(history)),
        "Observation": Route(body=fb.searchset(fb.normal_labs("2026-11-20T08:00:00Z"))),
        "Condition": Route(body=fb.searchset([fb.sclc_condition()])),
    }
    with running_fhir_server(routes) as state:
        yield state


def without_prefetch(hook: str, fhir_server: str, token: str | None = TOKEN) -> dict[str, Any]:
    drafts = [fb.tarlatamab_order("2026-11-21T12:00:00Z")] if hook != "patient-view" else None
    body = fb.hook_request(hook, drafts=drafts, omit=PREFETCH_KEYS)
    del body["prefetch"]
    body["fhirServer"] = fhir_server
    if token is not None:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 30,
                                     "scope": "user/*.read", "subject": "tarlatamab-cds"}  # fmt: skip
    return body


def test_discovery_and_errors_over_http(server: ServerProcess) -> None:
    services = requests.get(f"{server.base_url}/cds-services", timeout=5).json()["services"]
    assert len(services) == 3
    missing = requests.post(f"{server.base_url}/cds-services/nope", json={}, timeout=5)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    preflight = requests.options(
        f"{server.base_url}{SIGN}",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=5,
    )
    assert preflight.status_code in (200, 204)
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


@pytest.mark.parametrize("hook", ["order-sign", "patient-view"])
def test_missing_prefetch_is_fetched_with_the_bearer_token(server: ServerProcess, fhir: FhirServer, hook: str) -> None:
    url = f"{server.base_url}/cds-services/tarlatamab-{hook}"
    response = requests.post(url, json=without_prefetch(hook, fhir.base_url), timeout=15)
    assert response.status_code == 200, response.text
    assert_valid_response(response.json())
    paths = sorted(r.path for r in fhir.requests)
    assert paths == sorted(
        ["/fhir/Patient/" + fb.PATIENT_ID, "/fhir/MedicationRequest", "/fhir/MedicationAdministration",
         "/fhir/Observation", "/fhir/Condition"]
    )  # fmt: skip
    for seen in fhir.requests:
        assert seen.headers.get("Authorization") == f"Bearer {TOKEN}"
        assert seen.headers.get("Accept") == "application/fhir+json"
        if seen.path != f"/fhir/Patient/{fb.PATIENT_ID}":
            assert seen.query["patient"] == [fb.PATIENT_ID]
    assert TOKEN not in server.log_text()


def test_no_token_means_no_authorization_header(server: ServerProcess, fhir: FhirServer) -> None:
    response = requests.post(
        f"{server.base_url}{SIGN}", json=without_prefetch("order-sign", fhir.base_url, None), timeout=15
    )
    assert response.status_code == 200, response.text
    assert len(fhir.requests) == 5
    assert all("Authorization" not in r.headers for r in fhir.requests)


def test_partial_prefetch_fetches_only_the_rest(server: ServerProcess, fhir: FhirServer) -> None:
    body = fb.hook_request("order-sign", drafts=[fb.tarlatamab_order("2026-11-21T12:00:00Z")], omit=("observations",))
    body["fhirServer"] = fhir.base_url
    response = requests.post(f"{server.base_url}{SIGN}", json=body, timeout=15)
    assert response.status_code == 200, response.text
    assert [r.path for r in fhir.requests] == ["/fhir/Observation"]


def test_closed_fhir_port_is_a_prompt_412(server: ServerProcess) -> None:
    body = without_prefetch("order-sign", f"http://127.0.0.1:{closed_port()}/fhir")
    started = time.monotonic()
    response = requests.post(f"{server.base_url}{SIGN}", json=body, timeout=15)
    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"
    assert time.monotonic() - started < 5
    assert TOKEN not in response.text


def test_hanging_fhir_server_is_a_412_at_the_deadline(server: ServerProcess) -> None:
    routes = {"Patient": Route(body=fb.patient(), delay=20), "Observation": Route(body=fb.searchset([]), trickle=0.5)}
    with running_fhir_server(routes) as slow:
        body = without_prefetch("order-sign", slow.base_url)
        started = time.monotonic()
        response = requests.post(f"{server.base_url}{SIGN}", json=body, timeout=20)
        elapsed = time.monotonic() - started
    assert response.status_code == 412
    assert elapsed < 3 + 2  # CDS_FHIR_TIMEOUT=3 plus slack


def test_fhir_error_answer_is_412(server: ServerProcess) -> None:
    routes = {"Observation": Route(body={"resourceType": "OperationOutcome", "issue": []}, status=401)}
    with running_fhir_server(routes) as failing:
        body = fb.hook_request(
            "order-sign", drafts=[fb.tarlatamab_order("2026-11-21T12:00:00Z")], omit=("observations",)
        )
        body["fhirServer"] = failing.base_url
        response = requests.post(f"{server.base_url}{SIGN}", json=body, timeout=15)
    assert response.status_code == 412


def test_feedback_survives_a_server_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    card = str(uuid.uuid4())
    feedback = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-21T09:05:31Z",
                              "overrideReason": {"reason": {"system": "urn:tarlatamab-cds:override-reason",
                                                            "code": "clinician-reviewed", "display": "Reviewed"}}}]}  # fmt: skip
    first = start_server(data_dir, tmp_path / "first.log")
    try:
        response = requests.post(f"{first.base_url}{SIGN}/feedback", json=feedback, timeout=10)
        assert response.status_code == 200, response.text
    finally:
        first.stop()
    assert first.process.returncode is not None

    second = start_server(data_dir, tmp_path / "second.log")
    try:
        store = Store(f"sqlite:///{(data_dir / 'cds-service.sqlite3').resolve()}")
        try:
            rows = [r for r in store.feedback() if r["card_uuid"] == card]
            assert [(r["service_id"], r["outcome"], r["override_reason_code"]) for r in rows] == [
                ("tarlatamab-order-sign", "overridden", "clinician-reviewed")
            ]
            again = requests.post(f"{second.base_url}{SIGN}/feedback", json=feedback, timeout=10)
            assert again.status_code == 200
            assert len([r for r in store.feedback() if r["card_uuid"] == card]) == 1
        finally:
            store.dispose()
    finally:
        second.stop()
