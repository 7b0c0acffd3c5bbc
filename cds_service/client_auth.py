"""Who is calling: the CDS client identified by its JWT (issue 4), or nobody in open development mode."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Request

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback_host(host: str | None) -> bool:
    """Whether a host name or address is loopback: `localhost` or a loopback IP literal (no DNS lookup)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_fhir_url(url: str) -> tuple[str, str, int, tuple[str, ...]] | None:
    """(scheme, host, port, path segments) of an absolute http(s) URL; None when it is not a plain one.

    A URL with credentials, a query, a fragment or a dot segment is never a FHIR base URL we contact.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return None
    segments = tuple(s for s in parts.path.split("/") if s != "")
    if any(s.lower() in {".", "..", "%2e", "%2e%2e", ".%2e", "%2e."} or "%2f" in s.lower() for s in segments):
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], segments


def fhir_server_allowed(url: str, allowed: Iterable[str]) -> bool:
    """Whether `url` lies under one of the `allowed` FHIR base URLs.

    Scheme, host and port must be equal (default ports normalised, case-insensitive host) and the allowed
    path must be a whole-segment prefix of the URL's path (trailing slashes ignored): with
    `https://ehr.example/fhir` allowed, `https://ehr.example/fhir/` and `https://ehr.example/fhir/r4` are
    allowed, `https://ehr.example/fhirx` and `https://ehr.example:8443/fhir` are not.
    """
    target = _split_fhir_url(url)
    if target is None:
        return False
    for entry in allowed:
        base = _split_fhir_url(entry)
        if base is None:
            continue
        if base[:3] == target[:3] and target[3][: len(base[3])] == base[3]:
            return True
    return False


class FhirServerAllowList(tuple[str, ...]):
    """The FHIR base URLs a client may send the service to; `url in allow_list` is the prefix match above."""

    def __new__(cls, urls: Iterable[str] = ()) -> FhirServerAllowList:
        return super().__new__(cls, tuple(urls))

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and fhir_server_allowed(url, tuple.__iter__(self))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (tuple(self),)


@dataclass(frozen=True)
class ClientIdentity:
    issuer: str
    fhir_servers: tuple[str, ...]  # the only fhirServer URLs the service will contact for this client
    jti: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.fhir_servers, FhirServerAllowList):
            object.__setattr__(self, "fhir_servers", FhirServerAllowList(self.fhir_servers))


class OpenAccess:
    """Development mode: no client verification (the server binds to loopback only)."""

    enabled = False

    def authenticate(self, request: Request, audience: str) -> ClientIdentity | None:
        return None
