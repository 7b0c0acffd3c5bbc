"""Hostile input: size and depth limits, non-JSON, and wrong JSON types anywhere -> 4xx (or cards), never 5xx."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from fhir_builders import administration, hook_request, lab, tarlatamab_order
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.openapi import openapi_document

SIGN = "/cds-services/tarlatamab-order-sign"
SELECT = "/cds-services/tarlatamab-order-select"
VIEW = "/cds-services/tarlatamab-patient-view"
PLANNED = "2026-11-22T09:00:00Z"


def _validator() -> Any:
    import jsonschema

    document = openapi_document()
    schema = {"$ref": "#/components/schemas/CdsServiceResponse", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


RESPONSE_VALIDATOR = _validator()


def check_response(response: Any) -> None:
    """Never a 5xx; a 200 is a valid CDS response; anything else a 4xx with a FHIR OperationOutcome."""
    assert response.status_code < 500, response.data[:500]
    if response.status_code == 200:
        RESPONSE_VALIDATOR.validate(response.get_json())
    else:
        assert 400 <= response.status_code < 500
        assert response.mimetype == "application/fhir+json"
        body = response.get_json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"]


def bases() -> dict[str, tuple[str, dict[str, Any]]]:
    drafts = [tarlatamab_order(PLANNED)]
    observations = [lab("anc", 3.1, "2026-11-20T08:00:00Z"), lab("platelets", 180, "2026-11-20T08:00:00Z")]
    return {
        "order-sign": (SIGN, hook_request("order-sign", drafts=drafts, observations=observations)),
        "order-select": (SELECT, hook_request("order-select", drafts=drafts, observations=observations)),
        "patient-view": (VIEW, hook_request("patient-view", observations=observations)),
    }


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from paths(child, (*prefix, index))


def replaced(body: dict[str, Any], path: tuple[Any, ...], value: Any, *, delete: bool = False) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


DELETE = object()
WRONG_VALUES: list[Any] = [None, -1.5, True, "", [], {}, [None]]


def test_the_unmutated_requests_are_answered(client: Any) -> None:
    for url, body in bases().values():
        response = client.post(url, json=body)
        assert response.status_code == 200, response.data
        check_response(response)


@pytest.mark.parametrize("hook", ["order-sign", "order-select", "patient-view"])
def test_every_element_replaced_by_a_wrong_type_is_never_a_5xx(client: Any, hook: str) -> None:
    url, body = bases()[hook]
    seen: dict[int, int] = {}
    failures: list[str] = []
    # Every element once: inside arrays only the first item (the others have the same shape).
    targets = [p for p in paths(body) if not any(isinstance(step, int) and step > 0 for step in p)]
    for path in targets:
        for value in [*WRONG_VALUES, DELETE]:
            response = client.post(url, json=replaced(body, path, value, delete=value is DELETE))
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            try:
                check_response(response)
            except AssertionError:
                where = ".".join(str(p) for p in path)
                failures.append(f"{where} = {value!r} -> {response.status_code}")
    assert not failures, f"{len(failures)} mutations not answered properly:\n" + "\n".join(failures)
    assert 400 in seen  # the mutations did reach the validation


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats(allow_nan=False,
    allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hook=st.sampled_from(["order-sign", "order-select", "patient-view"]), data=st.data())
def test_random_json_at_random_places_is_never_a_5xx(client: Any, hook: str, data: st.DataObject) -> None:
    url, body = bases()[hook]
    targets = list(paths(body))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(targets))
        body = replaced(body, path, data.draw(json_values))
        targets = list(paths(body)) or targets
    check_response(client.post(url, json=body))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, url=st.sampled_from([SIGN, SELECT, VIEW, f"{SIGN}/feedback"]))
def test_random_json_bodies_are_never_a_5xx(client: Any, body: Any, url: str) -> None:
    check_response(client.post(url, json=body))


# A record whose id is not an id (found by the test above: a list id's repr, "\\x10" and all, reached a card).
NOT_IDS = [["\x10", {"": 214}], {"a": "x10^9/L"}, True]


def all_card_text(cards: list[dict[str, Any]]) -> str:
    return "\n".join(f"{c['summary']}\n{c.get('detail', '')}" for c in cards)


@pytest.mark.parametrize("bad_id", NOT_IDS, ids=["list", "object", "boolean"])
def test_a_lab_id_that_is_not_an_id_is_never_echoed_the_record_is_named_and_reported(client: Any, bad_id: Any) -> None:
    anc = lab("anc", 3.1, "2026-11-20T08:00:00Z")
    anc["id"] = bad_id
    body = hook_request(drafts=[tarlatamab_order(PLANNED)], observations=[anc])
    response = client.post(SIGN, json=body)
    check_response(response)
    text = all_card_text(response.get_json()["cards"])
    assert "Observation/?" in text  # named, so the pharmacist knows which record to look at
    assert "x10" not in text and "{" not in text and "True" not in text


@pytest.mark.parametrize("bad_id", NOT_IDS, ids=["list", "object", "boolean"])
def test_an_administration_id_that_is_not_an_id_is_never_echoed(client: Any, bad_id: Any) -> None:
    given = administration("2026-11-14T10:00:00Z", 1)
    given["id"] = bad_id
    body = hook_request(drafts=[tarlatamab_order(PLANNED)], administrations=[given])
    response = client.post(SIGN, json=body)
    check_response(response)
    text = all_card_text(response.get_json()["cards"])
    assert "MedicationAdministration/?" in text
    assert "x10" not in text and "{" not in text and "True" not in text


def test_an_unresolvable_medication_reference_is_quoted_as_written_not_as_a_python_repr(client: Any) -> None:
    given = administration("2026-11-14T10:00:00Z", 1)
    del given["medicationCodeableConcept"]
    given["medicationReference"] = {"reference": "Medication/kit\x10"}
    response = client.post(SIGN, json=hook_request(drafts=[tarlatamab_order(PLANNED)], administrations=[given]))
    check_response(response)
    text = all_card_text(response.get_json()["cards"])
    assert "could not be resolved" in text
    assert "x10" not in text and "\\" not in text


# --- limits ---------------------------------------------------------------------------------------------------


def test_body_over_the_default_limit_is_413(client: Any) -> None:
    limit = client.application.extensions["cds_settings"].max_request_bytes
    assert limit == 5 * 1024 * 1024
    raw = b'{"hook": "order-sign", "pad": "' + b"x" * limit + b'"}'
    response = client.post(SIGN, data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.get_json()["issue"][0]["code"] == "too-costly"


def test_chunked_body_over_the_limit_is_413(make_app: Callable[..., Any]) -> None:
    app = make_app(max_request_bytes=10_000)
    response = app.test_client().post(
        SIGN,
        input_stream=io.BytesIO(b'{"pad": "' + b"x" * 50_000 + b'"}'),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_feedback_over_the_limit_is_413(make_app: Callable[..., Any]) -> None:
    app = make_app(max_request_bytes=1000)
    body = {"feedback": [{"card": "x" * 2000, "outcome": "overridden", "outcomeTimestamp": "2026-11-21T09:00:00Z"}]}
    assert app.test_client().post(f"{SIGN}/feedback", json=body).status_code == 413


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"n": value} if i % 2 else [value]
    return value


def test_nesting_deeper_than_the_setting_is_400(make_app: Callable[..., Any]) -> None:
    app = make_app(max_json_depth=20)
    client = app.test_client()
    body = hook_request("order-sign", drafts=[tarlatamab_order(PLANNED)])
    body["extension"] = {"deep": nested(30)}
    response = client.post(SIGN, json=body)
    assert response.status_code == 400
    assert "deeper" in response.get_json()["issue"][0]["diagnostics"]
    body["extension"] = {"deep": nested(5)}
    assert client.post(SIGN, json=body).status_code == 200


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_nesting_with_default_settings_is_400(client: Any, depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    response = client.post(SIGN, data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b"42",
        b'"text"',
        b"{",
        b'{"hook": NaN}',
        b'{"a": 1e400}',
        b'{"a": 123456789012345678901234567890}',
        b'"\\ud800"',
        b"\xff\xfe\x00",
        b'{"hook": "order-sign"}\x00',
        b'{"hook": "order-sign", "hook": "patient-view"}',
    ],
)
@pytest.mark.parametrize("url", [SIGN, SELECT, VIEW, f"{SIGN}/feedback"])
def test_malformed_json_is_400(client: Any, raw: bytes, url: str) -> None:
    response = client.post(url, data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, (raw, response.data)
    check_response(response)


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_non_json_content_type_is_415(client: Any, ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    body = orjson.dumps(hook_request("order-sign"))
    response = client.post(SIGN, data=body, headers=headers)
    assert response.status_code == 415
    check_response(response)


def test_fhir_json_content_type_is_accepted(client: Any) -> None:
    body = orjson.dumps(hook_request("order-sign", drafts=[tarlatamab_order(PLANNED)]))
    response = client.post(SIGN, data=body, headers={"Content-Type": "application/fhir+json; charset=utf-8"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", SIGN, 405),
        ("PUT", SIGN, 405),
        ("DELETE", f"{SIGN}/feedback", 405),
        ("POST", "/cds-services/no-such-service", 404),
        ("POST", "/cds-services/" + "x" * 5000, 404),
        ("POST", "/cds-services/%00", 404),
        ("POST", "/cds-services", 405),
        ("GET", "/no/such/path", 404),
    ],
)
def test_wrong_methods_and_paths_are_4xx_operation_outcomes(client: Any, method: str, url: str, status: int) -> None:
    response = client.open(url, method=method, json=hook_request("order-sign"))
    assert response.status_code == status
    assert response.get_json()["resourceType"] == "OperationOutcome"
    if status == 405:
        assert "Allow" in response.headers


def test_error_bodies_do_not_echo_submitted_values(client: Any) -> None:
    marker = "PATIENT-SECRET-VALUE-77"
    body = hook_request("order-sign", drafts=[tarlatamab_order(PLANNED)])
    for mutation in (("hookInstance", [marker]), ("fhirServer", marker), ("prefetch", marker)):
        response = client.post(SIGN, json={**body, mutation[0]: mutation[1]})
        assert response.status_code == 400
        assert marker not in response.get_data(as_text=True)
