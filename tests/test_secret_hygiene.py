"""Secret hygiene: the EHR's access token and the client JWT never reach logs, the store, error bodies or
exception text. A token is planted on every path (200, feedback, 400, 401, 403, 412, 500) and grepped for.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fhir_builders import hook_request, patient, searchset, tarlatamab_order
from sqlalchemy import select
from support_security import (
    BASE,
    SERVICE,
    SERVICE_URL,
    LocalServer,
    SigningKey,
    bearer,
    claims,
    issuer_entry,
    local_server,
    new_key,
    send_json,
    write_issuers,
)

from cds_service.store import metadata

ACCESS_TOKEN = f"at-PLANTED-{uuid.uuid4().hex}"


def fhir_respond(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
    if "/fail/" in handler.path:
        send_json(handler, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}, 500)
    elif "/Patient/" in handler.path:
        send_json(handler, patient())
    else:
        send_json(handler, searchset([]))


@pytest.fixture
def fhir() -> Iterator[LocalServer]:
    with local_server(fhir_respond) as server:
        yield server


@pytest.fixture
def key() -> SigningKey:
    return new_key("ES384")


@pytest.fixture
def app(make_app: Callable[..., Any], tmp_path: Path, key: SigningKey, fhir: LocalServer) -> Any:
    path = write_issuers(tmp_path / "issuers.json", issuer_entry([key], fhir_servers=[f"{fhir.url}/fhir"]))
    return make_app(trusted_issuers_file=path, public_base_url=BASE, fhir_connect_timeout=0.5, fhir_total_timeout=1.5)


def body_with_token(fhir_server: str, **auth: Any) -> dict[str, Any]:
    body = hook_request("order-sign", drafts=[tarlatamab_order("2026-11-22T09:00:00Z")], omit=("observations",))
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = {
        "access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 30,
        "scope": "user/Observation.read", "subject": "tarlatamab-cds", **auth,
    }  # fmt: skip
    return body


def dump_store(app: Any) -> str:
    writer = app.extensions.get("cds_audit_writer")
    if writer is not None:
        writer.flush()
    store = app.extensions["cds_store"]
    lines = []
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                lines.append(f"{table.name}: {dict(row._mapping)!r}")
    return "\n".join(lines)


def planted_parts(jwt: str) -> list[str]:
    header, payload, signature = jwt.split(".")
    return [ACCESS_TOKEN, jwt, signature, f"{header}.{payload}"]


def test_no_token_anywhere(
    app: Any, key: SigningKey, fhir: LocalServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 and werkzeug included
    client = app.test_client()
    seen: list[str] = []  # everything the service said back: status line, headers, body
    jwts: list[str] = []

    def post(path: str, body: Any, token_claims: dict[str, Any] | None = None, raw_jwt: str | None = None) -> Any:
        jwt = raw_jwt or key.sign(token_claims or claims())
        jwts.append(jwt)
        response = client.post(path, json=body, headers=bearer(jwt))
        seen.append(f"{response.status} {dict(response.headers)!r} {response.get_data(as_text=True)}")
        return response

    allowed = f"{fhir.url}/fhir"
    # 200: the missing key is fetched from the FHIR server with the access token
    assert post(f"/cds-services/{SERVICE}", body_with_token(allowed)).status_code == 200
    assert any(r.headers.get("Authorization") == f"Bearer {ACCESS_TOKEN}" for r in fhir.requests)  # control
    # 412: the FHIR server fails
    assert post(f"/cds-services/{SERVICE}", body_with_token(f"{allowed}/fail")).status_code == 412
    # 400: a malformed fhirAuthorization that carries the token
    assert post(f"/cds-services/{SERVICE}", body_with_token(allowed, token_type="MAC")).status_code == 400
    assert post(f"/cds-services/{SERVICE}", body_with_token(allowed, expires_in="soon")).status_code == 400
    # 403: a FHIR server the client may not use
    assert post(f"/cds-services/{SERVICE}", body_with_token("http://127.0.0.1:9/fhir")).status_code == 403
    # 401: expired, wrong audience, and a replay of a token that was accepted
    expired = claims(iat=1_700_000_000, exp=1_700_000_300)
    assert post(f"/cds-services/{SERVICE}", body_with_token(allowed), expired).status_code == 401
    assert post(f"/cds-services/{SERVICE}", body_with_token(allowed), claims(aud=f"{BASE}/x")).status_code == 401
    assert post(f"/cds-services/{SERVICE}", body_with_token(allowed), raw_jwt=jwts[0]).status_code == 401
    assert post(f"/cds-services/{SERVICE}", body_with_token(allowed), raw_jwt=jwts[0][:-5] + "AAAAA").status_code == 401
    # feedback
    feedback = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-21T09:00:00Z",
                              "overrideReason": {"userComment": "fine"}}]}  # fmt: skip
    assert post(f"/cds-services/{SERVICE}/feedback", feedback, claims(aud=f"{SERVICE_URL}/feedback")).status_code == 200
    # 500: an unexpected exception whose message holds both secrets
    engine = app.extensions["cds_engine"]

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"boom {ACCESS_TOKEN} {jwts[0]}")

    monkeypatch.setattr(engine, "handle", explode)
    assert post(f"/cds-services/{SERVICE}", body_with_token(allowed)).status_code == 500

    haystacks = {"logs": caplog.text, "responses": "\n".join(seen), "store": dump_store(app)}
    assert "cds_audit_log" in haystacks["store"] and "cds_jwt_replay" in haystacks["store"]
    for jwt in jwts:
        for secret in planted_parts(jwt):
            for where, text in haystacks.items():
                assert secret not in text, f"a planted secret appears in the {where}"
    assert "JWT rejected" in caplog.text  # the 401 reasons were logged, just not the tokens


def test_open_mode_never_logs_the_access_token(
    make_app: Callable[..., Any], fhir: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(fhir_connect_timeout=0.5, fhir_total_timeout=1.5)
    client = app.test_client()
    responses = [
        client.post(f"/cds-services/{SERVICE}", json=body_with_token(f"{fhir.url}/fhir")),
        client.post(f"/cds-services/{SERVICE}", json=body_with_token(f"{fhir.url}/fhir/fail")),
        client.post(f"/cds-services/{SERVICE}", json=body_with_token(f"{fhir.url}/fhir", token_type=7)),
    ]
    assert [r.status_code for r in responses] == [200, 412, 400]
    text = caplog.text + "".join(r.get_data(as_text=True) + repr(dict(r.headers)) for r in responses) + dump_store(app)
    assert ACCESS_TOKEN not in text


def test_request_objects_do_not_show_the_token(app: Any) -> None:
    from cds_service.fhir_client import FhirClient
    from cds_service.hook_request import parse_hook_request
    from cds_service.services import SERVICES_BY_ID

    settings = app.extensions["cds_settings"]
    request = parse_hook_request(body_with_token("https://ehr.example.org/fhir"), SERVICES_BY_ID[SERVICE], settings)
    assert request.access_token == ACCESS_TOKEN
    assert ACCESS_TOKEN not in repr(request) and ACCESS_TOKEN not in str(request)
    client = FhirClient("https://ehr.example.org/fhir", ACCESS_TOKEN, connect_timeout=1, total_timeout=1, max_pages=1)
    assert ACCESS_TOKEN not in repr(client)
