"""The outbound FHIR client (`cds_service.fhir_client`), against `responses` mocks: headers, timeouts,
paging, origin checks and the failures that make data unavailable."""

from __future__ import annotations

import re
import time
from typing import Any

import fhir_builders as fb
import orjson
import pytest
import requests
import responses

from cds_service.fhir_client import (
    FHIR_JSON,
    MAX_RESPONSE_BYTES,
    FhirClient,
    FhirUnavailable,
    bundle_resources,
    next_link,
)

BASE = "https://ehr.example.org/fhir"
TOKEN = "tok-abc.def-123"


def make_client(token: str | None = TOKEN, **kw: Any) -> FhirClient:
    options: dict[str, Any] = {"connect_timeout": 2.0, "total_timeout": 5.0, "max_pages": 10}
    options.update(kw)
    return FhirClient(BASE, token, **options)


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def page(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    bundle = fb.searchset(resources)
    bundle["link"] = [{"relation": "self", "url": f"{BASE}/Observation?patient=x"}]
    if next_url:
        bundle["link"].append({"relation": "next", "url": next_url})
    return bundle


@responses.activate
def test_read_sends_bearer_token_and_fhir_accept_header() -> None:
    responses.get(f"{BASE}/Patient/pt-1", json=fb.patient("pt-1"))
    resource = make_client().read("Patient/pt-1", deadline())
    assert resource["id"] == "pt-1"
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Accept"] == FHIR_JSON


@responses.activate
def test_no_token_no_authorization_header() -> None:
    responses.get(f"{BASE}/Patient/pt-1", json=fb.patient("pt-1"))
    make_client(token=None).read("Patient/pt-1", deadline())
    assert "Authorization" not in responses.calls[0].request.headers


@responses.activate
def test_timeouts_come_from_settings_and_are_capped_by_the_deadline() -> None:
    responses.get(f"{BASE}/Patient/pt-1", json=fb.patient("pt-1"))
    make_client(connect_timeout=1.5).read("Patient/pt-1", deadline(4.0))
    connect, read = responses.calls[0].request.req_kwargs["timeout"]
    assert connect == 1.5
    assert 3.5 < read <= 4.0
    responses.calls.reset()
    make_client(connect_timeout=1.5).read("Patient/pt-1", deadline(0.5))
    connect, read = responses.calls[0].request.req_kwargs["timeout"]
    assert connect <= 0.5 and read <= 0.5


def test_expired_deadline_makes_no_call() -> None:
    with responses.RequestsMock() as mock, pytest.raises(FhirUnavailable, match="in time"):
        make_client().read("Patient/pt-1", time.monotonic() - 0.1)
    assert len(mock.calls) == 0


@responses.activate
def test_search_follows_next_links_with_the_token() -> None:
    responses.get(f"{BASE}/Observation", json=page([fb.lab("anc", 3.1, "2026-11-20T08:00:00Z")], f"{BASE}/p2"))
    responses.get(f"{BASE}/p2", json=page([fb.lab("anc", 2.9, "2026-11-13T08:00:00Z")], f"{BASE}/p3"))
    responses.get(f"{BASE}/p3", json=page([fb.lab("anc", 2.5, "2026-11-06T08:00:00Z")]))
    result = make_client().search("Observation?patient=pt-1", deadline())
    assert result.pages == 3
    assert len(result.resources) == 3
    assert not result.truncated and not result.foreign_next
    assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in responses.calls)


@responses.activate
def test_search_stops_at_the_page_cap() -> None:
    for i in range(1, 6):
        responses.get(f"{BASE}/p{i}", json=page([fb.lab("anc", 3.0, "2026-11-20T08:00:00Z")], f"{BASE}/p{i + 1}"))
    result = make_client(max_pages=3).search(f"{BASE}/p1", deadline())
    assert result.pages == 3
    assert result.truncated
    assert len(responses.calls) == 3
    # an explicit cap overrides the client's
    responses.calls.reset()
    assert make_client(max_pages=3).search(f"{BASE}/p1", deadline(), max_pages=1).pages == 1


@responses.activate
def test_next_link_to_another_origin_is_never_followed() -> None:
    responses.get(
        f"{BASE}/Observation", json=page([fb.lab("anc", 3.0, "2026-11-20T08:00:00Z")], "https://evil.example.com/p2")
    )
    result = make_client().search("Observation?patient=pt-1", deadline())
    assert result.foreign_next
    assert len(result.resources) == 1
    assert [c.request.url.split("?")[0] for c in responses.calls] == [f"{BASE}/Observation"]


