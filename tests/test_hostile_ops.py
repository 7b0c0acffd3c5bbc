"""Hostile input (issue 10): bounded nesting everywhere, finite JWT time claims, exact aud, log lines that cannot
be forged, SSRF checks on the normalised path, next links under the FHIR base, open mode's host restriction."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fhir_builders as fb
import jwt
import orjson
import pytest
import requests
import responses
from support_security import BASE, SERVICE_URL, SigningKey, bearer, claims, issuer_entry, new_key, write_issuers
from support_server_process import start_server

from cds_service.client_auth import fhir_server_allowed, open_mode_host_allowed, url_under_base
from cds_service.fhir_client import FhirClient, FhirUnavailable
from cds_service.hook_request import HARD_DEPTH_LIMIT, PRUNED, nests_too_deep, prune_deep
from cds_service.logsafe import escape_control
from cds_service.services import PREFETCH_KEYS

SIGN = "/cds-services/tarlatamab-order-sign"
PLACEHOLDER = '"@@DEEP@@"'


def deep_text(levels: int, leaf: str = '"1960-01-01"') -> str:
    half = levels // 2
    return '{"a":[' * half + leaf + "]}" * half


def post_raw(client: Any, body: dict[str, Any], deep: str) -> Any:
    text = json.dumps(body).replace(PLACEHOLDER, deep)
    return client.post(SIGN, data=text, content_type="application/json")


def patient_key(body: dict[str, Any]) -> str:
    return next(k for k, v in body["prefetch"].items() if isinstance(v, dict) and v.get("resourceType") == "Patient")


# --- nesting ------------------------------------------------------------------------------------------------
def test_1000_deep_birth_date_in_a_prefetched_patient_is_a_data_quality_card_not_a_500(client: Any) -> None:
    body = fb.hook_request(drafts=[fb.tarlatamab_order("2026-11-21T10:00:00Z", 1)])
    body["prefetch"][patient_key(body)]["birthDate"] = "@@DEEP@@"
    response = post_raw(client, body, deep_text(1000))
    assert response.status_code == 200
    quality = [c for c in response.get_json()["cards"] if c["source"]["topic"]["code"] == "data-quality"]
    assert any("age" in c["summary"] for c in quality), response.get_json()["cards"]


@pytest.mark.parametrize("element", ["name", "extension", "gender", "address", "identifier"])
@pytest.mark.parametrize("levels", [HARD_DEPTH_LIMIT - 12, 1000])
def test_deep_nesting_anywhere_in_a_prefetched_patient_is_never_a_500(client: Any, element: str, levels: int) -> None:
    body = fb.hook_request(drafts=[fb.tarlatamab_order("2026-11-21T10:00:00Z", 1)])
    body["prefetch"][patient_key(body)][element] = "@@DEEP@@"
    response = post_raw(client, body, deep_text(levels))
    assert response.status_code == 200, response.data[:300]  # a recognisable draft: its cards
    assert response.get_json()["cards"]


@pytest.mark.parametrize("where", ["draft note", "prefetched lab", "context extension"])
def test_deep_nesting_in_a_draft_a_lab_or_the_context_is_never_a_500(client: Any, where: str) -> None:
    body = fb.hook_request(
        drafts=[fb.tarlatamab_order("2026-11-21T10:00:00Z", 1)],
        observations=[fb.lab("anc", 2.4, "2026-11-20T08:00:00Z", oid="anc-deep")],
    )
    if where == "draft note":
        body["context"]["draftOrders"]["entry"][0]["resource"]["note"] = "@@DEEP@@"
    elif where == "prefetched lab":
        bundle = next(v for v in body["prefetch"].values() if isinstance(v, dict) and v.get("entry"))
        for entry in bundle["entry"]:
            if entry["resource"].get("id") == "anc-deep":
                entry["resource"]["valueQuantity"] = "@@DEEP@@"
    else:
        body["context"]["extension"] = "@@DEEP@@"
    response = post_raw(client, body, deep_text(1000))
    assert response.status_code in (200, 400), response.data[:300]
    if where == "context extension":
        assert response.status_code == 400  # the request's own structure: CDS_MAX_JSON_DEPTH


@pytest.mark.parametrize("levels", [HARD_DEPTH_LIMIT - 12, 960])
def test_a_deep_draft_whose_dose_must_change_gets_its_cards_never_a_500(client: Any, levels: int) -> None:
    """The dose suggestion copies the draft (deepcopy): the hard depth limit keeps a hostile nest in the draft
    from making that copy recurse (without it this request is a 500)."""
    order = fb.tarlatamab_order("2026-11-22T09:00:00Z", 10)  # C1D1 ordered as 10 mg: the dose must change
    order["note"] = "@@DEEP@@"
    response = post_raw(client, fb.hook_request(drafts=[order]), deep_text(levels))
    assert response.status_code == 200, response.data[:300]
    summaries = [c["summary"] for c in response.get_json()["cards"]]
    assert any(s.startswith("Change dose to 1 mg") for s in summaries), summaries


def test_the_hard_limit_is_exact() -> None:
    def nest(levels: int) -> Any:
        value: Any = "x"
        for _ in range(levels):
            value = [value]
        return value

    assert not nests_too_deep(nest(HARD_DEPTH_LIMIT))
    assert nests_too_deep(nest(HARD_DEPTH_LIMIT + 1))
    assert not nests_too_deep("plain")


@responses.activate
def test_a_fhir_answer_nesting_too_deep_is_cut_not_a_crash() -> None:
    base = "https://ehr.example.org/fhir"
    patient = '{"resourceType":"Patient","id":"p","birthDate":' + deep_text(1000) + "}"
    responses.get(f"{base}/Patient/p", body=patient, content_type="application/fhir+json")
    client = FhirClient(base, "tok", connect_timeout=2, total_timeout=5, max_pages=2)
    resource = client.read("Patient/p", time.monotonic() + 5)
    assert resource["id"] == "p" and not nests_too_deep(resource)
    assert PRUNED in orjson.dumps(resource).decode()


def test_prune_deep_cuts_only_below_the_limit() -> None:
    value: Any = {"keep": [1, {"a": "b"}]}
    node = value
    for _ in range(10):
        node["next"] = {"x": 1}
        node = node["next"]
    pruned = prune_deep(value, 4)
    assert pruned["keep"] == [1, {"a": "b"}]
    assert pruned["next"]["next"]["next"]["next"] == PRUNED


# --- JWT: finite numbers, exact aud ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def key() -> SigningKey:
    return new_key("ES384")


@pytest.fixture
def jwt_client(make_app: Callable[..., Any], tmp_path: Path, key: SigningKey) -> Any:
    issuers = write_issuers(tmp_path / "issuers.json", issuer_entry([key]))
    with make_app(trusted_issuers_file=issuers, public_base_url=BASE).test_client() as c:
        yield c


def sign_raw(key: SigningKey, payload_json: str) -> str:
    """A token whose payload is exactly this JSON text (NaN, Infinity, 1e400 as a JSON reader sees them)."""
    return jwt.api_jws.encode(payload_json.encode(), key.private, algorithm="ES384", headers={"kid": key.kid})


def payload(**overrides: str) -> str:
    now = int(time.time())
    values = {
        "iss": json.dumps(claims()["iss"]),
        "aud": json.dumps(SERVICE_URL),
        "iat": str(now),
        "exp": str(now + 300),
        "jti": json.dumps(str(uuid.uuid4())),
    }
    values.update(overrides)
    return "{" + ",".join(f'"{k}":{v}' for k, v in values.items()) + "}"


def call(client: Any, token: str) -> Any:
    return client.post(SIGN, json=fb.hook_request("order-sign"), headers=bearer(token))


def test_the_raw_payload_helper_makes_a_valid_token(jwt_client: Any, key: SigningKey) -> None:
    assert call(jwt_client, sign_raw(key, payload())).status_code == 200


@pytest.mark.parametrize(
    "overrides",
    [
        {"iat": "NaN"},
        {"exp": "NaN"},
        {"exp": "Infinity"},
        {"iat": "-Infinity"},
        {"exp": "1e400"},
        {"nbf": "NaN"},
        {"exp": "1e300"},
        {"exp": "true"},
        {"iat": '"1700000000"'},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_time_claims_that_are_not_finite_numbers_are_401_not_500(
    jwt_client: Any, key: SigningKey, overrides: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    response = call(jwt_client, sign_raw(key, payload(**overrides)))
    assert response.status_code == 401
    assert "JWT rejected" in caplog.text


@pytest.mark.parametrize(
    "aud",
    [
        SERVICE_URL.replace("https://", "https://user@"),
        SERVICE_URL.replace("https://", "https://user:pw@"),
        SERVICE_URL + "#fragment",
        " " + SERVICE_URL,
        SERVICE_URL + " ",
        SERVICE_URL + "\n",
        SERVICE_URL + "?x=1",
        SERVICE_URL.upper(),
        SERVICE_URL.replace(".example", ".example:443"),
        SERVICE_URL + "/..",
    ],
)
def test_aud_must_be_the_service_url_exactly(jwt_client: Any, key: SigningKey, aud: str) -> None:
    assert call(jwt_client, key.sign(claims(aud=aud))).status_code == 401
    assert call(jwt_client, key.sign(claims(aud=[aud]))).status_code == 401


def test_exact_aud_and_a_trailing_slash_are_accepted(jwt_client: Any, key: SigningKey) -> None:
    assert call(jwt_client, key.sign(claims(aud=SERVICE_URL))).status_code == 200
    assert call(jwt_client, key.sign(claims(aud=SERVICE_URL + "/"))).status_code == 200


# --- log lines ----------------------------------------------------------------------------------------------
def test_escape_control() -> None:
    assert escape_control("a\r\nb\x00c\x1b[31m\u2028") == "a\\x0d\\x0ab\\x00c\\x1b[31m\\u2028"
    assert escape_control("plain ü") == "plain ü"


def test_cr_lf_in_identifiers_cannot_forge_log_lines(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = fb.hook_request(drafts=[fb.tarlatamab_order("2026-11-21T10:00:00Z", 1)])
    body["hookInstance"] = "h-1\r\n2026-11-21 09:00:00 INFO cds_service FORGED approved"
    response = client.post(SIGN, json=body)
    assert response.status_code == 200
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("cds_service")]
    assert any("h-1\\x0d\\x0a2026" in m for m in messages)
    assert not any("\n" in m or "\r" in m for m in messages)


@pytest.mark.e2e
def test_a_real_server_log_has_no_forged_line(tmp_path: Path) -> None:
    server = start_server(tmp_path, tmp_path / "server.log")
    try:
        body = fb.hook_request(drafts=[fb.tarlatamab_order("2026-11-21T10:00:00Z", 1)])
        body["hookInstance"] = "h-2\nFORGED-LINE hook approved"
        body["context"]["patientId"] = fb.PATIENT_ID + "\r\nFORGED-LINE patient"
        for k, v in body["prefetch"].items():
            if isinstance(v, dict) and v.get("resourceType") == "Patient":
                body["prefetch"][k]["id"] = body["context"]["patientId"]
        response = requests.post(server.base_url + SIGN, data=orjson.dumps(body),
                                 headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip
        assert response.status_code in (200, 400)
    finally:
        server.stop()
    log = server.log_text()
    assert "FORGED-LINE" in log  # it was logged ...
    assert not any(line.startswith("FORGED-LINE") for line in log.splitlines())  # ... on the line it belongs to


# --- SSRF -----------------------------------------------------------------------------------------------------
ALLOWED = ["https://ehr.example.org/fhir"]


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.org/fhir/..;/admin",
        "https://ehr.example.org/fhir/..;jsessionid=1/admin",
        "https://ehr.example.org/fhir/.%2e;/admin",
        "https://ehr.example.org/fhir/%2e%2e%3b/admin",
        "https://ehr.example.org/fhir/%2E%2E/admin",
        "https://ehr.example.org/fhir/.;/x",
        "https://ehr.example.org/fhir\\..\\admin",
        "https://ehr.example.org/fhir/a%2fb",
        "https://ehr.example.org/fhir/%00",
    ],
)
def test_normalised_path_tricks_are_refused(url: str) -> None:
    assert not fhir_server_allowed(url, ALLOWED)
    assert not url_under_base(url, ALLOWED[0])
    assert fhir_server_allowed(url.replace("/admin", "/r4").split("/fhir")[0] + "/fhir/r4", ALLOWED)


def test_a_next_link_with_surrounding_space_is_not_under_the_base() -> None:
    assert not url_under_base(" https://ehr.example.org/fhir/Observation", ALLOWED[0])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://ehr.example.org/fhir/Observation?patient=p&_page=2", True),
        ("https://EHR.example.org:443/fhir/Observation?page=2", True),
        ("https://ehr.example.org/fhirx/Observation?page=2", False),
        ("https://ehr.example.org/admin/Observation?page=2", False),
        ("https://ehr.example.org/Observation?page=2", False),
        ("https://ehr.example.org/fhir/../admin?page=2", False),
        ("https://user@ehr.example.org/fhir/Observation", False),
        ("http://ehr.example.org/fhir/Observation", False),
    ],
)
def test_next_links_only_under_the_base_path(url: str, expected: bool) -> None:
    assert url_under_base(url, "https://ehr.example.org/fhir/") is expected


@responses.activate
def test_a_same_origin_next_link_outside_the_base_is_not_followed_and_gets_no_token() -> None:
    base = "https://ehr.example.org/fhir"
    first = fb.searchset([fb.lab("anc", 2.4, "2026-11-20T08:00:00Z")])
    first["link"] = [{"relation": "next", "url": "https://ehr.example.org/admin/export?page=2"}]
    responses.get(f"{base}/Observation", json=first)
    trap = responses.get("https://ehr.example.org/admin/export", json=fb.searchset([]))
    client = FhirClient(base, "secret-token", connect_timeout=2, total_timeout=5, max_pages=5)
    result = client.search("Observation?patient=p", time.monotonic() + 5)
    assert result.foreign_next and result.pages == 1
    assert trap.call_count == 0
    with pytest.raises(FhirUnavailable):
        client.get_json("https://ehr.example.org/admin/export?page=2", time.monotonic() + 5)
    assert trap.call_count == 0


# --- open development mode ---------------------------------------------------------------------------------
def test_open_mode_hosts() -> None:
    assert open_mode_host_allowed("http://127.0.0.1:8080/fhir", ())
    assert open_mode_host_allowed("http://localhost/fhir", ())
    assert not open_mode_host_allowed("http://10.0.0.5/fhir", ())
    assert not open_mode_host_allowed("http://169.254.169.254/latest", ())
    assert open_mode_host_allowed("https://fhir.example.org/r4", ("fhir.example.org",))
    assert not open_mode_host_allowed("https://fhir.example.org.evil.example/r4", ("fhir.example.org",))


@responses.activate
def test_open_mode_never_contacts_an_unlisted_host(make_app: Callable[..., Any]) -> None:
    metadata = responses.get("http://169.254.169.254/latest/meta-data", body="secret")
    app = make_app()
    body = fb.hook_request(drafts=[fb.tarlatamab_order("2026-11-21T10:00:00Z", 1)], omit=PREFETCH_KEYS)
    body["fhirServer"] = "http://169.254.169.254/latest"
    response = app.test_client().post(SIGN, json=body)
    assert response.status_code == 403
    assert metadata.call_count == 0
    assert len(responses.calls) == 0


@responses.activate
def test_open_mode_contacts_a_listed_host(make_app: Callable[..., Any]) -> None:
    base = "https://fhir.example.org/r4"
    responses.get(f"{base}/Patient/{fb.PATIENT_ID}", json=fb.patient())
    for rtype in ("MedicationRequest", "MedicationAdministration", "Observation", "Condition"):
        responses.get(f"{base}/{rtype}", json=fb.searchset([]))
    app = make_app(open_mode_fhir_hosts=("fhir.example.org",))
    body = fb.hook_request(drafts=[fb.tarlatamab_order("2026-11-21T10:00:00Z", 1)], omit=PREFETCH_KEYS)
    body["fhirServer"] = base
    response = app.test_client().post(SIGN, json=body)
    assert response.status_code != 403
    assert len(responses.calls) >= 1
