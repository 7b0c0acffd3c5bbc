"""A small FHIR R4 REST client for the data the EHR did not prefetch.

Bounded in time (connect timeout, and a total deadline per request that covers every page), bounded in
pages, sends the EHR's bearer token only to the EHR's own `fhirServer`, and never logs the token.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
MAX_RESPONSE_BYTES = 20 * 1024 * 1024


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
        self._origin = _origin(self.base_url)

    def __repr__(self) -> str:  # never show the token
        return f"FhirClient({self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def get_json(self, url: str, deadline: float) -> dict[str, Any]:
        """GET one URL (relative to the base, or an absolute URL on the same origin) as a JSON object."""
        absolute = urljoin(self.base_url, url)
        if _origin(absolute) != self._origin:
            # A next link (or a template) pointing elsewhere would carry the token off the EHR's server.
            raise FhirUnavailable("the FHIR server returned a link to another server; not followed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FhirUnavailable("the FHIR server did not answer in time")
        try:
            response = self._session.get(
                absolute,
                headers=self._headers(),
                timeout=(min(self.connect_timeout, remaining), remaining),
                allow_redirects=False,
                stream=True,
            )
            try:
                body = _read_limited(response, deadline)
            finally:
                response.close()
        except requests.Timeout as exc:
            raise FhirUnavailable("the FHIR server did not answer in time") from exc
        except requests.RequestException as exc:
            raise FhirUnavailable(f"the FHIR server could not be reached ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise FhirUnavailable(f"the FHIR server answered HTTP {response.status_code}", status=response.status_code)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise FhirUnavailable("the FHIR server answered with a body that is not JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FhirUnavailable("the FHIR server answered with JSON that is not a FHIR resource")
        if data["resourceType"] == "OperationOutcome":
            raise FhirUnavailable("the FHIR server answered with an OperationOutcome")
        return data

    def read(self, path: str, deadline: float) -> dict[str, Any]:
        return self.get_json(path, deadline)

    def search(self, path: str, deadline: float) -> SearchResult:
        """Run a search and follow `next` links up to the page cap."""
        result = SearchResult()
        url: str | None = path
        while url is not None:
            if result.pages >= self.max_pages:
                result.truncated = True
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


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _read_limited(response: requests.Response, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise FhirUnavailable("the FHIR server's answer is larger than the service accepts")
        if time.monotonic() > deadline:
            raise FhirUnavailable("the FHIR server did not answer in time")
        chunks.append(chunk)
    return b"".join(chunks)


def next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def bundle_resources(bundle: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """(resources of the Bundle's entries, whether an entry is an error OperationOutcome)."""
    resources: list[dict[str, Any]] = []
    failed = False
    for entry in bundle.get("entry") or ():
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


def is_error_outcome(resource: Any) -> bool:
    return isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome"
