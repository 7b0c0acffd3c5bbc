"""Verification of the CDS client's JWT (CDS Hooks 2.0 "Trusting CDS Clients"), with PyJWT.

The trusted issuers come from a JSON file (`CDS_TRUSTED_ISSUERS_FILE`):

    {"issuers": [{"iss": "https://ehr.example.org",
                  "jwks": {"keys": [...]},            # inline public keys (out of band), or
                  "jwks_url": "https://ehr.example.org/.well-known/jwks.json",
                  "fhir_servers": ["https://ehr.example.org/fhir"],
                  "audiences": ["https://cds.example.org/cds-services/x"],   # optional aud override
                  "algorithms": ["ES384"]}]}                                  # optional alg override

Procedure for every service and feedback call (any failure is a bare 401 with `WWW-Authenticate: Bearer`;
the reason is logged with the issuer and jti, never with the token):

1. the header is parsed without trust: `alg` must be in the allow-list (never `none` or HS*), `typ` JWT when
   present, `kid` present, no `crit`; a `jku` is honoured only when it equals the issuer's `jwks_url`;
2. the issuer is looked up from the unverified `iss` claim; only configured issuers get any further;
3. the key is chosen by `kid` from the issuer's inline JWKS, or from its `jwks_url` (fetched with a timeout,
   cached, fetched again at most once per interval on an unknown kid); the signature is checked by PyJWT;
4. the time claims must be finite numbers (no NaN/Infinity); then PyJWT verifies `iss`, `aud` (exactly the URL
   being called, a trailing slash aside), `exp`, `iat` (not in the future), `nbf` with the leeway and the
   required claims; the service adds the maximum lifetime and the `jti` shape;
5. the `jti` is recorded in the shared store until the token expires: a second use is a replay (401); a
   store that cannot be reached answers 503.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import jwt
import orjson
import requests
from flask import Request

from .client_auth import ClientIdentity, FhirServerAllowList, is_loopback_host
from .errors import ServiceError
from .settings import Settings
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

# Asymmetric algorithms only: `none` and every HMAC algorithm are refused whatever the configuration says.
SUPPORTED_ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_KEY_TYPE = {"ES": "EC", "RS": "RSA", "PS": "RSA"}
MAX_TOKEN_CHARS = 16 * 1024
MIN_RSA_BITS = 2048
MAX_JTI_CHARS = 255
MAX_JWKS_BYTES = 256 * 1024
JWKS_MIN_REFETCH_SECONDS = 30.0
JWKS_FETCH_TIMEOUT = (2.0, 3.0)
_ISSUER_KEYS = {"iss", "jwks", "jwks_url", "fhir_servers", "audiences", "algorithms", "description", "comment"}


class IssuerConfigError(ValueError):
    """The trusted-issuers file is missing, not JSON, or not the expected shape."""


@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    fhir_servers: tuple[str, ...]
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    audiences: tuple[str, ...] | None = None
    algorithms: tuple[str, ...] | None = None


class Rejected(Exception):
    """Internal: why a JWT was refused (logged, never sent to the client)."""


# --- configuration ------------------------------------------------------------------------------------


def check_algorithms(algorithms: Iterable[str], where: str) -> tuple[str, ...]:
    result = tuple(algorithms)
    if not result:
        raise IssuerConfigError(f"{where}: at least one signing algorithm is needed")
    for alg in result:
        if alg not in SUPPORTED_ALGORITHMS:
            allowed = ", ".join(sorted(SUPPORTED_ALGORITHMS))
            raise IssuerConfigError(f"{where}: algorithm {alg!r} is not allowed (asymmetric only: {allowed})")
    return result


def _check_url(value: Any, where: str, *, https_unless_loopback: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise IssuerConfigError(f"{where} must be a URL string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IssuerConfigError(f"{where} must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise IssuerConfigError(f"{where} must not carry credentials")
    if https_unless_loopback and parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise IssuerConfigError(f"{where} must use https (plain http only on loopback, for tests)")
    return value.strip()


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise IssuerConfigError(f"{where} must be an array of non-empty strings")
    return tuple(v.strip() for v in value)


def parse_trusted_issuers(data: Any, source: str = "trusted issuers") -> dict[str, TrustedIssuer]:
    if not isinstance(data, dict) or not isinstance(data.get("issuers"), list) or not data["issuers"]:
        raise IssuerConfigError(f'{source}: expected {{"issuers": [...]}} with at least one issuer')
    issuers: dict[str, TrustedIssuer] = {}
    for i, raw in enumerate(data["issuers"]):
        where = f"{source}: issuers[{i}]"
        if not isinstance(raw, dict):
            raise IssuerConfigError(f"{where} must be an object")
        unknown = set(raw) - _ISSUER_KEYS
        if unknown:
            raise IssuerConfigError(f"{where} has unknown member(s) {', '.join(sorted(unknown))}")
        iss = raw.get("iss")
        if not isinstance(iss, str) or not iss.strip():
            raise IssuerConfigError(f"{where}.iss must be a non-empty string")
        if iss in issuers:
            raise IssuerConfigError(f"{where}: issuer {iss!r} is listed twice")
        jwks = raw.get("jwks")
        jwks_url = raw.get("jwks_url")
        if jwks is None and jwks_url is None:
            raise IssuerConfigError(f"{where} needs jwks (inline public keys) or jwks_url")
        if jwks is not None:
            if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
                raise IssuerConfigError(f'{where}.jwks must be {{"keys": [...]}} with at least one key')
            for j, key in enumerate(jwks["keys"]):
                if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or not key["kid"]:
                    raise IssuerConfigError(f"{where}.jwks.keys[{j}] must be a JWK with a kid")
                if "d" in key or key.get("kty") == "oct":
                    raise IssuerConfigError(f"{where}.jwks.keys[{j}] must be a public key (no private or secret keys)")
        if jwks_url is not None:
            jwks_url = _check_url(jwks_url, f"{where}.jwks_url", https_unless_loopback=True)
        fhir_servers = _string_list(raw.get("fhir_servers", []), f"{where}.fhir_servers")
        for k, url in enumerate(fhir_servers):
            _check_url(url, f"{where}.fhir_servers[{k}]", https_unless_loopback=False)
        audiences = _string_list(raw["audiences"], f"{where}.audiences") if "audiences" in raw else None
        algorithms = (
            check_algorithms(_string_list(raw["algorithms"], f"{where}.algorithms"), f"{where}.algorithms")
            if "algorithms" in raw
            else None
        )
        issuers[iss] = TrustedIssuer(
            iss=iss,
            fhir_servers=tuple(u.rstrip("/") for u in fhir_servers),
            jwks=jwks,
            jwks_url=jwks_url,
            audiences=audiences,
            algorithms=algorithms,
        )
    return issuers


def load_trusted_issuers(path: Path) -> dict[str, TrustedIssuer]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise IssuerConfigError(f"trusted issuers file {path}: cannot read ({exc.strerror})") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise IssuerConfigError(f"trusted issuers file {path}: not valid JSON ({exc.msg})") from None
    return parse_trusted_issuers(data, f"trusted issuers file {path}")


# --- key sets ----------------------------------------------------------------------------------------


class JwksCache:
    """JWK Sets fetched from configured `jwks_url`s only: a timeout, a size cap, a cache, a rate limit."""

    def __init__(
        self,
        cache_seconds: float,
        *,
        min_refetch_seconds: float = JWKS_MIN_REFETCH_SECONDS,
        timeout: tuple[float, float] = JWKS_FETCH_TIMEOUT,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_seconds = cache_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self.timeout = timeout
        self._session = session or requests.Session()
        self._clock = clock
        self._entries: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._last_attempt: dict[str, float] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def keys(self, url: str, *, refresh: bool = False) -> list[dict[str, Any]]:
        """The keys at `url`; `refresh` asks for a new fetch (honoured at most once per interval)."""
        with self._lock:
            now = self._clock()
            entry = self._entries.get(url)
            fresh = entry is not None and now - entry[0] < self.cache_seconds
            if fresh and not refresh:
                return entry[1]  # type: ignore[index]
            last = self._last_attempt.get(url)
            if last is not None and now - last < self.min_refetch_seconds:
                return entry[1] if entry is not None else []
            self._last_attempt[url] = now
            try:
                keys = self._fetch(url)
            except Rejected as exc:
                log.warning("JWKS fetch from %s failed: %s", url, exc)
                return entry[1] if entry is not None else []
            self._entries[url] = (now, keys)
            return keys

    def _fetch(self, url: str) -> list[dict[str, Any]]:
        self.fetches += 1
        try:
            response = self._session.get(
                url, timeout=self.timeout, allow_redirects=False, stream=True, headers={"Accept": "application/json"}
            )
            try:
                if response.status_code != 200:
                    raise Rejected(f"HTTP {response.status_code}")
                body = b""
                for chunk in response.iter_content(chunk_size=16384):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise Rejected("the key set is too large")
            finally:
                response.close()
        except requests.RequestException as exc:
            raise Rejected(f"unreachable ({type(exc).__name__})") from None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Rejected("not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise Rejected('not a JWK Set ({"keys": [...]})')
        return [k for k in data["keys"] if isinstance(k, dict)]


# --- verification ------------------------------------------------------------------------------------


def _normalise_url(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or {"http": 80, "https": 443}.get(scheme) == port else f"{host}:{port}"
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{path}{query}"


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if value is None:
        raise Rejected(f"{name} missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(f"{name} is not a number")
    return float(value)


def _safe(value: Any, limit: int = 200) -> str:
    """A claim value fit for a log line: a bounded repr, never anything but the claim itself."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


