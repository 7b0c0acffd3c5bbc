"""Gathering the patient's data: prefetch as given, missing keys fetched from the EHR's FHIR server.

Prefetch semantics (CDS Hooks 2.0 section 4): a key's value is used as given; `null` means "no data" and
is never fetched; an OperationOutcome (or a Bundle holding an error one) means the EHR's own fetch failed,
which makes that data unavailable (reported on a data-quality card); a key that is absent is fetched from
`fhirServer`. Required data that cannot be fetched because the server cannot be used ends the request with
HTTP 412.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .errors import ServiceError
from .facts import DataIssue
from .fhir_client import FhirClient, FhirUnavailable, SearchResult, bundle_resources, next_link
from .hook_request import HookRequest
from .services import PREFETCH_KEYS
from .settings import Settings

log = logging.getLogger(__name__)

DATASET_LABELS = {
    "patient": "patient demographics",
    "medications": "medication orders",
    "administrations": "tarlatamab administration history",
    "observations": "laboratory results and toxicity grades",
    "conditions": "conditions (diagnoses and toxicities)",
}

_EXPECTED_TYPES = {
    "patient": {"Patient"},
    "medications": {"MedicationRequest"},
    "administrations": {"MedicationAdministration"},
    "observations": {"Observation"},
    "conditions": {"Condition"},
}


# Time given to the fetch threads beyond the deadline: their own watchdogs end them at the deadline.
_DEADLINE_GRACE_SECONDS = 0.25
_USER_TYPES = {
    "{{userPractitionerId}}": "Practitioner",
    "{{userPractitionerRoleId}}": "PractitionerRole",
    "{{userPatientId}}": "Patient",
    "{{userRelatedPersonId}}": "RelatedPerson",
}
_REFERENCE = re.compile(r"^[A-Za-z]+/[^/]+$")


@dataclass
class GatheredData:
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    issues: list[DataIssue] = field(default_factory=list)
    unavailable: set[str] = field(default_factory=set)
    origin: dict[str, str] = field(default_factory=dict)  # key -> prefetch | null | fetched


def _encode_id(value: Any) -> str | None:
    """A context value as one URL path/query segment; None when unusable ("." and ".." would walk the path)."""
    if not isinstance(value, str) or not value.strip() or value.strip() in (".", ".."):
        return None
    return quote(value.strip(), safe="")


def resolve_template(template: str, request: HookRequest) -> str | None:
    """Substitute the tokens of a prefetch template (values URL-encoded); None when one cannot be resolved."""
    user = request.user_id.strip()
    user_type, _, user_id = user.partition("/")
    tokens: dict[str, str | None] = {}
    for name, value in request.context.items():
        if isinstance(value, str):  # only primitive context fields are tokens (CDS Hooks 2.0 4.1)
            tokens["{{context." + name + "}}"] = _encode_id(value)
    # context.userId is a whole reference (Type/id): the slash stays, the two parts are encoded.
    tokens["{{context.userId}}"] = (
        f"{quote(user_type, safe='')}/{_encode_id(user_id)}" if _REFERENCE.match(user) and _encode_id(user_id) else None
    )
    for token, wanted_type in _USER_TYPES.items():
        tokens[token] = _encode_id(user_id) if user_type == wanted_type else None
    out = template
    for token in re.findall(r"\{\{[^{}]*\}\}", template):
        value = tokens.get(token)
        if value is None:
            return None
        out = out.replace(token, value)
    return out


Job = Callable[[], SearchResult | dict[str, Any]]


def gather(
    request: HookRequest,
    templates: dict[str, str],
    settings: Settings,
    client: FhirClient | None = None,
) -> GatheredData:
    """Take the prefetch, fetch what is missing (concurrently, within `fhir_total_timeout`)."""
    data = GatheredData()
    deadline = time.monotonic() + settings.fhir_total_timeout
    missing = [key for key in PREFETCH_KEYS if key not in request.prefetch]
    if missing and client is None:
        raise ServiceError.single(
            412,
            "Prefetch lacks " + ", ".join(missing) + " and the request gives no fhirServer to fetch them from",
            code="not-found",
        )
    page_follows: dict[str, str] = {}
    for key in PREFETCH_KEYS:
        if key not in request.prefetch:
            continue
        value = request.prefetch[key]
        if value is None:
            data.resources[key] = []
            data.origin[key] = "null"
            continue
        data.origin[key] = "prefetch"
        following = _take_prefetch(key, value, data, client)
        if following is not None:
            page_follows[key] = following

    jobs: dict[tuple[str, str], Job] = {}
    if client is not None:
        for key in missing:
            jobs[("fetch", key)] = _fetch_job(key, templates, request, client, deadline, settings.fhir_max_pages)
        for key, url in page_follows.items():
            # The first page came by prefetch, so one page of the cap is already used.
            jobs[("follow", key)] = _follow_job(client, url, deadline, max(settings.fhir_max_pages - 1, 0))
    results = _run_jobs(jobs, deadline)

    failures: list[str] = []
    for (kind, key), outcome in results.items():
        label = DATASET_LABELS[key]
        if isinstance(outcome, FhirUnavailable):
            log.warning(
                "FHIR %s of %s for hookInstance %s failed: %s", kind, key, request.hook_instance, outcome.reason
            )
            if kind == "fetch":
                failures.append(f"{label}: {outcome.reason}")
            else:
                data.issues.append(
                    DataIssue(
                        "unavailable",
                        key,
                        f"Further pages of the {label} could not be read ({outcome.reason}); older records were not "
                        "checked.",
                    )
                )
            continue
        if kind == "fetch":
            _take_fetched(key, outcome, data)
            if isinstance(outcome, SearchResult):
                _paging_issues(key, outcome, settings, data)
        else:
            assert isinstance(outcome, SearchResult)
            data.resources[key].extend(_of_type(outcome.resources, key))
            _paging_issues(key, outcome, settings, data)
    if failures:
        raise ServiceError.single(
            412,
            "Required data could not be obtained from the FHIR server (" + "; ".join(sorted(failures)) + ")",
            code="transient",
        )
    return data


def _fetch_job(
    key: str, templates: dict[str, str], request: HookRequest, client: FhirClient, deadline: float, max_pages: int
) -> Job:
    def job() -> SearchResult | dict[str, Any]:
        url = resolve_template(templates[key], request)
        if url is None:
            raise FhirUnavailable(f"the {key} query needs context the request does not give")
        if key == "patient":
            return client.read(url, deadline)
        return client.search(url, deadline, max_pages=max_pages)

    return job


def _follow_job(client: FhirClient, url: str, deadline: float, max_pages: int) -> Job:
    def job() -> SearchResult:
        return client.search(url, deadline, max_pages=max_pages)

    return job


def _run_jobs(jobs: dict[tuple[str, str], Job], deadline: float) -> dict[tuple[str, str], Any]:
    """Run the jobs concurrently; each result is its value or a FhirUnavailable. Never waits past the deadline."""
    results: dict[tuple[str, str], Any] = {}
    if not jobs:
        return results
    pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="fhir-fetch")
    try:
        futures: dict[tuple[str, str], Future[Any]] = {name: pool.submit(job) for name, job in jobs.items()}
        wait(futures.values(), timeout=max(deadline - time.monotonic(), 0.0) + _DEADLINE_GRACE_SECONDS)
        for name, future in futures.items():
            if not future.done():
                future.cancel()
                results[name] = FhirUnavailable("the FHIR server did not answer in time")
                continue
            exc = future.exception()
            if exc is None:
                results[name] = future.result()
            elif isinstance(exc, FhirUnavailable):
                results[name] = exc
            else:  # a bug or an unexpected library error: the data is unavailable, the request is not a 500
                log.error("FHIR %s of %s failed unexpectedly (%s)", name[0], name[1], type(exc).__name__)
                results[name] = FhirUnavailable(f"the FHIR answer could not be processed ({type(exc).__name__})")
    finally:
        # Never block on a thread still reading: its watchdog closes the connection at the deadline.
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def _of_type(resources: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The resources of the type the key is for (anything else, or a resourceType that is not a string, is dropped)."""
    wanted = _EXPECTED_TYPES[key]
    return [r for r in resources if isinstance(r.get("resourceType"), str) and r["resourceType"] in wanted]


