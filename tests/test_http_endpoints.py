"""Every HTTP endpoint and status code through the Flask test client: discovery, hook calls, feedback,
CORS, health, unknown paths and methods. Asserts HTTP behaviour, not which clinical cards appear."""

from __future__ import annotations

import copy
import io
import uuid
from collections.abc import Callable
from typing import Any

import fhir_builders as fb
import orjson
import pytest
from card_validator import assert_valid_response

from cds_service.services import PREFETCH_KEYS

SIGN = "/cds-services/tarlatamab-order-sign"
SELECT = "/cds-services/tarlatamab-order-select"
VIEW = "/cds-services/tarlatamab-patient-view"
SERVICE_URLS = {"order-sign": SIGN, "order-select": SELECT, "patient-view": VIEW}
# A patient name that must never come back in an error body.
SENTINEL = "Zyxwvutsrq"
PLANNED = "2026-11-22T09:00:00Z"


def request_for(hook: str = "order-sign", **kw: Any) -> dict[str, Any]:
    drafts = kw.pop("drafts", None)
    if drafts is None and hook != "patient-view":
        drafts = [fb.tarlatamab_order(PLANNED)]
    return fb.hook_request(hook, drafts=drafts, patient_resource=fb.patient(name=SENTINEL), **kw)


def post(client: Any, url: str, body: Any, **kw: Any) -> Any:
    data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    kw.setdefault("content_type", "application/json")
    return client.post(url, data=data, **kw)


