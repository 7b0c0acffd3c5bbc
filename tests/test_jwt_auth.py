"""Client JWT verification (CDS Hooks 2.0 "Trusting CDS Clients") with keys generated in the test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from conftest import postgres_url
from cryptography.hazmat.primitives import serialization
from fhir_builders import hook_request
from sqlalchemy import text
from support_security import (
    BASE,
    ISSUER,
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

from cds_service.jwt_auth import IssuerConfigError, load_trusted_issuers
from cds_service.settings import Settings

FEEDBACK_URL = f"{SERVICE_URL}/feedback"


@pytest.fixture(scope="module")
def es_key() -> SigningKey:
    return new_key("ES384")


@pytest.fixture(scope="module")
def rs_key() -> SigningKey:
    return new_key("RS384")


@pytest.fixture
def issuers_file(tmp_path: Path, es_key: SigningKey, rs_key: SigningKey) -> Path:
    return write_issuers(tmp_path / "issuers.json", issuer_entry([es_key, rs_key]))


@pytest.fixture
def jwt_app(make_app: Callable[..., Any], issuers_file: Path) -> Any:
    return make_app(trusted_issuers_file=issuers_file, public_base_url=BASE)


@pytest.fixture
def jwt_client(jwt_app: Any) -> Any:
    with jwt_app.test_client() as c:
        yield c


def call(client: Any, token: str | None, path: str = f"/cds-services/{SERVICE}", body: Any = None) -> Any:
    headers = bearer(token) if token is not None else {}
    return client.post(path, json=body if body is not None else hook_request("order-sign"), headers=headers)


def assert_401(response: Any) -> None:
    assert response.status_code == 401, response.data
    assert response.data == b""
    assert response.headers["WWW-Authenticate"] == "Bearer"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


# --- accepted ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_name", ["es_key", "rs_key"])
def test_valid_jwt_is_accepted(key_name: str, request: pytest.FixtureRequest, jwt_client: Any) -> None:
    key: SigningKey = request.getfixturevalue(key_name)
    response = call(jwt_client, key.sign(claims()))
    assert response.status_code == 200, response.data
    assert "cards" in response.get_json()


def test_aud_as_array_and_extra_claims_are_accepted(jwt_client: Any, es_key: SigningKey) -> None:
    now = int(time.time())
    token = es_key.sign(claims(aud=["https://other.example/x", SERVICE_URL], nbf=now - 300, sub="epic-client"))
    assert call(jwt_client, token).status_code == 200


def test_identity_reaches_the_request(jwt_app: Any, es_key: SigningKey) -> None:
    seen: list[Any] = []

    @jwt_app.after_request
    def grab(response: Any) -> Any:
        from flask import g

        seen.append(getattr(g, "cds_client", None))
        return response

    with jwt_app.test_client() as c:
        token_claims = claims()
        assert call(c, es_key.sign(token_claims)).status_code == 200
    identity = seen[-1]
    assert identity.issuer == ISSUER
    assert identity.jti == token_claims["jti"]
    assert "https://ehr.example.org/fhir" in identity.fhir_servers


def test_open_endpoints_need_no_token(jwt_client: Any) -> None:
    assert jwt_client.get("/cds-services").status_code == 200
    assert jwt_client.get("/healthz").status_code == 200
    assert jwt_client.get("/openapi.json").status_code == 200
    preflight = jwt_client.options(
        f"/cds-services/{SERVICE}",
        headers={"Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    )  # fmt: skip
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_unknown_service_without_token_is_401_not_404(jwt_client: Any) -> None:
    assert_401(call(jwt_client, None, path="/cds-services/no-such-service"))


def test_host_url_is_the_audience_without_public_base_url(
    make_app: Callable[..., Any], issuers_file: Path, es_key: SigningKey
) -> None:
    app = make_app(trusted_issuers_file=issuers_file)
    with app.test_client() as c:
        assert call(c, es_key.sign(claims(aud=f"http://localhost/cds-services/{SERVICE}"))).status_code == 200
        assert_401(call(c, es_key.sign(claims(aud=SERVICE_URL))))


def test_additional_algorithm_by_setting(make_app: Callable[..., Any], tmp_path: Path) -> None:
    es256 = new_key("ES256")
    path = write_issuers(tmp_path / "i.json", issuer_entry([es256]))
    default = make_app(trusted_issuers_file=path, public_base_url=BASE)
    with default.test_client() as c:
        assert_401(call(c, es256.sign(claims())))
    widened = make_app(trusted_issuers_file=path, public_base_url=BASE, jwt_algorithms=("ES384", "ES256"))
    with widened.test_client() as c:
        assert call(c, es256.sign(claims())).status_code == 200


def test_per_issuer_audience_override(make_app: Callable[..., Any], tmp_path: Path, es_key: SigningKey) -> None:
    path = write_issuers(tmp_path / "i.json", issuer_entry([es_key], audiences=["https://configured.example/aud"]))
    app = make_app(trusted_issuers_file=path, public_base_url=BASE)
    with app.test_client() as c:
        assert call(c, es_key.sign(claims(aud="https://configured.example/aud"))).status_code == 200
        assert_401(call(c, es_key.sign(claims(aud=SERVICE_URL))))


# --- feedback audience -----------------------------------------------------------------------------------

FEEDBACK = {
    "feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-21T09:00:00Z"}]
}


@pytest.mark.parametrize("aud", [FEEDBACK_URL, SERVICE_URL, FEEDBACK_URL + "/"])
def test_feedback_accepts_feedback_and_service_url(jwt_client: Any, es_key: SigningKey, aud: str) -> None:
    response = call(jwt_client, es_key.sign(claims(aud=aud)), path=f"/cds-services/{SERVICE}/feedback", body=FEEDBACK)
    assert response.status_code == 200, response.data


@pytest.mark.parametrize(
    "aud", [f"{BASE}/cds-services/tarlatamab-patient-view", f"{BASE}/cds-services", "https://evil.example/x/feedback"]
)
def test_feedback_rejects_other_audiences(jwt_client: Any, es_key: SigningKey, aud: str) -> None:
    assert_401(call(jwt_client, es_key.sign(claims(aud=aud)), path=f"/cds-services/{SERVICE}/feedback", body=FEEDBACK))


def test_feedback_without_token_is_401(jwt_client: Any) -> None:
    assert_401(call(jwt_client, None, path=f"/cds-services/{SERVICE}/feedback", body=FEEDBACK))


# --- rejections --------------------------------------------------------------------------------------------


def _pem(key: SigningKey) -> bytes:
    return key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hs256(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _tampered(key: SigningKey) -> str:
    header, payload, signature = key.sign(claims()).split(".")
    altered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    altered["aud"] = f"{BASE}/cds-services/tarlatamab-patient-view"
    return f"{header}.{b64(json.dumps(altered).encode())}.{signature}"


def _without(name: str, key: SigningKey) -> str:
    body = claims()
    body.pop(name)
    return key.sign(body)


REJECTIONS: dict[str, Callable[[SigningKey, SigningKey], str | None]] = {
    "missing header": lambda es, rs: None,
    "not a JWT": lambda es, rs: "not-a-jwt",
    "malformed segments": lambda es, rs: "eyJhbGciOi.eyJpc3Mi.c2ln",
    "garbage base64": lambda es, rs: "%%%.###.@@@",
    "alg none": lambda es, rs: jwt.encode(claims(), None, algorithm="none", headers={"kid": es.kid}),
    "alg none unsigned by hand": lambda es, rs: unsigned({"alg": "none", "typ": "JWT", "kid": es.kid}, claims()),
    "HS256 with the public PEM as secret": lambda es, rs: _hs256(
        _pem(rs), {"alg": "HS256", "typ": "JWT", "kid": rs.kid}, claims()
    ),
    "HS256 with the JWK as secret": lambda es, rs: _hs256(
        json.dumps(es.public_jwk).encode(), {"alg": "HS256", "typ": "JWT", "kid": es.kid}, claims()
    ),
    "RS256 not allowed": lambda es, rs: jwt.encode(claims(), rs.private, algorithm="RS256", headers={"kid": rs.kid}),
    "alg does not fit the key type": lambda es, rs: jwt.encode(
        claims(), rs.private, algorithm="RS384", headers={"kid": es.kid}
    ),
    "unknown kid": lambda es, rs: jwt.encode(claims(), es.private, algorithm="ES384", headers={"kid": "nope"}),
    "missing kid": lambda es, rs: jwt.encode(claims(), es.private, algorithm="ES384"),
    "bad signature (other key, same kid)": lambda es, rs: new_key("ES384", kid=es.kid).sign(claims()),
    "tampered payload": lambda es, rs: _tampered(es),
    "truncated signature": lambda es, rs: es.sign(claims())[:-10],
    "untrusted iss": lambda es, rs: es.sign(claims(iss="https://evil.example")),
    "missing iss": lambda es, rs: es.sign(claims(iss=None)),
    "wrong aud": lambda es, rs: es.sign(claims(aud=f"{BASE}/cds-services/tarlatamab-patient-view")),
    "aud of another host": lambda es, rs: es.sign(claims(aud=f"https://evil.example/cds-services/{SERVICE}")),
    "aud discovery": lambda es, rs: es.sign(claims(aud=f"{BASE}/cds-services")),
    "aud not a string": lambda es, rs: es.sign(claims(aud=[1, 2])),
    "missing aud": lambda es, rs: _without("aud", es),
    "expired": lambda es, rs: es.sign(claims(iat=int(time.time()) - 900, exp=int(time.time()) - 300)),
    "iat in the future": lambda es, rs: es.sign(claims(iat=int(time.time()) + 900, exp=int(time.time()) + 1200)),
    "lifetime too long": lambda es, rs: es.sign(claims(lifetime=7200)),
    "nbf in the future": lambda es, rs: es.sign(claims(nbf=int(time.time()) + 900)),
    "exp not a number": lambda es, rs: es.sign(claims(exp="tomorrow")),
    "missing exp": lambda es, rs: _without("exp", es),
    "missing iat": lambda es, rs: _without("iat", es),
    "missing jti": lambda es, rs: _without("jti", es),
    "jti not a string": lambda es, rs: es.sign(claims(jti=12345)),
    "jti too long": lambda es, rs: es.sign(claims(jti="j" * 600)),
    "jku not configured": lambda es, rs: es.sign(claims(), jku="https://evil.example/jwks.json"),
    "typ not JWT": lambda es, rs: jwt.encode(
        claims(), es.private, algorithm="ES384", headers={"kid": es.kid, "typ": "at+jwt"}
    ),
    "crit header": lambda es, rs: es.sign(claims(), crit=["exp"]),
}


# The reason logged for each case: proves that each token is refused by the check it targets.
REASONS = {
    "missing header": "no Authorization header",
    "alg none": "alg 'none' not allowed",
    "alg none unsigned by hand": "alg 'none' not allowed",
    "HS256 with the public PEM as secret": "alg 'HS256' not allowed",
    "HS256 with the JWK as secret": "alg 'HS256' not allowed",
    "RS256 not allowed": "alg 'RS256' not allowed",
    "alg does not fit the key type": "no key with this kid fits alg",
    "unknown kid": "unknown kid",
    "missing kid": "kid missing",
    "bad signature (other key, same kid)": "bad signature",
    "tampered payload": "bad signature",
    "untrusted iss": "untrusted iss",
    "missing iss": "iss missing",
    "wrong aud": "aud mismatch",
    "aud of another host": "aud mismatch",
    "aud discovery": "aud mismatch",
    "aud not a string": "aud is not a string",
    "missing aud": "aud missing",
    "expired": "expired",
    "iat in the future": "iat in the future",
    "lifetime too long": "lifetime 7200 s above the maximum",
    "nbf in the future": "not yet valid",
    "exp not a number": "exp is not a number",
    "missing exp": "exp missing",
    "missing iat": "iat missing",
    "missing jti": "jti missing",
    "jti too long": "jti too long",
    "jku not configured": "jku is not the issuer's configured jwks_url",
    "typ not JWT": "typ is not JWT",
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejections(
    case: str, jwt_client: Any, es_key: SigningKey, rs_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    token = REJECTIONS[case](es_key, rs_key)
    caplog.set_level(logging.DEBUG)
    assert_401(call(jwt_client, token))
    assert "JWT rejected" in caplog.text
    assert f"JWT rejected: {REASONS.get(case, '')}" in caplog.text
    if token:
        assert token not in caplog.text
        assert token.split(".")[-1] not in caplog.text or not token.split(".")[-1]


@pytest.mark.parametrize(
    "value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "bearer a b", "Token abc", "Bearer " + "a" * 20000]
)
def test_malformed_authorization_headers(jwt_client: Any, value: str) -> None:
    response = jwt_client.post(
        f"/cds-services/{SERVICE}", json=hook_request("order-sign"), headers={"Authorization": value}
    )
    assert_401(response)


def test_reason_is_logged_without_token(jwt_client: Any, es_key: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token_claims = claims(aud=f"{BASE}/cds-services/tarlatamab-patient-view")
    token = es_key.sign(token_claims)
    assert_401(call(jwt_client, token))
    assert "JWT rejected: aud mismatch" in caplog.text
    assert ISSUER in caplog.text and token_claims["jti"] in caplog.text
    assert token not in caplog.text


def test_replayed_jti_is_rejected(jwt_client: Any, es_key: SigningKey) -> None:
    token = es_key.sign(claims())
    assert call(jwt_client, token).status_code == 200
    assert_401(call(jwt_client, token))
    # the same jti in a freshly signed token is a replay too
    again = claims()
    again["jti"] = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert_401(call(jwt_client, es_key.sign(again)))


def test_same_jti_from_two_issuers_is_not_a_replay(make_app: Callable[..., Any], tmp_path: Path) -> None:
    one, two = new_key("ES384"), new_key("ES384")
    path = write_issuers(
        tmp_path / "i.json", issuer_entry([one]), issuer_entry([two], iss="https://other-ehr.example.org")
    )
    app = make_app(trusted_issuers_file=path, public_base_url=BASE)
    with app.test_client() as c:
        assert call(c, one.sign(claims(jti="shared-jti"))).status_code == 200
        assert call(c, two.sign(claims(jti="shared-jti", iss="https://other-ehr.example.org"))).status_code == 200


def _replay_across_instances(make_app: Callable[..., Any], issuers_file: Path, key: SigningKey, url: str) -> None:
    first = make_app(trusted_issuers_file=issuers_file, public_base_url=BASE, database_url=url)
    second = make_app(trusted_issuers_file=issuers_file, public_base_url=BASE, database_url=url)
    token = key.sign(claims())
    a, b = first.test_client(), second.test_client()
    assert call(a, token).status_code == 200
    assert_401(call(b, token))
    assert_401(call(a, token))
    fresh = key.sign(claims())
    assert call(b, fresh).status_code == 200
    assert_401(call(a, fresh))


@pytest.mark.parametrize("key_name", ["es_key", "rs_key"])
def test_replay_across_instances_sharing_sqlite(
    key_name: str, request: pytest.FixtureRequest, make_app: Callable[..., Any], issuers_file: Path, tmp_path: Path
) -> None:
    key = request.getfixturevalue(key_name)
    _replay_across_instances(make_app, issuers_file, key, f"sqlite:///{tmp_path / 'shared' / 'cds.sqlite3'}")


@pytest.mark.postgres
@pytest.mark.skipif(postgres_url() is None, reason="no PostgreSQL: CDS_TEST_DATABASE_URL is not set and the local server does not answer")
def test_replay_across_instances_sharing_postgres(
    make_app: Callable[..., Any], issuers_file: Path, es_key: SigningKey
) -> None:
    _replay_across_instances(make_app, issuers_file, es_key, postgres_url())  # type: ignore[arg-type]


def test_store_unavailable_during_jti_check_is_503(jwt_app: Any, es_key: SigningKey) -> None:
    store = jwt_app.extensions["cds_store"]
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE cds_jwt_replay"))
    with jwt_app.test_client() as c:
        response = call(c, es_key.sign(claims()))
        assert response.status_code == 503
        assert response.get_json()["resourceType"] == "OperationOutcome"
        feedback = call(
            c, es_key.sign(claims(aud=FEEDBACK_URL)), path=f"/cds-services/{SERVICE}/feedback", body=FEEDBACK
        )
        assert feedback.status_code == 503
        assert_401(call(c, "garbage"))  # an invalid token is refused before the store is needed


# --- JWKS by URL ------------------------------------------------------------------------------------------


def _jwks_server(holder: dict[str, Any]) -> Callable[[BaseHTTPRequestHandler, LocalServer], None]:
    def respond(handler: BaseHTTPRequestHandler, server: LocalServer) -> None:
        if holder.get("status", 200) != 200:
            send_json(handler, {"error": "down"}, status=holder["status"], ctype="application/json")
            return
        send_json(handler, {"keys": [k.public_jwk for k in holder["keys"]]}, ctype="application/json")

    return respond


def test_jwks_url_fetch_cache_and_jku(make_app: Callable[..., Any], tmp_path: Path, es_key: SigningKey) -> None:
    holder: dict[str, Any] = {"keys": [es_key]}
    with local_server(_jwks_server(holder)) as server:
        jwks_url = f"{server.url}/.well-known/jwks.json"
        path = write_issuers(tmp_path / "i.json", issuer_entry(jwks_url=jwks_url))
        app = make_app(trusted_issuers_file=path, public_base_url=BASE)
        with app.test_client() as c:
            assert call(c, es_key.sign(claims())).status_code == 200
            assert call(c, es_key.sign(claims(), jku=jwks_url)).status_code == 200
            assert len(server.requests) == 1  # cached
            assert_401(call(c, es_key.sign(claims(), jku=f"{server.url}/other.json")))
            assert_401(call(c, es_key.sign(claims(), jku="https://evil.example/jwks.json")))
            # unknown kids: one refetch at most per interval, whatever the number of attempts
            stranger = new_key("ES384")
            for _ in range(5):
                assert_401(call(c, stranger.sign(claims())))
            assert len(server.requests) <= 2
        assert all(r.path == "/.well-known/jwks.json" for r in server.requests)


def test_jwks_key_rotation(make_app: Callable[..., Any], tmp_path: Path, es_key: SigningKey) -> None:
    holder: dict[str, Any] = {"keys": [es_key]}
    with local_server(_jwks_server(holder)) as server:
        path = write_issuers(tmp_path / "i.json", issuer_entry(jwks_url=f"{server.url}/jwks.json"))
        app = make_app(trusted_issuers_file=path, public_base_url=BASE)
        app.extensions["cds_auth"].jwks_cache.min_refetch_seconds = 0
        with app.test_client() as c:
            assert call(c, es_key.sign(claims())).status_code == 200
            rotated = new_key("RS384")
            holder["keys"] = [rotated]
            assert call(c, rotated.sign(claims())).status_code == 200
            assert len(server.requests) == 2


def test_jwks_url_down_is_401(make_app: Callable[..., Any], tmp_path: Path, es_key: SigningKey) -> None:
    holder: dict[str, Any] = {"keys": [es_key], "status": 500}
    with local_server(_jwks_server(holder)) as server:
        path = write_issuers(tmp_path / "i.json", issuer_entry(jwks_url=f"{server.url}/jwks.json"))
        app = make_app(trusted_issuers_file=path, public_base_url=BASE)
        with app.test_client() as c:
            started = time.monotonic()
            assert_401(call(c, es_key.sign(claims())))
            assert time.monotonic() - started < 5


def test_jku_with_inline_keys_must_equal_the_configured_url(
    make_app: Callable[..., Any], tmp_path: Path, es_key: SigningKey
) -> None:
    jwks_url = "https://ehr.example.org/.well-known/jwks.json"
    path = write_issuers(tmp_path / "i.json", issuer_entry([es_key], jwks_url=jwks_url))
    app = make_app(trusted_issuers_file=path, public_base_url=BASE)
    with app.test_client() as c:
        assert call(c, es_key.sign(claims(), jku=jwks_url)).status_code == 200  # inline keys: nothing fetched
        assert_401(call(c, es_key.sign(claims(), jku="https://ehr.example.org/.well-known/other.json")))


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"{}", "issuers"),
        (b'{"issuers": []}', "issuers"),
        (b'{"issuers": [{"iss": "https://x"}]}', "jwks"),
        (b'{"issuers": [{"iss": "https://x", "jwks": {"keys": []}}]}', "at least one key"),
        (b'{"issuers": [{"iss": "https://x", "jwks_url": "http://evil.example/jwks"}]}', "https"),
        (b'{"issuers": [{"iss": "https://x", "jwks_url": "https://x/j", "algorithms": ["HS256"]}]}', "HS256"),
        (b'{"issuers": [{"iss": "https://x", "jwks_url": "https://x/j", "algorithms": ["none"]}]}', "none"),
        (b'{"issuers": [{"iss": "https://x", "jwks_url": "https://x/j", "fhirServers": ["https://x"]}]}', "unknown"),
        (b'{"issuers": [{"iss": "https://x", "jwks_url": "https://x/j", "fhir_servers": "https://x"}]}', "array"),
        (
            b'{"issuers": [{"iss": "https://x", "jwks": {"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]}}]}',
            "public key",
        ),
        (
            b'{"issuers": [{"iss": "https://x", "jwks_url": "https://x/j"}, {"iss": "https://x", "jwks_url": "https://x/j"}]}',
            "twice",
        ),
    ],
)
def test_bad_issuer_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "issuers.json"
    path.write_bytes(content)
    with pytest.raises(IssuerConfigError, match=message):
        load_trusted_issuers(path)


def test_private_key_in_issuer_file_is_refused(tmp_path: Path, es_key: SigningKey) -> None:
    from jwt.algorithms import ECAlgorithm

    private_jwk = ECAlgorithm.to_jwk(es_key.private, as_dict=True)
    private_jwk["kid"] = es_key.kid
    path = write_issuers(tmp_path / "i.json", {"iss": ISSUER, "jwks": {"keys": [private_jwk]}})
    with pytest.raises(IssuerConfigError, match="public key"):
        load_trusted_issuers(path)


def test_app_refuses_a_missing_issuers_file(make_app: Callable[..., Any], tmp_path: Path) -> None:
    with pytest.raises(IssuerConfigError, match="cannot read"):
        make_app(trusted_issuers_file=tmp_path / "missing.json")


@pytest.mark.parametrize("algorithms", [("HS256",), ("none",), ("ES384", "HS512"), ()])
def test_app_refuses_symmetric_or_none_algorithms(
    make_app: Callable[..., Any], issuers_file: Path, algorithms: tuple[str, ...]
) -> None:
    with pytest.raises(IssuerConfigError):
        make_app(trusted_issuers_file=issuers_file, jwt_algorithms=algorithms)


def test_settings_from_env_reads_the_issuers_file(issuers_file: Path) -> None:
    settings = Settings.from_env({"CDS_TRUSTED_ISSUERS_FILE": str(issuers_file), "CDS_JWT_ALGORITHMS": "ES384"})
    assert settings.trusted_issuers_file == issuers_file
    assert load_trusted_issuers(issuers_file)[ISSUER].fhir_servers == ("https://ehr.example.org/fhir",)


# --- the public sandbox -------------------------------------------------------------------------------------

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sandbox-issuers.json"
SHARED_JWKS = Path("/work/shared/sandbox/jwks.json")


def test_sandbox_example_file_holds_the_sandbox_public_key() -> None:
    issuers = load_trusted_issuers(EXAMPLE)
    sandbox = issuers[SANDBOX_ISS]
    assert sandbox.jwks_url == SANDBOX_JKU
    assert sandbox.jwks is not None
    (key,) = sandbox.jwks["keys"]
    assert key["kid"] == SANDBOX_KID and key["kty"] == "EC" and key["crv"] == "P-384" and "d" not in key
    if SHARED_JWKS.exists():
        assert sandbox.jwks == orjson.loads(SHARED_JWKS.read_bytes())


def test_sandbox_shaped_jwt_is_accepted(make_app: Callable[..., Any], tmp_path: Path) -> None:
    """A JWT exactly like the sandbox's, signed by a key of ours configured under the sandbox issuer."""
    example = orjson.loads(EXAMPLE.read_bytes())
    ours = new_key("ES384", kid=SANDBOX_KID)
    entry = dict(example["issuers"][0])
    entry["jwks"] = {"keys": [ours.public_jwk]}
    path = write_issuers(tmp_path / "sandbox-test.json", entry)
    app = make_app(trusted_issuers_file=path, public_base_url=BASE)
    now = int(time.time())
    body = {"iss": SANDBOX_ISS, "aud": SERVICE_URL, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    token = jwt.encode(
        body, ours.private, algorithm="ES384", headers={"typ": "JWT", "kid": SANDBOX_KID, "jku": SANDBOX_JKU}
    )
    assert jwt.get_unverified_header(token) == {"alg": "ES384", "typ": "JWT", "kid": SANDBOX_KID, "jku": SANDBOX_JKU}
    with app.test_client() as c:
        assert call(c, token).status_code == 200
        assert_401(call(c, token))  # and only once


def test_sandbox_example_rejects_a_token_not_signed_by_the_sandbox_key(make_app: Callable[..., Any]) -> None:
    app = make_app(trusted_issuers_file=EXAMPLE, public_base_url=BASE)
    impostor = new_key("ES384", kid=SANDBOX_KID)
    token = impostor.sign(claims(iss=SANDBOX_ISS), jku=SANDBOX_JKU)
    with app.test_client() as c:
        assert_401(call(c, token))


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits")
def test_short_rsa_keys_are_refused(
    make_app: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = SigningKey("RS384", "weak", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    app = make_app(trusted_issuers_file=write_issuers(tmp_path / "i.json", issuer_entry([weak])), public_base_url=BASE)
    assert_401(call(app.test_client(), weak.sign(claims())))
    assert "shorter than 2048 bits" in caplog.text
