"""A misbehaving FHIR server (real loopback servers): the service answers in bounded time, never hangs.

Data intake rules: a required prefetch key that cannot be fetched -> 412 (OperationOutcome); a search that
pages forever is cut at `fhir_max_pages` and reported on a data-quality card (200).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from fhir_builders import hook_request, patient, searchset, tarlatamab_order
from support_security import LocalServer, local_server, send_json

SIGN = "/cds-services/tarlatamab-order-sign"
TIMEOUTS = {"fhir_connect_timeout": 0.5, "fhir_total_timeout": 1.5, "fhir_max_pages": 3}
BOUND = 4.0  # seconds: total timeout plus generous slack for a loaded CI machine


def request_body(fhir_server: str, omit: tuple[str, ...] = ("observations",)) -> dict[str, Any]:
    body = hook_request("order-sign", drafts=[tarlatamab_order("2026-11-22T09:00:00Z")], omit=omit)
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = {
        "access_token": "fault-test-token", "token_type": "Bearer", "expires_in": 30,
        "scope": "user/Observation.read", "subject": "tarlatamab-cds",
    }  # fmt: skip
    return body


def timed_post(app: Any, body: dict[str, Any]) -> tuple[Any, float]:
    started = time.monotonic()
    response = app.test_client().post(SIGN, json=body)
    return response, time.monotonic() - started


def assert_412(response: Any) -> None:
    assert response.status_code == 412, response.data
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "fault-test-token" not in response.get_data(as_text=True)


Responder = Callable[[BaseHTTPRequestHandler, LocalServer], None]


def slow(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
    server.stop.wait(10)  # far beyond the total timeout; ends at once when the test tears the server down
    send_json(handler, searchset([]))


def status(code: int) -> Responder:
    def respond(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
        send_json(
            handler, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}, code
        )

    return respond


def raw(body: bytes, ctype: str = "application/fhir+json", length: int | None = None) -> Responder:
    def respond(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
        handler.close_connection = True

    return respond


def dribble(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.send_header("Content-Length", "1000000")
    handler.end_headers()
    handler.wfile.write(b'{"resourceType": "Bundle", "entry": [')
    handler.wfile.flush()
    while not server.stop.wait(0.1):  # one byte every 100 ms, within every socket read timeout
        handler.wfile.write(b" ")
        handler.wfile.flush()


def slow_headers(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    handler.wfile.flush()
    while not server.stop.wait(0.1):
        handler.wfile.write(b"X-Slow: 1\r\n")
        handler.wfile.flush()


def redirect(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
    handler.send_response(302)
    handler.send_header("Location", "http://127.0.0.1:9/elsewhere")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


FAULTS: dict[str, Responder] = {
    "slow beyond the timeout": slow,
    "401": status(401),
    "403": status(403),
    "404": status(404),
    "500": status(500),
    "503": status(503),
    "not JSON": raw(b"<html><body>Gateway error</body></html>", ctype="text/html"),
    "truncated JSON": raw(b'{"resourceType": "Bundle", "entry": [{"resou'),
    "truncated body (short of Content-Length)": raw(b'{"resourceType": "Bundle"', length=5000),
    "JSON that is not FHIR": raw(b'[{"resourceType": "Bundle"}]'),
    "OperationOutcome with 200": raw(
        b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}'
    ),
    "empty body": raw(b""),
    "dribbling body": dribble,
    "dribbling headers": slow_headers,
    "redirect": redirect,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_ends_in_412_within_the_bound(make_app: Callable[..., Any], fault: str) -> None:
    app = make_app(**TIMEOUTS)
    with local_server(FAULTS[fault]) as server:
        response, elapsed = timed_post(app, request_body(f"{server.url}/fhir"))
        assert elapsed < BOUND, f"{fault}: answered after {elapsed:.1f} s"
        assert_412(response)
        assert server.requests, "the FHIR server should have been asked"


def test_unreachable_server_is_412_fast(make_app: Callable[..., Any]) -> None:
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_app(**TIMEOUTS)
    response, elapsed = timed_post(app, request_body(f"http://127.0.0.1:{port}/fhir"))
    assert elapsed < BOUND
    assert_412(response)


def test_all_keys_missing_from_a_slow_server_still_bounded(make_app: Callable[..., Any]) -> None:
    app = make_app(**TIMEOUTS)
    with local_server(slow) as server:
        omit = ("patient", "medications", "administrations", "observations", "conditions")
        response, elapsed = timed_post(app, request_body(f"{server.url}/fhir", omit=omit))
        assert elapsed < BOUND
        assert_412(response)
        assert len(server.requests) == 5  # fetched in parallel, one request each


def test_endless_pagination_is_cut_at_the_page_cap(make_app: Callable[..., Any]) -> None:
    def endless(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
        page = len(server.requests)
        bundle = searchset([])
        bundle["link"] = [{"relation": "next", "url": f"{server.url}/fhir/Observation?page={page + 1}"}]
        send_json(handler, bundle)

    app = make_app(**TIMEOUTS)
    with local_server(endless) as server:
        response, elapsed = timed_post(app, request_body(f"{server.url}/fhir"))
        assert elapsed < BOUND
        assert response.status_code in (200, 412), response.data
        assert len(server.requests) == TIMEOUTS["fhir_max_pages"]
        if response.status_code == 200:
            assert "cards" in response.get_json()


def test_endless_pagination_of_a_prefetched_bundle_is_cut(make_app: Callable[..., Any]) -> None:
    def endless(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
        bundle = searchset([])
        bundle["link"] = [{"relation": "next", "url": f"{server.url}/fhir/Condition?page={len(server.requests) + 1}"}]
        send_json(handler, bundle)

    app = make_app(**TIMEOUTS)
    with local_server(endless) as server:
        body = request_body(f"{server.url}/fhir", omit=())
        body["prefetch"]["conditions"]["link"] = [{"relation": "next", "url": f"{server.url}/fhir/Condition?page=1"}]
        response, elapsed = timed_post(app, body)
        assert elapsed < BOUND
        assert response.status_code in (200, 412)
        assert len(server.requests) <= TIMEOUTS["fhir_max_pages"]


def test_slow_pages_share_one_deadline(make_app: Callable[..., Any]) -> None:
    def sluggish(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
        server.stop.wait(0.4)  # each page within the connect/read timeout, but the pages add up
        bundle = searchset([])
        bundle["link"] = [{"relation": "next", "url": f"{server.url}/fhir/Observation?page={len(server.requests)}"}]
        send_json(handler, bundle)

    app = make_app(fhir_connect_timeout=0.5, fhir_total_timeout=1.0, fhir_max_pages=50)
    with local_server(sluggish) as server:
        response, elapsed = timed_post(app, request_body(f"{server.url}/fhir"))
        assert elapsed < BOUND
        assert response.status_code in (200, 412)
        assert len(server.requests) <= 4


def test_working_server_is_answered(make_app: Callable[..., Any]) -> None:
    def good(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
        send_json(handler, patient() if "/Patient/" in handler.path else searchset([]))

    app = make_app(**TIMEOUTS)
    with local_server(good) as server:
        response, elapsed = timed_post(app, request_body(f"{server.url}/fhir", omit=("observations", "patient")))
        assert response.status_code == 200, response.data
        assert elapsed < BOUND
        assert len(server.requests) == 2