def assert_outcome(response: Any, status: int, expression: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(i["severity"] in ("error", "fatal") and i["code"] for i in body["issue"])
    text = response.get_data(as_text=True)
    assert SENTINEL not in text and "MRN-448812" not in text
    if expression is not None:
        found = [e for i in body["issue"] for e in i.get("expression", [])]
        assert any(expression in e for e in found), found
    return body


# --- discovery and health --------------------------------------------------------------------------------
def test_discovery_lists_the_three_services(client: Any) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    services = {s["id"]: s for s in response.get_json()["services"]}
    assert set(services) == {"tarlatamab-order-sign", "tarlatamab-order-select", "tarlatamab-patient-view"}
    assert {s["hook"] for s in services.values()} == {"order-sign", "order-select", "patient-view"}
    for service in services.values():
        assert service["title"] and service["description"]
        assert service["id"].endswith(service["hook"])
        assert set(service["prefetch"]) == set(PREFETCH_KEYS)
        assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        for template in service["prefetch"].values():
            assert "{{context.patientId}}" in template
        assert "name" not in service


def test_healthz(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_cors_preflight_allows_authorization_and_content_type(client: Any) -> None:
    response = client.options(
        SIGN,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code in (200, 204)
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    # preflight of the feedback endpoint and discovery too
    assert client.options(SIGN + "/feedback", headers={"Origin": "https://x.example"}).status_code in (200, 204)
    assert client.get("/cds-services", headers={"Origin": "https://x.example"}).headers["Access-Control-Allow-Origin"]


def test_unknown_path_is_404_outcome(client: Any) -> None:
    assert_outcome(client.get("/nothing-here"), 404)
    assert_outcome(client.get("/cds-services/tarlatamab-order-sign/extra/path"), 404)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", SIGN),
        ("put", SIGN),
        ("delete", SIGN),
        ("get", SIGN + "/feedback"),
        ("post", "/cds-services"),
        ("post", "/healthz"),
    ],
)
def test_wrong_method_is_405_outcome(client: Any, method: str, url: str) -> None:
    response = getattr(client, method)(url)
    assert_outcome(response, 405)
    assert "Allow" in response.headers


# --- hook calls: success ---------------------------------------------------------------------------------
@pytest.mark.parametrize("hook", ["order-sign", "order-select", "patient-view"])
def test_complete_request_is_answered_with_valid_cards(client: Any, hook: str) -> None:
    body = request_for(hook, administrations=[fb.administration("2026-11-14T09:00:00Z", dose=1)])
    response = post(client, SERVICE_URLS[hook], body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert_valid_response(response.get_json())


def test_fhir_json_content_type_is_accepted(client: Any) -> None:
    response = post(client, SIGN, request_for(), content_type="application/fhir+json; charset=utf-8")
    assert response.status_code == 200


def test_utf8_byte_order_mark_is_accepted(client: Any) -> None:
    response = post(client, SIGN, b"\xef\xbb\xbf" + orjson.dumps(request_for()))
    assert response.status_code == 200


def test_no_tarlatamab_in_draft_orders_is_empty_cards(client: Any) -> None:
    body = request_for(drafts=[fb.dexamethasone_order(PLANNED)], omit=PREFETCH_KEYS)  # no data needed
    response = post(client, SIGN, body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}
    body = request_for("order-select", drafts=[fb.saline_order(PLANNED)], selections=["MedicationRequest/nacl-order-1"])
    assert post(client, SELECT, body).get_json() == {"cards": []}


def test_unknown_members_and_extensions_are_tolerated(client: Any) -> None:
    body = request_for()
    body["extension"] = {"com.example.trace": {"id": 1}}
    body["context"]["com.example.extra"] = "x"
    body["prefetch"]["unrequested"] = {"resourceType": "Basic", "id": "b"}
    assert post(client, SIGN, body).status_code == 200


# --- hook calls: errors ----------------------------------------------------------------------------------
def test_unknown_service_is_404(client: Any) -> None:
    assert_outcome(post(client, "/cds-services/no-such-service", request_for()), 404)
    assert_outcome(post(client, "/cds-services/no-such-service/feedback", {"feedback": []}), 404)


@pytest.mark.parametrize("raw", [b"{", b"", b"{'hook': 1}", b"\xff\xfe", b'{"hook": NaN}', b"[" * 5000])
def test_malformed_json_is_400(client: Any, raw: bytes) -> None:
    assert_outcome(post(client, SIGN, raw), 400)


@pytest.mark.parametrize("body", [[], ["hook"], "order-sign", 3, None, True])
def test_non_object_body_is_400(client: Any, body: Any) -> None:
    assert_outcome(post(client, SIGN, body), 400)


@pytest.mark.parametrize("field", ["hook", "hookInstance", "context"])
def test_missing_top_level_field_is_400(client: Any, field: str) -> None:
    body = request_for()
    del body[field]
    assert_outcome(post(client, SIGN, body), 400, field)


REQUIRED = {
    "patient-view": ["userId", "patientId"],
    "order-select": ["userId", "patientId", "selections", "draftOrders"],
    "order-sign": ["userId", "patientId", "draftOrders"],
}


@pytest.mark.parametrize(("hook", "field"), [(h, f) for h, fields in REQUIRED.items() for f in fields])
def test_missing_required_context_field_is_400(client: Any, hook: str, field: str) -> None:
    body = request_for(hook)
    del body["context"][field]
    assert_outcome(post(client, SERVICE_URLS[hook], body), 400, f"context.{field}")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("context", ["not", "an", "object"]),
        ("context.patientId", 12),
        ("context.patientId", ""),
        ("context.userId", {"reference": "Practitioner/1"}),
        ("context.draftOrders", {"resourceType": "Patient"}),
        ("context.draftOrders", "Bundle"),
        ("hookInstance", 5),
        ("prefetch", ["x"]),
        ("fhirServer", "ftp://ehr.example.org/fhir"),
        ("fhirServer", 7),
    ],
)
def test_ill_typed_fields_are_400(client: Any, path: str, value: Any) -> None:
    body = request_for()
    target = body
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    target[last] = value
    assert_outcome(post(client, SIGN, body), 400)


def test_hook_not_matching_the_service_is_400(client: Any) -> None:
    assert_outcome(post(client, SIGN, request_for("order-select")), 400, "hook")
    assert_outcome(post(client, VIEW, request_for("order-sign")), 400, "hook")


def test_fhir_authorization_without_fhir_server_is_400(client: Any) -> None:
    body = request_for()
    body["fhirAuthorization"] = {"access_token": "secret-token-xyz", "token_type": "Bearer", "expires_in": 30,
                                 "scope": "user/Patient.read", "subject": "cds"}  # fmt: skip
    response = post(client, SIGN, body)
    assert_outcome(response, 400, "fhirServer")
    assert "secret-token-xyz" not in response.get_data(as_text=True)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_wrong_content_type_is_415(client: Any, content_type: str | None) -> None:
    data = orjson.dumps(request_for())
    if content_type is None:
        response = client.post(SIGN, data=data)
    else:
        response = client.post(SIGN, data=data, content_type=content_type)
    assert_outcome(response, 415)
    assert_outcome(client.post(SIGN + "/feedback", data=b"{}", content_type="text/plain"), 415)


