"""A tiny FHIR server on loopback for tests: serves canned resources and searchset Bundles, records every
request (path, query, headers), and can be told to be slow, to trickle its answer, or to fail."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Route:
    body: Any = None  # a dict (sent as JSON) or bytes
    status: int = 200
    delay: float = 0.0  # seconds before the answer
    trickle: float | None = None  # seconds between single bytes of the body (a slow-drip server)
    content_type: str = "application/fhir+json"


@dataclass
class FhirServer:
    """Routes are keyed by resource type (the first path segment after /fhir) or by exact path."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    base_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def route_for(self, path: str) -> Route | None:
        if path in self.routes:
            return self.routes[path]
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "fhir":
            return self.routes.get(parts[1])
        return None

    def record(self, item: Recorded) -> None:
        with self._lock:
            self.requests.append(item)


def _handler(server_state: FhirServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            server_state.record(
                Recorded("GET", parts.path, parse_qs(parts.query), {k: v for k, v in self.headers.items()})
            )
            route = server_state.route_for(parts.path)
            if route is None:
                self._send(
                    404, orjson.dumps({"resourceType": "OperationOutcome", "issue": []}), "application/fhir+json"
                )
                return
            if route.delay:
                time.sleep(route.delay)
            body = route.body if isinstance(route.body, bytes) else orjson.dumps(route.body)
            if route.trickle is not None:
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(route.trickle)
                except OSError:
                    return
                return
            self._send(route.status, body, route.content_type)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                return

    return Handler


@contextmanager
def running_fhir_server(routes: dict[str, Route] | None = None) -> Iterator[FhirServer]:
    """Start the server on a free loopback port; always shut down on exit."""
    state = FhirServer(routes=dict(routes or {}))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/fhir"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
