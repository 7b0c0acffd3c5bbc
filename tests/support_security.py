"""Helpers of the security tests: keys and JWTs made in the test, issuer files, and loopback HTTP servers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

BASE = "https://cds.example.org"  # the public_base_url of the apps under test
ISSUER = "https://ehr.example.org"
SERVICE = "tarlatamab-order-sign"
SERVICE_URL = f"{BASE}/cds-services/{SERVICE}"


@dataclass
class SigningKey:
    alg: str
    kid: str
    private: Any

    @property
    def public_jwk(self) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        jwk = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return jwk

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"typ": "JWT", "kid": self.kid, **header}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers)


_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


def new_key(alg: str = "ES384", kid: str | None = None) -> SigningKey:
    if alg in _CURVES:
        private: Any = ec.generate_private_key(_CURVES[alg]())
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(alg=alg, kid=kid or f"kid-{uuid.uuid4().hex[:8]}", private=private)


def claims(aud: str | list[str] = SERVICE_URL, iss: str = ISSUER, lifetime: int = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"iss": iss, "aud": aud, "iat": now, "exp": now + lifetime, "jti": str(uuid.uuid4())}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def issuer_entry(
    keys: list[SigningKey] | None = None,
    *,
    iss: str = ISSUER,
    fhir_servers: list[str] | None = None,
    jwks_url: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"iss": iss, "fhir_servers": fhir_servers or ["https://ehr.example.org/fhir"]}
    if keys is not None:
        entry["jwks"] = {"keys": [k.public_jwk for k in keys]}
    if jwks_url is not None:
        entry["jwks_url"] = jwks_url
    entry.update(extra)
    return entry


def write_issuers(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_bytes(orjson.dumps({"issuers": list(entries)}))
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- loopback HTTP servers ------------------------------------------------------------------------------

Handler = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]


@dataclass
class LocalServer:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def send_json(
    handler: BaseHTTPRequestHandler, body: Any, status: int = 200, ctype: str = "application/fhir+json"
) -> None:
    raw = orjson.dumps(body)
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


@contextmanager
def local_server(respond: Callable[[BaseHTTPRequestHandler, LocalServer], None]) -> Iterator[LocalServer]:
    """A threaded HTTP server on 127.0.0.1 (a free port) that records every request it gets."""
    state: dict[str, LocalServer] = {}

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            server = state["server"]
            server.requests.append(Recorded(self.path, dict(self.headers.items())))
            with suppress(BrokenPipeError, ConnectionResetError):
                respond(self, server)

        def log_message(self, *args: Any) -> None:  # keep the test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.timeout = 0.5
    host, port = httpd.server_address[:2]
    server = LocalServer(url=f"http://{host}:{port}")
    state["server"] = server
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