def test_oversize_request_is_413(make_app: Callable[..., Any]) -> None:
    app = make_app(max_request_bytes=2000)
    with app.test_client() as client:
        assert_outcome(post(client, SIGN, request_for(observations=fb.normal_labs("2026-11-20T08:00:00Z"))), 413)
        assert_outcome(post(client, SIGN + "/feedback", {"feedback": [{"card": "x" * 3000}]}), 413)
        # without a Content-Length (chunked): still refused, with an OperationOutcome
        big = orjson.dumps(request_for(observations=fb.normal_labs("2026-11-20T08:00:00Z")))

        response = client.post(
            SIGN,
            input_stream=io.BytesIO(big),
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it for chunked bodies
        )
        assert_outcome(response, 413)


def test_too_deep_json_is_400(make_app: Callable[..., Any]) -> None:
    app = make_app(max_json_depth=10)
    deep: Any = "x"
    for _ in range(20):
        deep = {"a": deep}
    body = request_for()
    body["context"]["com.example.deep"] = deep
    with app.test_client() as client:
        assert_outcome(post(client, SIGN, body), 400)


@pytest.mark.parametrize("omit", [("observations",), PREFETCH_KEYS, ("patient", "conditions")])
def test_missing_prefetch_without_fhir_server_is_412(client: Any, omit: tuple[str, ...]) -> None:
    body = assert_outcome(post(client, SIGN, request_for(omit=omit)), 412)
    assert all(key in body["issue"][0]["diagnostics"] for key in omit)


def test_missing_prefetch_for_patient_view_is_412(client: Any) -> None:
    assert_outcome(post(client, VIEW, request_for("patient-view", omit=("administrations",))), 412)


def test_null_prefetch_is_not_412(client: Any) -> None:
    body = request_for()
    body["prefetch"] = dict.fromkeys(PREFETCH_KEYS)
    response = post(client, SIGN, body)
    assert response.status_code == 200
    assert_valid_response(response.get_json())


def test_invalid_tarlatamab_draft_gets_cards_and_a_critical_data_quality_card(client: Any) -> None:
    # Section 12: a recognisable tarlatamab draft is always answered with cards (200), never a 400; the element
    # that could not be read (the dose) is named on a critical data-quality card; authoredOn is never read.
    order = fb.tarlatamab_order(PLANNED)
    order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = "ten"
    order["authoredOn"] = "yesterday"
    response = post(client, SIGN, request_for(drafts=[order]))
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    quality = [c for c in cards if c["source"]["topic"]["code"] == "data-quality" and c["indicator"] == "critical"]
    assert len(quality) == 1 and "doseQuantity.value" in quality[0]["detail"]
    assert "authoredOn" not in quality[0]["detail"]
    assert any(c["source"]["topic"]["code"] == "dose" and c["indicator"] == "critical" for c in cards)
    assert any(c["source"]["topic"]["code"] == "monitoring" for c in cards)  # the checks that can run, ran


def test_tarlatamab_draft_without_id_still_gets_cards(client: Any) -> None:
    order = fb.tarlatamab_order(PLANNED)
    del order["id"]
    response = post(client, SIGN, request_for(drafts=[order]))
    assert response.status_code == 200
    found = response.get_json()["cards"]
    assert any(c["source"]["topic"]["code"] == "dose" for c in found)
    actions = [a for c in found for s in c.get("suggestions", []) for a in s["actions"]]
    assert not [a for a in actions if a["type"] in ("update", "delete")]  # nothing the EHR could not match


def test_draft_orders_entry_without_resource_is_400(client: Any) -> None:
    body = request_for()
    body["context"]["draftOrders"]["entry"] = [{"fullUrl": "urn:uuid:1"}]
    assert_outcome(post(client, SIGN, body), 400, "context.draftOrders.entry[0]")