class JwtClientAuth:
    enabled = True

    def __init__(
        self,
        issuers: dict[str, TrustedIssuer],
        store: Store,
        settings: Settings,
        *,
        jwks_cache: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuers = issuers
        self.store = store
        self.algorithms = check_algorithms(settings.jwt_algorithms, "CDS_JWT_ALGORITHMS")
        self.leeway = max(0, settings.jwt_leeway_seconds)
        self.max_lifetime = settings.jwt_max_lifetime_seconds
        self.jwks_cache = jwks_cache or JwksCache(settings.jwks_cache_seconds)
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> JwtClientAuth:
        if settings.trusted_issuers_file is None:
            raise IssuerConfigError("CDS_TRUSTED_ISSUERS_FILE is not set")
        issuers = load_trusted_issuers(settings.trusted_issuers_file)
        if not settings.public_base_url:
            log.warning(
                "CDS_PUBLIC_BASE_URL is not set: the JWT audience is checked against the request's Host header; "
                "set it to the public URL of the service in production"
            )
        log.info("client JWT verification on: %d trusted issuer(s): %s", len(issuers), ", ".join(sorted(issuers)))
        return cls(issuers, store, settings)

    # --- the request entry point ------------------------------------------------------------------
    def authenticate(self, request: Request, audience: str) -> ClientIdentity:
        token = self._bearer(request)
        audiences = [audience]
        if audience.rstrip("/").endswith("/feedback"):
            audiences.append(audience.rstrip("/").removesuffix("/feedback"))
        iss: Any = None
        jti: Any = None
        try:
            header, claims = self._unverified(token)
            iss, jti = claims.get("iss"), claims.get("jti")
            issuer = self._issuer(claims)
            alg = self._check_header(header, issuer)
            key = self._key(header, issuer, alg)
            _check_numeric_claims(claims)
            expected = issuer.audiences if issuer.audiences is not None else tuple(audiences)
            verified = self._decode(token, key, alg, issuer, expected)
            iss, jti = verified.get("iss"), verified.get("jti")
            expires_at = self._check_claims(verified)
        except Rejected as exc:
            self._reject(str(exc), iss, jti, request)
        try:
            fresh = self.store.remember_jti(issuer.iss, jti, datetime.fromtimestamp(expires_at, UTC))
        except StoreUnavailable as exc:
            log.error("JWT jti check impossible: store unavailable (%s) (iss=%s, jti=%s)", exc, _safe(iss), _safe(jti))
            raise ServiceError.single(
                503, "The service cannot verify the request now; retry later", headers={"Retry-After": "5"}
            ) from None
        if not fresh:
            self._reject("jti replayed", iss, jti, request)
        return ClientIdentity(issuer=issuer.iss, fhir_servers=FhirServerAllowList(issuer.fhir_servers), jti=jti)

    def _reject(self, reason: str, iss: Any, jti: Any, request: Request) -> NoReturn:
        log.warning("JWT rejected: %s (iss=%s, jti=%s, path=%s)", reason, _safe(iss), _safe(jti), request.path)
        raise ServiceError.single(401, "Unauthorized")

    # --- steps ----------------------------------------------------------------------------------------
    @staticmethod
    def _bearer(request: Request) -> str:
        raw = request.headers.get("Authorization")
        if raw is None:
            log.warning("JWT rejected: no Authorization header (path=%s)", request.path)
            raise ServiceError.single(401, "Unauthorized")
        scheme, _, token = raw.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS or " " in token:
            log.warning("JWT rejected: Authorization is not a Bearer token (path=%s)", request.path)
            raise ServiceError.single(401, "Unauthorized")
        return token

    @staticmethod
    def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Rejected(f"malformed token ({type(exc).__name__})") from None
        except Exception as exc:  # hostile bytes must end in a 401, whatever the parser throws
            raise Rejected(f"malformed token ({type(exc).__name__})") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise Rejected("malformed token")
        return header, claims

    def _issuer(self, claims: dict[str, Any]) -> TrustedIssuer:
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise Rejected("iss missing")
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise Rejected("untrusted iss")
        return issuer

    def _check_header(self, header: dict[str, Any], issuer: TrustedIssuer) -> str:
        alg = header.get("alg")
        allowed = issuer.algorithms or self.algorithms
        if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS or alg not in allowed:
            raise Rejected(f"alg {_safe(alg, 20)} not allowed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise Rejected("typ is not JWT")
        if "crit" in header:
            raise Rejected("crit header not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Rejected("kid missing")
        jku = header.get("jku")
        if jku is not None and (
            not isinstance(jku, str)
            or issuer.jwks_url is None
            or _normalise_url(jku) != _normalise_url(issuer.jwks_url)
        ):
            raise Rejected("jku is not the issuer's configured jwks_url")
        return alg

    def _key(self, header: dict[str, Any], issuer: TrustedIssuer, alg: str) -> jwt.PyJWK:
        kid = header["kid"]
        if issuer.jwks is not None:
            candidates = issuer.jwks["keys"]  # out of band: nothing is fetched
        else:
            assert issuer.jwks_url is not None
            candidates = self.jwks_cache.keys(issuer.jwks_url)
            if not any(k.get("kid") == kid for k in candidates):
                candidates = self.jwks_cache.keys(issuer.jwks_url, refresh=True)  # key rotation
        matches = [k for k in candidates if k.get("kid") == kid]
        if not matches:
            raise Rejected("unknown kid")
        for jwk in matches:
            if jwk.get("use") not in (None, "sig"):
                continue
            if jwk.get("kty") != _KEY_TYPE[alg[:2]]:
                continue
            if jwk.get("alg") not in (None, alg):
                continue
            if "d" in jwk or jwk.get("kty") == "oct":
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=alg)
            except Exception as exc:
                raise Rejected(f"the issuer's key {kid!r} is unusable ({type(exc).__name__})") from None
            if jwk["kty"] == "RSA" and getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
                raise Rejected(f"the issuer's RSA key {kid!r} is shorter than {MIN_RSA_BITS} bits")
            return key
        raise Rejected("no key with this kid fits alg")

    def _decode(
        self, token: str, key: jwt.PyJWK, alg: str, issuer: TrustedIssuer, audiences: Iterable[str]
    ) -> dict[str, Any]:
        """PyJWT's verification: the signature, `iss`, exact `aud`, `exp`, `iat`, `nbf` (with leeway), required
        claims. `aud` must equal one of the audiences character for character (a trailing slash aside): no
        case folding, no default-port or userinfo tricks, no fragment, no surrounding spaces."""
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=_audience_variants(audiences),
                issuer=issuer.iss,
                leeway=self.leeway,
                options={
                    "require": ["iss", "aud", "exp", "iat", "jti"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise Rejected(_reason(exc)) from None
        except Exception as exc:  # hostile input must end in a 401, whatever the library throws
            raise Rejected(f"not verifiable ({type(exc).__name__})") from None
        if not isinstance(claims, dict):
            raise Rejected("claims are not an object")
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> float:
        """What PyJWT does not check: the maximum lifetime, exp after iat, the jti's shape. Returns the expiry."""
        exp = _number(claims, "exp")
        iat = _number(claims, "iat")
        if exp < iat:
            raise Rejected("exp before iat")
        if exp - iat > self.max_lifetime:
            raise Rejected(f"lifetime {exp - iat:.0f} s above the maximum {self.max_lifetime} s")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Rejected("jti missing")
        if len(jti) > MAX_JTI_CHARS:
            raise Rejected("jti too long")
        return exp + self.leeway


# Time claims beyond this (year ~5138) are not times: refused before any arithmetic.
_MAX_TIME_CLAIM = 1e11


def _check_numeric_claims(claims: dict[str, Any]) -> None:
    """`exp`, `iat`, `nbf` when present must be finite JSON numbers (not NaN, Infinity, strings or booleans).

    Python's JSON reader accepts NaN and Infinity; a NaN compares false with everything and would pass any
    comparison, so they are refused here, before PyJWT's checks and the lifetime check.
    """
    for name in ("exp", "iat", "nbf"):
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Rejected(f"{name} is not a number")
            if not math.isfinite(value) or abs(value) > _MAX_TIME_CLAIM:
                raise Rejected(f"{name} is not a finite time")


def _audience_variants(audiences: Iterable[str]) -> list[str]:
    out: list[str] = []
    for audience in audiences:
        base = audience.rstrip("/")
        out.extend((base, base + "/"))
    return out


def _reason(exc: jwt.PyJWTError) -> str:
    """The log reason for a PyJWT rejection (never the token)."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"{exc.claim} missing"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not yet valid (nbf)" if "nbf" in str(exc) else "iat in the future"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "aud is not a string or an array of strings" if "format" in str(exc) else "aud mismatch"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "iss mismatch"
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "iat is not a number"
    text = str(exc)
    for claim in ("exp", "nbf", "iat"):
        if f"({claim})" in text:
            return f"{claim} is not a number"
    return f"signature not verifiable ({type(exc).__name__})"