@pytest.mark.parametrize(
    "url",
    ["https://evil.example.com/fhir/Patient/1", "http://ehr.example.org/fhir/Patient/1", "//evil.example.com/x"],
)
def test_get_json_refuses_other_origins(url: str) -> None:
    with responses.RequestsMock() as mock, pytest.raises(FhirUnavailable, match="another server"):
        make_client().get_json(url, deadline())
    assert len(mock.calls) == 0


@responses.activate
def test_total_deadline_spans_pages() -> None:
    def slow(request: Any) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.3)
        n = int(request.url.rsplit("p", 1)[1])
        return 200, {}, orjson.dumps(page([], f"{BASE}/p{n + 1}"))

    responses.add_callback(responses.GET, re.compile(rf"{re.escape(BASE)}/p\d+"), callback=slow)
    started = time.monotonic()
    with pytest.raises(FhirUnavailable, match="in time"):
        make_client(max_pages=50).search(f"{BASE}/p1", deadline(1.0))
    assert time.monotonic() - started < 1.8
    assert 2 <= len(responses.calls) <= 4


@pytest.mark.parametrize(
    ("mock", "message"),
    [
        ({"body": requests.ConnectTimeout("connect timed out")}, "in time"),
        ({"body": requests.ReadTimeout("read timed out")}, "in time"),
        ({"body": requests.ConnectionError("refused")}, "could not be reached"),
        ({"status": 401, "json": {"resourceType": "OperationOutcome", "issue": []}}, "HTTP 401"),
        ({"status": 403, "body": "forbidden"}, "HTTP 403"),
        ({"status": 404, "json": {"resourceType": "OperationOutcome", "issue": []}}, "HTTP 404"),
        ({"status": 500, "body": "<html>oops</html>"}, "HTTP 500"),
        ({"status": 302, "headers": {"Location": "https://evil.example.com/"}}, "HTTP 302"),
        ({"body": "<html>login</html>", "content_type": "text/html"}, "not JSON"),
        ({"json": [1, 2, 3]}, "not a FHIR resource"),
        (
            {"json": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}},
            "OperationOutcome",
        ),
    ],
)
def test_failures_raise_fhir_unavailable_without_the_token(mock: dict[str, Any], message: str) -> None:
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{BASE}/Patient/pt-1", **mock)
        with pytest.raises(FhirUnavailable, match=message) as info:
            make_client().read("Patient/pt-1", deadline())
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)


@responses.activate
def test_search_answer_that_is_not_a_bundle_or_holds_an_error_outcome() -> None:
    responses.get(f"{BASE}/Condition", json=fb.patient("pt-1"))
    with pytest.raises(FhirUnavailable, match="other than a Bundle"):
        make_client().search("Condition?patient=pt-1", deadline())
    bundle = fb.searchset([])
    bundle["entry"] = [
        {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "x"}]}}
    ]
    responses.get(f"{BASE}/MedicationRequest", json=bundle)
    with pytest.raises(FhirUnavailable, match="error OperationOutcome"):
        make_client().search("MedicationRequest?patient=pt-1", deadline())


@responses.activate
def test_oversized_answer_is_refused() -> None:
    responses.get(f"{BASE}/Patient/pt-1", body=b"x", headers={"Content-Length": str(MAX_RESPONSE_BYTES + 1)})
    with pytest.raises(FhirUnavailable, match="larger"):
        make_client().read("Patient/pt-1", deadline())


def test_repr_hides_the_token() -> None:
    assert TOKEN not in repr(make_client())


def test_bundle_helpers_tolerate_malformed_bundles() -> None:
    assert bundle_resources({"resourceType": "Bundle", "entry": 5}) == ([], False)
    assert bundle_resources({"resourceType": "Bundle", "entry": ["x", {"resource": 3}]}) == ([], False)
    assert next_link({"resourceType": "Bundle", "link": 7}) is None
    assert next_link({"resourceType": "Bundle", "link": [{"relation": "next", "url": "  "}]}) is None
    info = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": info, "search": {"mode": "outcome"}}, {"resource": fb.patient()}],
    }
    resources, failed = bundle_resources(bundle)
    assert not failed and [r["resourceType"] for r in resources] == ["Patient"]
