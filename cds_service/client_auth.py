"""Who is calling: the CDS client identified by its JWT (issue 4), or nobody in open development mode."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

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


def _path_segments(path: str) -> tuple[str, ...] | None:
    """The path's segments, or None when a segment could climb or hide: `..`, `.`, `..;x` (a path parameter
    that servers such as Tomcat strip), percent-encoded dots or slashes, backslashes, NUL or control bytes."""
    if "\\" in path:
        return None
    segments = tuple(s for s in path.split("/") if s != "")
    for segment in segments:
        decoded = unquote(segment)
        if any(ord(c) < 0x20 or c in "\\/" for c in decoded):
            return None
        if decoded.split(";", 1)[0].strip() in {".", ".."}:
            return None
    return segments


def _split_url(url: str, *, allow_query: bool) -> tuple[str, str, int, tuple[str, ...]] | None:
    """(scheme, host, port, path segments) of an absolute http(s) URL; None when it is not a plain one."""
    if not isinstance(url, str) or url != url.strip() or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None or parts.fragment:
        return None
    if parts.query and not allow_query:
        return None
    segments = _path_segments(parts.path)
    if segments is None:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], segments


def _split_fhir_url(url: str) -> tuple[str, str, int, tuple[str, ...]] | None:
    """A FHIR base URL: no credentials, query, fragment or dot segment (normalised, see _path_segments)."""
    return _split_url(url.strip() if isinstance(url, str) else url, allow_query=False)


def url_under_base(url: str, base: str) -> bool:
    """Whether an absolute URL (a search's `next` link, say) lies under the FHIR base URL `base`: same
    scheme, host and port, and the base's path is a whole-segment prefix of the URL's normalised path."""
    target = _split_url(url, allow_query=True)
    root = _split_fhir_url(base.rstrip("/"))
    return target is not None and root is not None and target[:3] == root[:3] and target[3][: len(root[3])] == root[3]


def open_mode_host_allowed(url: str, extra_hosts: Iterable[str]) -> bool:
    """Open development mode: a fhirServer on loopback, or on a host listed in CDS_OPEN_MODE_FHIR_HOSTS."""
    parts = _split_fhir_url(url)
    return parts is not None and (is_loopback_host(parts[1]) or parts[1] in {h.lower() for h in extra_hosts})


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
