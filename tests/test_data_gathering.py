"""Data intake (`cds_service.data_gathering`): prefetch semantics (CDS Hooks 2.0 section 4), fetching the
missing keys from fhirServer, paging, deadlines and the 412 answers."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import fhir_builders as fb
import orjson
import pytest
import requests
import responses
from support_fhir_server import Route, closed_port, running_fhir_server

from cds_service.data_gathering import gather, resolve_template
from cds_service.errors import ServiceError
from cds_service.fhir_client import FhirClient
from cds_service.hook_request import HookRequest, parse_hook_request
from cds_service.protocol import Protocol
from cds_service.services import PREFETCH_KEYS, SERVICES_BY_ID, prefetch_templates
from cds_service.settings import Settings

BASE = "https://ehr.example.org/fhir"
TOKEN = "ehr-access-token-7f3a"
ANY_SEARCH = re.compile(re.escape(BASE) + r"/(MedicationRequest|MedicationAdministration|Observation|Condition)\?.*")


@pytest.fixture
def templates(protocol: Protocol) -> dict[str, str]:
    return prefetch_templates(protocol)


def body_with(
    *, omit: tuple[str, ...] = (), server: str | None = BASE, token: str | None = TOKEN, **prefetch: Any
) -> dict[str, Any]:
    body = fb.hook_request("order-sign", drafts=[fb.tarlatamab_order("2026-11-22T09:00:00Z")], omit=omit)
    body["prefetch"].update(prefetch)
    if server is not None:
        body["fhirServer"] = server
    if token is not None:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read",
            "subject": "tarlatamab-cds",
        }
    return body


def parsed(body: dict[str, Any], settings: Settings, service: str = "tarlatamab-order-sign") -> HookRequest:
    return parse_hook_request(body, SERVICES_BY_ID[service], settings)


def client_for(request: HookRequest, settings: Settings) -> FhirClient | None:
    if request.fhir_server is None:
        return None
    return FhirClient(
        request.fhir_server,
        request.access_token,
        connect_timeout=settings.fhir_connect_timeout,
        total_timeout=settings.fhir_total_timeout,
        max_pages=settings.fhir_max_pages,
    )


def run(body: dict[str, Any], settings: Settings, templates: dict[str, str]) -> Any:
    request = parsed(body, settings)
    return gather(request, templates, settings, client_for(request, settings))


def fhir_server_mock(rsps: responses.RequestsMock, *, patient: dict[str, Any] | None = None) -> None:
    rsps.get(f"{BASE}/Patient/{fb.PATIENT_ID}", json=patient or fb.patient())
    rsps.add(responses.GET, ANY_SEARCH, json=fb.searchset([]))


# --- prefetch as given -----------------------------------------------------------------------------------
def test_full_prefetch_is_used_as_given_and_nothing_is_fetched(settings: Settings, templates: dict[str, str]) -> None:
    obs = fb.lab("anc", 3.2, "2026-11-20T08:00:00Z")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fhir_server_mock(rsps)
        data = run(body_with(observations=fb.searchset([obs])), settings, templates)
        assert len(rsps.calls) == 0
    assert data.origin == dict.fromkeys(PREFETCH_KEYS, "prefetch")
    assert data.resources["observations"] == [obs]
    assert data.resources["patient"][0]["id"] == fb.PATIENT_ID
    assert data.issues == [] and data.unavailable == set()


def test_full_prefetch_without_fhir_server(settings: Settings, templates: dict[str, str]) -> None:
    data = run(body_with(server=None, token=None), settings, templates)
    assert set(data.origin) == set(PREFETCH_KEYS)


def test_null_means_no_data_and_is_never_fetched(settings: Settings, templates: dict[str, str]) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fhir_server_mock(rsps)
        data = run(body_with(observations=None, conditions=None), settings, templates)
        assert len(rsps.calls) == 0
    assert data.resources["observations"] == [] and data.resources["conditions"] == []
    assert data.origin["observations"] == "null"
    assert "observations" not in data.unavailable
    assert data.issues == []


def test_null_without_fhir_server_is_not_a_412(settings: Settings, templates: dict[str, str]) -> None:
    data = run(body_with(server=None, token=None, **dict.fromkeys(PREFETCH_KEYS)), settings, templates)
    assert all(data.resources[k] == [] for k in PREFETCH_KEYS)


OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}


@pytest.mark.parametrize(
    "value",
    [
        OUTCOME,
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": OUTCOME, "search": {"mode": "outcome"}}],
        },
    ],
    ids=["operation-outcome", "bundle-with-error-outcome"],
)
def test_operation_outcome_is_a_failed_fetch_not_refetched(
    value: dict[str, Any], settings: Settings, templates: dict[str, str]
) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fhir_server_mock(rsps)
        data = run(body_with(observations=value), settings, templates)
        assert len(rsps.calls) == 0
    assert "observations" in data.unavailable
    assert data.resources["observations"] == []
    assert [(i.kind, i.dataset) for i in data.issues] == [("unavailable", "observations")]


def test_informational_outcome_in_a_bundle_is_ignored(settings: Settings, templates: dict[str, str]) -> None:
    info = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}
    bundle = fb.searchset([fb.sclc_condition()])
    bundle["entry"].append({"resource": info, "search": {"mode": "outcome"}})
    data = run(body_with(conditions=bundle), settings, templates)
    assert [r["resourceType"] for r in data.resources["conditions"]] == ["Condition"]
    assert data.issues == []


@pytest.mark.parametrize("value", ["Patient/x", 42, [fb.patient()], {"id": "no-type"}])
def test_unusable_prefetch_value_is_reported_not_a_500(
    value: Any, settings: Settings, templates: dict[str, str]
) -> None:
    data = run(body_with(patient=value), settings, templates)
    assert "patient" in data.unavailable
    assert data.issues[0].kind == "unusable"


def test_wrong_resource_types_are_dropped(settings: Settings, templates: dict[str, str]) -> None:
    data = run(body_with(patient=fb.sclc_condition()), settings, templates)
    assert data.resources["patient"] == [] and "patient" in data.unavailable
    mixed = fb.searchset([fb.sclc_condition(), fb.patient()])
    data = run(body_with(conditions=mixed), settings, templates)
    assert [r["resourceType"] for r in data.resources["conditions"]] == ["Condition"]


def test_malformed_bundle_entry_is_unusable(settings: Settings, templates: dict[str, str]) -> None:
    data = run(body_with(conditions={"resourceType": "Bundle", "entry": 7, "link": 3}), settings, templates)
    assert "conditions" in data.unavailable


# --- fetching missing keys -------------------------------------------------------------------------------
def test_missing_keys_without_fhir_server_is_412(settings: Settings, templates: dict[str, str]) -> None:
    with pytest.raises(ServiceError) as info:
        run(body_with(omit=("observations", "conditions"), server=None, token=None), settings, templates)
    assert info.value.status == 412
    outcome = info.value.operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "observations" in outcome["issue"][0]["diagnostics"]


def test_missing_keys_are_fetched_with_the_bearer_token(settings: Settings, templates: dict[str, str]) -> None:
    obs = fb.lab("platelets", 210, "2026-11-20T08:00:00Z")
    with responses.RequestsMock() as rsps:
        rsps.get(f"{BASE}/Patient/{fb.PATIENT_ID}", json=fb.patient())
        rsps.add(responses.GET, re.compile(re.escape(BASE) + r"/Observation\?.*"), json=fb.searchset([obs]))
        rsps.add(responses.GET, re.compile(re.escape(BASE) + r"/MedicationRequest\?.*"), json=fb.searchset([]))
        rsps.add(responses.GET, re.compile(re.escape(BASE) + r"/MedicationAdministration\?.*"), json=fb.searchset([]))
        rsps.add(responses.GET, re.compile(re.escape(BASE) + r"/Condition\?.*"), json=fb.searchset([]))
        data = run(body_with(omit=PREFETCH_KEYS), settings, templates)
        assert len(rsps.calls) == 5
        for call in rsps.calls:
            assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
            assert call.request.headers["Accept"] == "application/fhir+json"
            assert f"patient={fb.PATIENT_ID}" in call.request.url or call.request.url.endswith(
                f"/Patient/{fb.PATIENT_ID}"
            )
    assert data.origin == dict.fromkeys(PREFETCH_KEYS, "fetched")
    assert data.resources["observations"] == [obs]


def test_partial_prefetch_fetches_only_the_missing_keys(settings: Settings, templates: dict[str, str]) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fhir_server_mock(rsps)
        data = run(body_with(omit=("observations",)), settings, templates)
        assert [c.request.url.split("?")[0] for c in rsps.calls] == [f"{BASE}/Observation"]
    assert data.origin["observations"] == "fetched"
    assert data.origin["patient"] == "prefetch"


def test_no_token_sends_no_authorization_header(settings: Settings, templates: dict[str, str]) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fhir_server_mock(rsps)
        run(body_with(omit=PREFETCH_KEYS, token=None), settings, templates)
        assert len(rsps.calls) == 5
        assert all("Authorization" not in c.request.headers for c in rsps.calls)


def test_missing_keys_are_fetched_concurrently(settings: Settings, templates: dict[str, str]) -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def slow(request: Any) -> tuple[int, dict[str, str], bytes]:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.4)
        with lock:
            in_flight -= 1
        if "/Patient/" in request.url:
            return 200, {}, orjson.dumps(fb.patient())
        return 200, {}, orjson.dumps(fb.searchset([]))

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/.*"), callback=slow)
        started = time.monotonic()
        run(body_with(omit=PREFETCH_KEYS), settings, templates)
        elapsed = time.monotonic() - started
    assert peak >= 3
    assert elapsed < 1.5  # sequential would take 2 s


def test_timeouts_from_settings(settings: Settings, templates: dict[str, str]) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fhir_server_mock(rsps)
        run(body_with(omit=("patient",)), settings, templates)
        connect, read = rsps.calls[0].request.req_kwargs["timeout"]
    assert settings.fhir_connect_timeout == 2.0 and settings.fhir_total_timeout == 5.0
    assert connect == 2.0 and 4.0 < read <= 5.0


@pytest.mark.parametrize(
    "mock",
    [
        {"body": requests.ConnectTimeout("timed out")},
        {"body": requests.ReadTimeout("timed out")},
        {"body": requests.ConnectionError("refused")},
        {"status": 401, "json": {"resourceType": "OperationOutcome", "issue": []}},
        {"status": 403, "body": ""},
        {"status": 404, "json": {"resourceType": "OperationOutcome", "issue": []}},
        {"status": 500, "body": "Internal Server Error"},
        {"status": 200, "body": "<html>not fhir</html>", "content_type": "text/html"},
        {"status": 200, "json": OUTCOME},
    ],
    ids=["connect-timeout", "read-timeout", "connection-error", "401", "403", "404", "500", "non-json", "outcome"],
)
def test_fetch_failures_are_412_with_operation_outcome(
    mock: dict[str, Any], settings: Settings, templates: dict[str, str]
) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, re.compile(re.escape(BASE) + r"/Observation\?.*"), **mock)
        with pytest.raises(ServiceError) as info:
            run(body_with(omit=("observations",)), settings, templates)
    assert info.value.status == 412
    outcome = info.value.operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    text = orjson.dumps(outcome).decode()
    assert TOKEN not in text
    assert "laboratory results" in text


# --- paging ----------------------------------------------------------------------------------------------
def _paged(n_pages: int, next_base: str = BASE) -> list[dict[str, Any]]:
    pages = []
    for i in range(n_pages):
        bundle = fb.searchset([fb.lab("anc", 3.0 + i / 10, f"2026-11-{20 - i:02d}T08:00:00Z")])
        if i + 1 < n_pages:
            bundle["link"] = [{"relation": "next", "url": f"{next_base}/page?n={i + 1}"}]
        pages.append(bundle)
    return pages


def _serve_pages(rsps: responses.RequestsMock, pages: list[dict[str, Any]]) -> None:
    rsps.add(responses.GET, re.compile(re.escape(BASE) + r"/Observation\?.*"), json=pages[0])
    for i, bundle in enumerate(pages[1:], start=1):
        rsps.get(f"{BASE}/page?n={i}", json=bundle)


def test_fetched_search_follows_pages_up_to_the_cap(settings: Settings, templates: dict[str, str]) -> None:
    settings = settings.with_overrides(fhir_max_pages=3)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _serve_pages(rsps, _paged(5))
        data = run(body_with(omit=("observations",)), settings, templates)
        assert len(rsps.calls) == 3
        assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in rsps.calls)
    assert len(data.resources["observations"]) == 3
    assert [i.dataset for i in data.issues] == ["observations"]
    assert "3 pages" in data.issues[0].message


def test_fetched_search_within_the_cap_has_no_issue(settings: Settings, templates: dict[str, str]) -> None:
    with responses.RequestsMock() as rsps:
        _serve_pages(rsps, _paged(3))
        data = run(body_with(omit=("observations",)), settings, templates)
    assert len(data.resources["observations"]) == 3 and data.issues == []


def test_prefetched_first_page_is_completed_from_fhir_server(settings: Settings, templates: dict[str, str]) -> None:
    pages = _paged(3)
    with responses.RequestsMock() as rsps:
        for i, bundle in enumerate(pages[1:], start=1):
            rsps.get(f"{BASE}/page?n={i}", json=bundle)
        data = run(body_with(observations=pages[0]), settings, templates)
        assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in rsps.calls)
    assert len(data.resources["observations"]) == 3 and data.issues == []


def test_prefetched_pages_count_against_the_cap(settings: Settings, templates: dict[str, str]) -> None:
    settings = settings.with_overrides(fhir_max_pages=2)
    pages = _paged(4)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        for i, bundle in enumerate(pages[1:], start=1):
            rsps.get(f"{BASE}/page?n={i}", json=bundle)
        data = run(body_with(observations=pages[0]), settings, templates)
        assert len(rsps.calls) == 1
    assert len(data.resources["observations"]) == 2
    assert "2 pages" in data.issues[0].message


def test_paginated_prefetch_without_fhir_server_is_reported(settings: Settings, templates: dict[str, str]) -> None:
    data = run(body_with(server=None, token=None, observations=_paged(2)[0]), settings, templates)
    assert len(data.resources["observations"]) == 1
    assert [i.dataset for i in data.issues] == ["observations"]


def test_prefetched_next_link_to_another_origin_is_not_followed(settings: Settings, templates: dict[str, str]) -> None:
    first = _paged(2, next_base="https://attacker.example.net/fhir")[0]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, re.compile(r".*"), json=fb.searchset([]))
        data = run(body_with(observations=first), settings, templates)
        assert len(rsps.calls) == 0
    assert len(data.resources["observations"]) == 1
    assert "another server" in data.issues[0].message


def test_fetched_next_link_to_another_origin_is_not_followed(settings: Settings, templates: dict[str, str]) -> None:
    first = _paged(2, next_base="https://attacker.example.net/fhir")[0]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, re.compile(re.escape(BASE) + r"/Observation\?.*"), json=first)
        rsps.add(responses.GET, re.compile(r"https://attacker\.example\.net/.*"), json=fb.searchset([]))
        data = run(body_with(omit=("observations",)), settings, templates)
        assert [c.request.url.startswith(BASE) for c in rsps.calls] == [True]
    assert len(data.resources["observations"]) == 1
    assert "another server" in data.issues[0].message


def test_failing_further_page_of_a_prefetch_is_a_data_issue(settings: Settings, templates: dict[str, str]) -> None:
    with responses.RequestsMock() as rsps:
        rsps.get(f"{BASE}/page?n=1", status=500)
        data = run(body_with(observations=_paged(2)[0]), settings, templates)
    assert len(data.resources["observations"]) == 1
    assert "Further pages" in data.issues[0].message


def test_total_deadline_is_honoured_across_pages(settings: Settings, templates: dict[str, str]) -> None:
    settings = settings.with_overrides(fhir_total_timeout=1.0, fhir_max_pages=100)

    def slow_page(request: Any) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.3)
        return 200, {}, orjson.dumps({**fb.searchset([]), "link": [{"relation": "next", "url": f"{BASE}/page?n=1"}]})

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/.*"), callback=slow_page)
        started = time.monotonic()
        with pytest.raises(ServiceError) as info:
            run(body_with(omit=("observations",)), settings, templates)
        elapsed = time.monotonic() - started
    assert info.value.status == 412
    assert elapsed < 2.0


# --- real sockets: slow, trickling and closed servers ----------------------------------------------------
@pytest.mark.parametrize("route", [Route(body=fb.searchset([]), delay=3.0), Route(body=fb.searchset([]), trickle=0.2)])
def test_slow_or_trickling_server_is_cut_at_the_deadline(
    route: Route, settings: Settings, templates: dict[str, str]
) -> None:
    settings = settings.with_overrides(fhir_total_timeout=1.0)
    with running_fhir_server({"Observation": route}) as server:
        started = time.monotonic()
        with pytest.raises(ServiceError) as info:
            run(body_with(omit=("observations",), server=server.base_url), settings, templates)
        elapsed = time.monotonic() - started
    assert info.value.status == 412
    assert "in time" in info.value.summary
    assert elapsed < 1.8


def test_closed_port_is_412_quickly(settings: Settings, templates: dict[str, str]) -> None:
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        run(body_with(omit=("patient",), server=f"http://127.0.0.1:{closed_port()}/fhir"), settings, templates)
    assert info.value.status == 412
    assert time.monotonic() - started < 3.0


# --- template tokens -------------------------------------------------------------------------------------
def _request_with_context(settings: Settings, **context: Any) -> HookRequest:
    body = fb.hook_request("patient-view")
    body["context"].update(context)
    return parsed(body, settings, "tarlatamab-patient-view")


def test_patient_id_is_url_encoded(settings: Settings) -> None:
    request = _request_with_context(settings, patientId="a b/c&d=e?f#g")
    assert (
        resolve_template("Condition?patient={{context.patientId}}", request)
        == "Condition?patient=a%20b%2Fc%26d%3De%3Ff%23g"
    )
    assert resolve_template("Patient/{{context.patientId}}", request) == "Patient/a%20b%2Fc%26d%3De%3Ff%23g"


@pytest.mark.parametrize("pid", [".", ".."])
def test_dot_segments_are_not_substituted(pid: str, settings: Settings) -> None:
    request = _request_with_context(settings, patientId=pid)
    assert resolve_template("Patient/{{context.patientId}}", request) is None


def test_user_tokens(settings: Settings) -> None:
    request = _request_with_context(settings, userId="Practitioner/onc 42")
    assert resolve_template("Practitioner/{{userPractitionerId}}", request) == "Practitioner/onc%2042"
    assert resolve_template("{{context.userId}}", request) == "Practitioner/onc%2042"
    assert resolve_template("PractitionerRole/{{userPractitionerRoleId}}", request) is None
    assert resolve_template("Encounter/{{context.encounterId}}", request) == "Encounter/enc-7781"
    role = _request_with_context(settings, userId="PractitionerRole/r1")
    assert resolve_template("PractitionerRole?_id={{userPractitionerRoleId}}", role) == "PractitionerRole?_id=r1"


def test_unresolvable_token_makes_the_key_unobtainable(settings: Settings, templates: dict[str, str]) -> None:
    body = body_with(omit=("patient",))
    templates = {**templates, "patient": "Patient?_id={{context.patientId}}&enc={{context.encounterId}}"}
    del body["context"]["encounterId"]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fhir_server_mock(rsps)
        with pytest.raises(ServiceError) as info:
            run(body, settings, templates)
        assert len(rsps.calls) == 0
    assert info.value.status == 412


def test_templates_resolve_for_every_key(settings: Settings, templates: dict[str, str]) -> None:
    request = parsed(body_with(), settings)
    for key in PREFETCH_KEYS:
        url = resolve_template(templates[key], request)
        assert url is not None and "{{" not in url
        assert fb.PATIENT_ID in url


@pytest.mark.parametrize("rtype", [["Observation"], {"x": 1}, 5, None])
def test_non_string_resource_types_in_a_bundle_are_dropped(
    rtype: Any, settings: Settings, templates: dict[str, str]
) -> None:
    bundle = fb.searchset([fb.lab("anc", 3.0, "2026-11-20T08:00:00Z")])
    bundle["entry"].append({"resource": {"resourceType": rtype, "id": "odd"}})
    data = run(body_with(observations=bundle), settings, templates)
    assert [r["resourceType"] for r in data.resources["observations"]] == ["Observation"]