def test_error_bodies_never_echo_patient_data(client: Any) -> None:
    """A hostile mix of bad values, each carrying the sentinel: no error body may contain it."""
    cases: list[dict[str, Any]] = []
    body = request_for()
    body["context"]["patientId"] = {"name": SENTINEL}
    cases.append(body)
    body = request_for()
    body["context"]["encounterId"] = [SENTINEL]
    cases.append(body)
    body = request_for()
    body["context"]["draftOrders"]["entry"][0] = SENTINEL
    cases.append(body)
    body = request_for()
    body["fhirServer"] = f"https://{SENTINEL}:pw@ehr.example.org/fhir"
    cases.append(body)
    for case in cases:
        response = post(client, SIGN, case)
        assert response.status_code == 400
        assert_outcome(response, 400)


# --- feedback --------------------------------------------------------------------------------------------
def feedback_item(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "card": str(uuid.uuid4()),
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
        "outcomeTimestamp": "2026-11-21T09:05:31Z",
    }
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not None}


def stored_feedback(app: Any) -> list[dict[str, Any]]:
    return app.extensions["cds_store"].feedback()


def test_feedback_is_stored_and_acknowledged(app: Any, client: Any) -> None:
    accepted = feedback_item()
    overridden = feedback_item(
        outcome="overridden",
        acceptedSuggestions=None,
        overrideReason={"reason": {"system": "urn:x", "code": "pt-declined", "display": "Patient declined"},
                        "userComment": "discussed"},
    )  # fmt: skip
    response = post(client, SIGN + "/feedback", {"feedback": [accepted, overridden]})
    assert response.status_code == 200
    assert response.get_json() == {}
    rows = stored_feedback(app)
    assert [(r["card_uuid"], r["outcome"]) for r in rows] == [
        (accepted["card"], "accepted"),
        (overridden["card"], "overridden"),
    ]
    assert rows[0]["service_id"] == "tarlatamab-order-sign"
    assert orjson.loads(rows[0]["accepted_suggestions"]) == [accepted["acceptedSuggestions"][0]["id"]]
    assert rows[1]["override_reason_code"] == "pt-declined" and rows[1]["user_comment"] == "discussed"


def test_feedback_is_idempotent(app: Any, client: Any) -> None:
    item = feedback_item(outcomeTimestamp="2026-11-21T09:05:31.500Z")
    same_instant = {**item, "outcomeTimestamp": "2026-11-21T09:05:31.5+00:00"}
    for body in ({"feedback": [item]}, {"feedback": [item, item]}, {"feedback": [same_instant]}):
        assert post(client, SIGN + "/feedback", body).status_code == 200
    assert len(stored_feedback(app)) == 1
    # the same card with another outcome time is another feedback
    assert (
        post(
            client, SIGN + "/feedback", {"feedback": [{**item, "outcomeTimestamp": "2026-11-21T10:00:00Z"}]}
        ).status_code
        == 200
    )
    assert len(stored_feedback(app)) == 2


