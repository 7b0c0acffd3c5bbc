"""SSRF guard: with trusted issuers the service contacts only the fhirServer URLs listed for the caller.

Two real loopback servers: the allowed FHIR server, and an "attacker" server that must receive nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fhir_builders import hook_request, patient, searchset, tarlatamab_order
from support_security import (
    BASE,
    SERVICE,
    LocalServer,
    bearer,
    claims,
    issuer_entry,
    local_server,
    new_key,
    send_json,
    write_issuers,
)

from cds_service.client_auth import ClientIdentity, FhirServerAllowList, fhir_server_allowed

TOKEN = "ssrf-test-access-token-0f9e8d"


def fhir_respond(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
    path = handler.path.split("?", 1)[0]
    if "/Patient/" in path:
        send_json(handler, patient())
    else:
        send_json(handler, searchset([]))


def attacker_respond(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
    send_json(handler, searchset([]))


@pytest.fixture
def servers() -> Iterator[tuple[LocalServer, LocalServer]]:
    with local_server(fhir_respond) as allowed, local_server(attacker_respond) as attacker:
        yield allowed, attacker


@pytest.fixture
def env(make_app: Callable[..., Any], tmp_path: Path, servers: tuple[LocalServer, LocalServer]) -> dict[str, Any]:
    allowed, attacker = servers
    key = new_key("ES384")
    path = write_issuers(tmp_path / "issuers.json", issuer_entry([key], fhir_servers=[f"{allowed.url}/fhir/"]))
    app = make_app(trusted_issuers_file=path, public_base_url=BASE, fhir_connect_timeout=1.0, fhir_total_timeout=3.0)
    return {"app": app, "key": key, "allowed": allowed, "attacker": attacker}


def post(env: dict[str, Any], fhir_server: str | None, *, omit: tuple[str, ...] = ("observations",)) -> Any:
    body = hook_request("order-sign", drafts=[tarlatamab_order("2026-11-22T09:00:00Z")], omit=omit)
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
        body["fhirAuthorization"] = {
            "access_token": TOKEN, "token_type": "Bearer", "expires_in": 30,
            "scope": "user/Patient.read user/Observation.read", "subject": "tarlatamab-cds",
        }  # fmt: skip
    token = env["key"].sign(claims())
    return env["app"].test_client().post(f"/cds-services/{SERVICE}", json=body, headers=bearer(token))


def test_unlisted_fhir_server_with_incomplete_prefetch_is_403_and_never_contacted(env: dict[str, Any]) -> None:
    response = post(env, f"{env['attacker'].url}/fhir")
    assert response.status_code == 403
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == ["fhirServer"]
    assert TOKEN not in response.get_data(as_text=True)
    assert env["attacker"].requests == []
    assert env["allowed"].requests == []


def test_unlisted_fhir_server_with_complete_prefetch_is_answered_without_contact(env: dict[str, Any]) -> None:
    response = post(env, f"{env['attacker'].url}/fhir", omit=())
    assert response.status_code == 200, response.data
    assert env["attacker"].requests == []


@pytest.mark.parametrize("suffix", ["/fhir", "/fhir/", "/fhir/r4"])
def test_listed_fhir_server_is_used_with_the_token(env: dict[str, Any], suffix: str) -> None:
    response = post(env, env["allowed"].url + suffix)
    assert response.status_code == 200, response.data
    assert env["allowed"].requests, "the allowed server should have been asked for the missing prefetch key"
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in env["allowed"].requests)
    assert env["attacker"].requests == []


@pytest.mark.parametrize(
    "variant",
    [
        "{allowed}/fhirx",
        "{allowed}/other",
        "{allowed}/fhir/../admin",
        "{allowed}/fhir/%2e%2e/admin",
        "{allowed}/fhir?x=1",
        "{allowed}/fhir#frag",
        "{allowed_https}/fhir",
        "http://localhost:{allowed_port}/fhir",
        "{attacker}/fhir",
        "{attacker}/",
        "{allowed}/fhir@127.0.0.1:{attacker_port}/fhir",
    ],
)
def test_lookalike_fhir_servers_are_refused(env: dict[str, Any], variant: str) -> None:
    allowed, attacker = env["allowed"], env["attacker"]
    url = variant.format(
        allowed=allowed.url,
        allowed_https=allowed.url.replace("http://", "https://"),
        allowed_port=allowed.url.rsplit(":", 1)[1],
        attacker=attacker.url,
        attacker_port=attacker.url.rsplit(":", 1)[1],
    )
    response = post(env, url)
    assert response.status_code in (400, 403), (url, response.status_code, response.data)
    assert attacker.requests == []
    assert allowed.requests == []


@pytest.mark.parametrize("url", ["http://user:pw@{allowed_host}/fhir", "http://{allowed_host}@{attacker_host}/fhir"])
def test_fhir_server_with_credentials_is_refused(env: dict[str, Any], url: str) -> None:
    allowed, attacker = env["allowed"], env["attacker"]
    target = url.format(
        allowed_host=allowed.url.removeprefix("http://"), attacker_host=attacker.url.removeprefix("http://")
    )
    response = post(env, target)
    assert response.status_code in (400, 403)
    assert attacker.requests == [] and allowed.requests == []


def test_next_link_to_another_server_is_not_followed(make_app: Callable[..., Any], tmp_path: Path) -> None:
    with local_server(attacker_respond) as attacker:

        def respond(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
            if "/Patient/" in handler.path:
                send_json(handler, patient())
                return
            bundle = searchset([])
            bundle["link"] = [{"relation": "next", "url": f"{attacker.url}/fhir/Observation?page=2"}]
            send_json(handler, bundle)

        with local_server(respond) as allowed:
            key = new_key("ES384")
            path = write_issuers(tmp_path / "i.json", issuer_entry([key], fhir_servers=[f"{allowed.url}/fhir"]))
            app = make_app(trusted_issuers_file=path, public_base_url=BASE, fhir_total_timeout=3.0)
            response = post({"app": app, "key": key}, f"{allowed.url}/fhir")
            assert response.status_code in (200, 412), response.data
            assert allowed.requests
            assert attacker.requests == []


def test_issuer_without_fhir_servers_contacts_nothing(
    make_app: Callable[..., Any], tmp_path: Path, servers: tuple[LocalServer, LocalServer]
) -> None:
    allowed, attacker = servers
    key = new_key("ES384")
    entry = issuer_entry([key])
    entry["fhir_servers"] = []
    app = make_app(trusted_issuers_file=write_issuers(tmp_path / "i.json", entry), public_base_url=BASE)
    assert post({"app": app, "key": key}, f"{allowed.url}/fhir").status_code == 403
    assert allowed.requests == [] and attacker.requests == []


# --- the matching rule itself --------------------------------------------------------------------------------

ALLOWED = ("https://ehr.example.org/fhir/",)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://ehr.example.org/fhir", True),
        ("https://ehr.example.org/fhir/", True),
        ("https://EHR.example.org/fhir", True),
        ("HTTPS://ehr.example.org:443/fhir", True),
        ("https://ehr.example.org/fhir/tenant-a", True),
        ("https://ehr.example.org/fhirx", False),
        ("https://ehr.example.org/FHIR", False),
        ("https://ehr.example.org/", False),
        ("https://ehr.example.org", False),
        ("http://ehr.example.org/fhir", False),
        ("https://ehr.example.org:8443/fhir", False),
        ("https://ehr.example.org.evil.com/fhir", False),
        ("https://evil.com/ehr.example.org/fhir", False),
        ("https://ehr.example.org@evil.com/fhir", False),
        ("https://user:pw@ehr.example.org/fhir", False),
        ("https://ehr.example.org/fhir/../admin", False),
        ("https://ehr.example.org/fhir/%2E%2E/admin", False),
        ("https://ehr.example.org/fhir%2f..%2fadmin", False),
        ("https://ehr.example.org/fhir?_format=json", False),
        ("https://ehr.example.org:notaport/fhir", False),
        ("ftp://ehr.example.org/fhir", False),
        ("", False),
    ],
)
def test_allow_list_matching(url: str, expected: bool) -> None:
    assert fhir_server_allowed(url, ALLOWED) is expected
    assert (url in FhirServerAllowList(ALLOWED)) is expected


def test_client_identity_wraps_plain_tuples() -> None:
    identity = ClientIdentity("https://ehr.example.org", ("https://ehr.example.org/fhir",))
    assert isinstance(identity.fhir_servers, FhirServerAllowList)
    assert "https://ehr.example.org/fhir/" in identity.fhir_servers
    assert "https://ehr.example.org/fhirx" not in identity.fhir_servers
    assert 5 not in identity.fhir_servers  # type: ignore[operator]
    assert list(identity.fhir_servers) == ["https://ehr.example.org/fhir"]