def _take_fetched(key: str, outcome: SearchResult | dict[str, Any], data: GatheredData) -> None:
    label = DATASET_LABELS[key]
    data.origin[key] = "fetched"
    if isinstance(outcome, SearchResult):
        data.resources[key] = _of_type(outcome.resources, key)
        return
    rtype = outcome.get("resourceType")
    if isinstance(rtype, str) and rtype in _EXPECTED_TYPES[key]:
        data.resources[key] = [outcome]
    else:
        data.resources[key] = []
        data.unavailable.add(key)
        data.issues.append(DataIssue("unusable", key, f"The FHIR server answered the {label} with a {rtype}."))


def _paging_issues(key: str, result: SearchResult, settings: Settings, data: GatheredData) -> None:
    label = DATASET_LABELS[key]
    if result.truncated:
        pages = settings.fhir_max_pages
        data.issues.append(
            DataIssue(
                "unavailable",
                key,
                f"The {label} run to more than {pages} pages; only the first {pages} pages were read, so older "
                "records were not checked.",
            )
        )
    if result.foreign_next:
        data.issues.append(
            DataIssue(
                "unavailable",
                key,
                f"The FHIR server pointed to further pages of the {label} on another server, which the service "
                "does not contact; older records were not checked.",
            )
        )


def _take_prefetch(key: str, value: Any, data: GatheredData, client: FhirClient | None) -> str | None:
    """Take one prefetched value; returns the URL of further pages to read, if any."""
    label = DATASET_LABELS[key]
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        data.resources[key] = []
        data.unavailable.add(key)
        data.issues.append(
            DataIssue(
                "unusable", key, f"The prefetched {label} are not a FHIR resource or Bundle.", element=f"prefetch.{key}"
            )
        )
        return None
    rtype = value["resourceType"]
    if rtype == "OperationOutcome":
        data.resources[key] = []
        data.unavailable.add(key)
        data.issues.append(
            DataIssue(
                "unavailable", key, f"The EHR reported that it could not retrieve the {label} (OperationOutcome)."
            )
        )
        return None
    if rtype != "Bundle":
        if rtype in _EXPECTED_TYPES[key]:
            data.resources[key] = [value]
        else:
            data.resources[key] = []
            data.unavailable.add(key)
            data.issues.append(
                DataIssue("unusable", key, f"The prefetched {label} hold a {rtype}, not the expected resource.")
            )
        return None
    if "entry" in value and value["entry"] is not None and not isinstance(value["entry"], list):
        data.resources[key] = []
        data.unavailable.add(key)
        data.issues.append(
            DataIssue("unusable", key, f"The prefetched {label} are a Bundle whose entry is not an array.")
        )
        return None
    resources, failed = bundle_resources(value)
    if failed:
        data.resources[key] = []
        data.unavailable.add(key)
        data.issues.append(
            DataIssue(
                "unavailable", key, f"The EHR reported that it could not retrieve the {label} (OperationOutcome)."
            )
        )
        return None
    data.resources[key] = _of_type(resources, key)
    following = next_link(value)
    if following is None:
        return None
    if client is None:
        data.issues.append(
            DataIssue(
                "unavailable",
                key,
                f"The prefetched {label} are paginated and no fhirServer was given to read the rest; "
                "older records were not checked.",
            )
        )
        return None
    if not client.same_origin(following):
        log.warning("prefetched %s: a next link points to another server than fhirServer; not followed", key)
        data.issues.append(
            DataIssue(
                "unavailable",
                key,
                f"The prefetched {label} point to further pages on another server than fhirServer, which the "
                "service does not contact; older records were not checked.",
            )
        )
        return None
    return following
