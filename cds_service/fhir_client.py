"""A small FHIR R4 REST client for the data the EHR did not prefetch.

Bounded in time (connect timeout, and a total deadline per request that covers every page), bounded in
pages, sends the EHR's bearer token only to the EHR's own `fhirServer`, and never logs the token.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests

from .client_auth import url_under_base
from .hook_request import HARD_DEPTH_LIMIT, nests_too_deep, prune_deep

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
MAX_RESPONSE_BYTES = 20 * 1024 * 1024
_READ_CHUNK = 16384
# The EHR's cookies are never kept: a shared session would otherwise replay one user's cookies for another.
_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])


class FhirUnavailable(Exception):
    """The FHIR server could not supply the data (unreachable, timeout, HTTP error, not FHIR JSON)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class SearchResult:
    resources: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False  # stopped at the page cap with a next link left
    foreign_next: bool = False  # stopped at a next link to another server (never followed: token leak)
    pages: int = 0


class FhirClient:
    def __init__(
        self,
        base_url: str,
        access_token: str | None,
        *,
        connect_timeout: float,
        total_timeout: float,
        max_pages: int,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._token = access_token
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_pages = max_pages
        self._session = session or requests.Session()
        self._session.cookies.set_policy(_NO_COOKIES)
        self._origin = _origin(self.base_url)

    def __repr__(self) -> str:  # never show the token
        return f"FhirClient({self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def under_base(self, url: str) -> bool:
        """Whether `url` (relative to the base, or absolute) lies under the FHIR server's base URL: same origin
        and, after normalising the path (no `..`, `..;`, encoded dots or slashes), under the base path."""
        return url_under_base(urljoin(self.base_url, url.strip()), self.base_url)

    # Callers written before the base-path check; the same check (the origin alone is not enough).
    same_origin = under_base

    def get_json(self, url: str, deadline: float) -> dict[str, Any]:
        """GET one URL (relative to the base, or an absolute URL under it) as a JSON object."""
        absolute = urljoin(self.base_url, url.strip())
        if not url_under_base(absolute, self.base_url):
            # A next link (or a template) pointing elsewhere, even on the same host, would carry the EHR's
            # token to something that is not its FHIR server.
            raise FhirUnavailable("the FHIR server returned a link to another server or outside its base; not followed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FhirUnavailable("the FHIR server did not answer in time")
        watchdog: _Watchdog | None = None
        try:
            response = self._session.get(
                absolute,
                headers=self._headers(),
                timeout=(min(self.connect_timeout, remaining), remaining),
                allow_redirects=False,
                stream=True,
            )
            try:
                # The read timeout bounds each socket read, not the whole body: a server that trickles bytes
                # would outlast the deadline. The watchdog cuts the connection when the deadline passes.
                watchdog = _Watchdog(response, deadline)
                body = _read_limited(response, deadline)
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                response.close()
        except FhirUnavailable:
            raise
        except requests.Timeout as exc:
            raise FhirUnavailable("the FHIR server did not answer in time") from exc
        except (requests.RequestException, OSError, ValueError) as exc:
            if watchdog is not None and watchdog.fired:
                raise FhirUnavailable("the FHIR server did not answer in time") from exc
            raise FhirUnavailable(f"the FHIR server could not be reached ({type(exc).__name__})") from exc
        if watchdog is not None and watchdog.fired:
            raise FhirUnavailable("the FHIR server did not answer in time")
        if response.status_code != 200:
            raise FhirUnavailable(f"the FHIR server answered HTTP {response.status_code}", status=response.status_code)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise FhirUnavailable("the FHIR server answered with a body that is not JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FhirUnavailable("the FHIR server answered with JSON that is not a FHIR resource")
        if nests_too_deep(data):
            # Read like a malformed element (a data-quality card), never walked beyond the limit.
            log.warning("FHIR answer nests deeper than %d levels; the deeper parts were not read", HARD_DEPTH_LIMIT)
            prune_deep(data, HARD_DEPTH_LIMIT)
        if data["resourceType"] == "OperationOutcome":
            raise FhirUnavailable("the FHIR server answered with an OperationOutcome")
        return data

    def read(self, path: str, deadline: float) -> dict[str, Any]:
        return self.get_json(path, deadline)

    def search(self, path: str, deadline: float, max_pages: int | None = None) -> SearchResult:
        """Run a search and follow `next` links up to the page cap (`max_pages`, default the client's)."""
        cap = self.max_pages if max_pages is None else max_pages
        result = SearchResult()
        url: str | None = path
        while url is not None:
            if result.pages >= cap:
                result.truncated = True
                break
            if result.pages > 0 and not self.under_base(url):
                log.warning("FHIR search: a next link points outside the FHIR base URL; not followed")
                result.foreign_next = True
                break
            bundle = self.get_json(url, deadline)
            result.pages += 1
            if bundle.get("resourceType") != "Bundle":
                raise FhirUnavailable("the FHIR server answered a search with something other than a Bundle")
            resources, failed = bundle_resources(bundle)
            if failed:
                raise FhirUnavailable("the FHIR server's search Bundle holds an error OperationOutcome")
            result.resources.extend(resources)
            url = next_link(bundle)
        return result


class _Watchdog:
    """Shuts the response's socket down when the deadline passes, which ends a blocked read at once."""

    def __init__(self, response: requests.Response, deadline: float) -> None:
        self.fired = False
        self._response = response
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        connection = getattr(self._response.raw, "_connection", None)
        sock = getattr(connection, "sock", None)
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _read_limited(response: requests.Response, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise FhirUnavailable("the FHIR server's answer is larger than the service accepts")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=_READ_CHUNK):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise FhirUnavailable("the FHIR server's answer is larger than the service accepts")
        if time.monotonic() > deadline:
            raise FhirUnavailable("the FHIR server did not answer in time")
        chunks.append(chunk)
    return b"".join(chunks)


def next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            url = link["url"].strip()
            return url or None
    return None


def bundle_resources(bundle: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """(resources of the Bundle's entries, whether an entry is an error OperationOutcome)."""
    resources: list[dict[str, Any]] = []
    failed = False
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return resources, False
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "OperationOutcome":
            if _is_error_outcome(resource):
                failed = True
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        resources.append(resource)
    return resources, failed


def _is_error_outcome(outcome: dict[str, Any]) -> bool:
    issues = outcome.get("issue")
    if not isinstance(issues, list) or not issues:
        return True
    return any(isinstance(i, dict) and i.get("severity") in ("error", "fatal") for i in issues)
