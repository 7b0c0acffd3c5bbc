"""Gathering the patient's data: prefetch as given, missing keys fetched from the EHR's FHIR server.

Prefetch semantics (CDS Hooks 2.0 section 4): a key's value is used as given; `null` means "no data" and
is never fetched; an OperationOutcome (or a Bundle holding an error one) means the EHR's own fetch failed,
which makes that data unavailable (reported on a data-quality card); a key that is absent is fetched from
`fhirServer`. Required data that cannot be fetched because the server cannot be used ends the request with
HTTP 412.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .errors import ServiceError
from .facts import DataIssue
from .fhir_client import FhirClient, FhirUnavailable, bundle_resources, next_link
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


@dataclass
class GatheredData:
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    issues: list[DataIssue] = field(default_factory=list)
    unavailable: set[str] = field(default_factory=set)
    origin: dict[str, str] = field(default_factory=dict)  # key -> prefetch | null | fetched


def resolve_template(template: str, request: HookRequest) -> str | None:
    """Substitute the context tokens of a prefetch template; None when a token cannot be resolved."""
    out = template
    user_type, _, user_id = request.user_id.partition("/")
    tokens = {
        "{{context.patientId}}": request.patient_id,
        "{{context.userId}}": request.user_id,
        "{{context.encounterId}}": request.context.get("encounterId"),
        "{{userPractitionerId}}": user_id if user_type == "Practitioner" else None,
        "{{userPractitionerRoleId}}": user_id if user_type == "PractitionerRole" else None,
        "{{userPatientId}}": user_id if user_type == "Patient" else None,
        "{{userRelatedPersonId}}": user_id if user_type == "RelatedPerson" else None,
    }
    for token, value in tokens.items():
        if token in out:
            if not isinstance(value, str) or not value:
                return None
            out = out.replace(token, quote(value, safe=""))
    return out


def gather(
    request: HookRequest,
    templates: dict[str, str],
    settings: Settings,
    client: FhirClient | None = None,
) -> GatheredData:
    data = GatheredData()
    missing: list[str] = []
    deadline = time.monotonic() + settings.fhir_total_timeout
    for key in PREFETCH_KEYS:
        if key not in request.prefetch:
            missing.append(key)
            continue
        value = request.prefetch[key]
        if value is None:
            data.resources[key] = []
            data.origin[key] = "null"
            continue
        data.origin[key] = "prefetch"
        _take_prefetch(key, value, data, request, client, deadline)

    if missing:
        if client is None:
            raise ServiceError.single(
                412,
                "Prefetch lacks " + ", ".join(missing) + " and the request gives no fhirServer to fetch them from",
                code="not-found",
            )
        _fetch_missing(missing, templates, request, client, deadline, data)
    return data


def _take_prefetch(
    key: str,
    value: Any,
    data: GatheredData,
    request: HookRequest,
    client: FhirClient | None,
    deadline: float,
) -> None:
    label = DATASET_LABELS[key]
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        data.resources[key] = []
        data.unavailable.add(key)
        data.issues.append(
            DataIssue(
                "unusable", key, f"The prefetched {label} are not a FHIR resource or Bundle.", element=f"prefetch.{key}"
            )
        )
        return
    rtype = value["resourceType"]
    if rtype == "OperationOutcome":
        data.resources[key] = []
        data.unavailable.add(key)
        data.issues.append(
            DataIssue(
                "unavailable", key, f"The EHR reported that it could not retrieve the {label} (OperationOutcome)."
            )
        )
        return
    if rtype != "Bundle":
        data.resources[key] = [value] if rtype in _EXPECTED_TYPES[key] else []
        if rtype not in _EXPECTED_TYPES[key]:
            data.issues.append(
                DataIssue("unusable", key, f"The prefetched {label} hold a {rtype}, not the expected resource.")
            )
        return
    resources, failed = bundle_resources(value)
    if failed:
        data.resources[key] = []
        data.unavailable.add(key)
        data.issues.append(
            DataIssue(
                "unavailable", key, f"The EHR reported that it could not retrieve the {label} (OperationOutcome)."
            )
        )
        return
    following = next_link(value)
    if following is not None:
        if client is None:
            data.issues.append(
                DataIssue(
                    "unavailable",
                    key,
                    f"The prefetched {label} are paginated and no fhirServer was given to read the rest; "
                    "older records were not checked.",
                )
            )
        else:
            try:
                rest = _follow_pages(client, following, deadline)
                resources.extend(rest.resources)
                if rest.truncated:
                    data.issues.append(_truncated_issue(key, client))
            except FhirUnavailable as exc:
                data.issues.append(
                    DataIssue("unavailable", key, f"Further pages of the {label} could not be read: {exc.reason}.")
                )
    data.resources[key] = resources


def _follow_pages(client: FhirClient, url: str, deadline: float) -> Any:
    # The first page came by prefetch, so one page of the cap is already used.
    saved = client.max_pages
    client.max_pages = max(saved - 1, 0)
    try:
        return client.search(url, deadline)
    finally:
        client.max_pages = saved


def _truncated_issue(key: str, client: FhirClient) -> DataIssue:
    return DataIssue(
        "unavailable",
        key,
        f"The {DATASET_LABELS[key]} run to more than {client.max_pages} pages; only the first "
        f"{client.max_pages} pages were read, so older records were not checked.",
    )


def _fetch_missing(
    keys: list[str],
    templates: dict[str, str],
    request: HookRequest,
    client: FhirClient,
    deadline: float,
    data: GatheredData,
) -> None:
    def fetch(key: str) -> tuple[str, list[dict[str, Any]], bool]:
        url = resolve_template(templates[key], request)
        if url is None:
            raise FhirUnavailable(f"the {key} query needs context the request does not give")
        if key == "patient":
            resource = client.read(url, deadline)
            return key, [resource], False
        result = client.search(url, deadline)
        return key, result.resources, result.truncated

    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=len(keys), thread_name_prefix="fhir-fetch") as pool:
        futures = [pool.submit(fetch, key) for key in keys]
        for key, future in zip(keys, futures, strict=True):
            try:
                _, resources, truncated = future.result()
            except FhirUnavailable as exc:
                log.warning("FHIR fetch of %s for hookInstance %s failed: %s", key, request.hook_instance, exc.reason)
                failures.append(f"{DATASET_LABELS[key]}: {exc.reason}")
                continue
            data.resources[key] = [r for r in resources if r.get("resourceType") in _EXPECTED_TYPES[key]]
            data.origin[key] = "fetched"
            if truncated:
                data.issues.append(_truncated_issue(key, client))
    if failures:
        raise ServiceError.single(
            412,
            "Required data could not be obtained from the FHIR server (" + "; ".join(failures) + ")",
            code="transient",
        )