BAD_FEEDBACK: list[tuple[str, Any]] = [
    ("not-an-object", [feedback_item()]),
    ("string", "feedback"),
    ("missing-array", {}),
    ("empty-array", {"feedback": []}),
    ("array-not-list", {"feedback": feedback_item()}),
    ("item-not-object", {"feedback": ["card-1"]}),
    ("no-card", {"feedback": [feedback_item(card=None)]}),
    ("card-not-string", {"feedback": [feedback_item(card=123)]}),
    ("card-empty", {"feedback": [feedback_item(card="")]}),
    ("card-too-long", {"feedback": [feedback_item(card="c" * 101)]}),
    ("no-outcome", {"feedback": [feedback_item(outcome=None)]}),
    ("bad-outcome", {"feedback": [feedback_item(outcome="ignored")]}),
    ("no-timestamp", {"feedback": [feedback_item(outcomeTimestamp=None)]}),
    ("timestamp-number", {"feedback": [feedback_item(outcomeTimestamp=1700000000)]}),
    ("timestamp-not-utc", {"feedback": [feedback_item(outcomeTimestamp="2026-11-21T10:05:31+01:00")]}),
    ("timestamp-no-zone", {"feedback": [feedback_item(outcomeTimestamp="2026-11-21T09:05:31")]}),
    ("timestamp-date-only", {"feedback": [feedback_item(outcomeTimestamp="2026-11-21")]}),
    ("timestamp-impossible", {"feedback": [feedback_item(outcomeTimestamp="2026-02-30T09:05:31Z")]}),
    ("timestamp-garbage", {"feedback": [feedback_item(outcomeTimestamp="yesterday")]}),
    (
        "timestamp-long-fraction",
        {"feedback": [feedback_item(outcomeTimestamp="2026-11-21T09:05:31." + "1" * 40 + "Z")]},
    ),
    ("accepted-without-suggestions", {"feedback": [feedback_item(acceptedSuggestions=None)]}),
    ("accepted-empty-suggestions", {"feedback": [feedback_item(acceptedSuggestions=[])]}),
    ("suggestions-not-array", {"feedback": [feedback_item(acceptedSuggestions={"id": "s"})]}),
    ("suggestion-without-id", {"feedback": [feedback_item(acceptedSuggestions=[{"uuid": "s"}])]}),
    ("suggestion-id-number", {"feedback": [feedback_item(acceptedSuggestions=[{"id": 5}])]}),
    ("override-not-object", {"feedback": [feedback_item(outcome="overridden", overrideReason="no")]}),
    ("reason-no-code", {"feedback": [feedback_item(outcome="overridden", overrideReason={"reason": {"system": "s"}})]}),
    (
        "reason-code-too-long",
        {"feedback": [feedback_item(outcome="overridden", overrideReason={"reason": {"code": "x" * 101}})]},
    ),
    ("comment-number", {"feedback": [feedback_item(outcome="overridden", overrideReason={"userComment": 5})]}),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_FEEDBACK], ids=[n for n, _ in BAD_FEEDBACK])
def test_invalid_feedback_is_400_and_nothing_stored(app: Any, client: Any, body: Any) -> None:
    assert_outcome(post(client, SIGN + "/feedback", body), 400)
    assert stored_feedback(app) == []


def test_feedback_batch_with_one_bad_item_stores_nothing(app: Any, client: Any) -> None:
    body = {"feedback": [feedback_item(), feedback_item(outcome="maybe")]}
    assert_outcome(post(client, SIGN + "/feedback", body), 400, "feedback[1].outcome")
    assert stored_feedback(app) == []


def test_feedback_to_each_service_is_kept_apart(app: Any, client: Any) -> None:
    item = feedback_item()
    for url in SERVICE_URLS.values():
        assert post(client, url + "/feedback", {"feedback": [item]}).status_code == 200
    assert sorted(r["service_id"] for r in stored_feedback(app)) == [
        "tarlatamab-order-select", "tarlatamab-order-sign", "tarlatamab-patient-view",
    ]  # fmt: skip


def test_feedback_malformed_json_is_400(client: Any) -> None:
    assert_outcome(post(client, SIGN + "/feedback", b'{"feedback": ['), 400)


# --- audit of responses ----------------------------------------------------------------------------------
def test_hook_responses_are_audited_without_tokens_or_clinical_values(app: Any, client: Any) -> None:
    ok = request_for(observations=[fb.lab("anc", 0.4, "2026-11-20T08:00:00Z")])
    missing = request_for(omit=("observations",))
    assert post(client, SIGN, ok).status_code == 200
    assert post(client, SIGN, missing).status_code == 412
    writer = app.extensions["cds_audit_writer"]
    assert writer.flush()
    rows = app.extensions["cds_store"].audit_log()
    assert [(r["hook_instance"], r["status"]) for r in rows] == [
        (ok["hookInstance"], 200),
        (missing["hookInstance"], 412),
    ]
    assert all(r["patient_id"] == fb.PATIENT_ID and r["service_id"] == "tarlatamab-order-sign" for r in rows)
    assert rows[0]["evaluation_ms"] >= 0
    assert orjson.loads(rows[0]["data_origin"]) == dict.fromkeys(PREFETCH_KEYS, "prefetch")
    # (timings are left out: an evaluation of 0.428 ms would read as the ANC of 0.4)
    text = repr([{k: v for k, v in r.items() if k != "evaluation_ms"} for r in rows])
    assert SENTINEL not in text and "0.4" not in text


def test_request_body_is_not_modified_by_the_service(client: Any) -> None:
    body = request_for()
    before = copy.deepcopy(body)
    post(client, SIGN, body)
    assert body == before
