"""One hook call from parsed body to response, the one place running the stages in order:
request model -> data gathering (prefetch, fhirServer, referenced Medications) -> reading + facts ->
protocol rules -> findings -> cards. Shared by the HTTP endpoint and `cds-service replay`.

A draft order recognisable as tarlatamab is always answered with cards (clinical specification section 12): only
a malformed hook request gets a 400.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from datetime import time as day_start
from typing import Any

import requests
from pydantic import ValidationError

from .cards import CardRenderer, check_templates, load_card_texts
from .client_auth import fhir_server_allowed
from .data_gathering import GatheredData, gather
from .errors import ServiceError
from .facts import Administration, DraftOrder, PatientFacts
from .facts.build import build_facts
from .facts.history import assign_positions
from .fhir_client import FhirClient, FhirUnavailable
from .fhir_validation import configure_cache, warm_up
from .findings import Finding, SuggestionSpec
from .hook_request import HookRequest, parse_hook_request
from .protocol import Protocol, load_protocol
from .reading.dates import site_zone
from .reading.medications import (
    build_catalog,
    concept_identifies,
    is_medication,
    medication_concept,
    unresolved_reference,
)
from .rules import (
    EvaluationContext,
    administration,
    data_quality,
    dose,
    labs,
    monitoring,
    plan,
    populations,
    premedication,
    summary,
    toxicity,
)
from .services import PREFETCH_KEYS, SERVICES_BY_ID, ServiceDef, prefetch_templates
from .settings import Settings
from .suggestions import SuggestionBuilder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CardRecord:
    uuid: str
    rule_id: str
    topic: str
    indicator: str


@dataclass
class HookOutcome:
    """The response body and what the audit log keeps of it (no clinical values, no tokens)."""

    body: dict[str, Any]
    service_id: str
    hook_instance: str
    patient_id: str
    cards: list[CardRecord] = field(default_factory=list)
    evaluation_ms: float = 0.0
    data_origin: dict[str, str] = field(default_factory=dict)


OrderRule = Callable[[PatientFacts, DraftOrder, Protocol, EvaluationContext], list[Finding]]

ORDER_RULES: tuple[OrderRule, ...] = (
    dose.check_dose,
    dose.check_product,
    dose.check_too_early,
    administration.check_administration,
    premedication.check_premedication,
    premedication.check_hydration,
    plan.check_companions_ordered,
    monitoring.check_monitoring,
    toxicity.check_crs,
    toxicity.check_neurotoxicity,
    labs.check_required_labs,
    labs.check_lab_holds,
    populations.check_pregnancy,
    populations.check_lactation,
    populations.check_age,
    populations.check_indication,
    populations.check_organ_function,
    populations.check_infection,
)

# Medications referenced by orders but neither contained nor prefetched: at most this many are fetched.
MAX_MEDICATION_FETCHES = 20


def evaluate_orders(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    """Findings for every (selected) draft tarlatamab order, then the data-quality findings.

    Orders signed together (e.g. C1D1 and C1D8) are judged in planned-date order, each as if the earlier
    drafts of the request were given as ordered (section 13.12); a second draft for the same planned date is
    a duplicate dose (section 12).
    """
    findings: list[Finding] = []
    ordered = sorted(facts.draft_orders, key=lambda o: (o.planned_date, o.resource_id))
    findings.extend(dose.check_duplicates(facts.draft_orders, protocol, ctx))
    for index, order in enumerate(ordered):
        if not order.selected:
            continue
        order_facts = with_earlier_drafts(facts, ordered[:index], order, protocol)
        for rule in ORDER_RULES:
            findings.extend(rule(order_facts, order, protocol, ctx))
    findings.extend(data_quality.check_data_quality(facts, protocol, ctx))
    return findings


def with_earlier_drafts(
    facts: PatientFacts, earlier: list[DraftOrder], order: DraftOrder, protocol: Protocol
) -> PatientFacts:
    planned = [
        Administration(
            resource_id=draft.resource_id,
            status="planned",
            start=datetime.combine(draft.planned_date, day_start(), tzinfo=UTC),
            local_date=draft.planned_date,
            dose=draft.dose,
            planned_in_request=True,
        )
        for draft in earlier
        if draft.planned_date < order.planned_date and "administrations" not in facts.unavailable
    ]
    if not planned:
        return facts
    doses = sorted([*facts.administrations, *planned], key=lambda a: (a.local_date, a.start))
    return replace(facts, administrations=assign_positions(doses, facts.episodes, protocol))


def evaluate_patient_view(facts: PatientFacts, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    """The summary card, and beside it the data-quality cards of records it could not read (13.15)."""
    findings = summary.patient_summary(facts, protocol, ctx)
    if "administrations" in facts.unavailable:
        return findings  # the summary itself says the history could not be read
    return findings + data_quality.check_data_quality(facts, protocol, ctx)


def prefetch_medications(prefetch: dict[str, Any]) -> list[dict[str, Any]]:
    """Medication resources carried by the prefetch (bare, or entries of a Bundle)."""
    out: list[dict[str, Any]] = []
    for value in prefetch.values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Medication":
            out.append(value)
        entries = value.get("entry") if value.get("resourceType") == "Bundle" else None
        for entry in entries if isinstance(entries, list) else ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == "Medication":
                out.append(resource)
    return out


class ValidSuggestions(SuggestionBuilder):
    """Suggestions, without an update of a draft that is not valid FHIR (its update would not be either).

    Such a draft still gets its cards (section 12); only the "update the order" action is left out. A draft
    without an id (named "draft-entry-N" for its cards) gets no update or delete action: the EHR could not
    match it.
    """

    unnamed: frozenset[str] = frozenset()

    def actions(self, spec: SuggestionSpec, label: str) -> list[dict[str, Any]]:
        if spec.order_id in self.unnamed and spec.kind in ("update-dose", "delete-order"):
            return []
        try:
            return super().actions(spec, label)
        except (ValidationError, TypeError):  # TypeError: a coding element of the wrong JSON type
            if spec.kind != "update-dose":
                raise
            log.info("update suggestion left out: draft %s is not valid FHIR", spec.order_id)
            return []


class Engine:
    """Loads the protocol and card wording once (per worker) and answers hook calls."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.protocol: Protocol = load_protocol(settings.protocol_file)
        texts = load_card_texts(settings.cards_dir)
        check_templates(texts, self.protocol)
        self.renderer = CardRenderer(self.protocol, texts)
        self.templates = prefetch_templates(self.protocol)
        self._session = requests.Session()
        configure_cache(settings.validation_cache_size)
        warm_up()

    def service(self, service_id: str) -> ServiceDef:
        service = SERVICES_BY_ID.get(service_id)
        if service is None:
            raise ServiceError.single(404, f"No CDS service with id {service_id}", code="not-found")
        return service

    def handle(
        self,
        service_id: str,
        body: Any,
        *,
        now: datetime | None = None,
        allowed_fhir_servers: Collection[str] | None = None,
        base_url: str | None = None,
    ) -> HookOutcome:
        """Evaluate one hook call. `base_url` is the service's public URL for the cards' protocol-page links
        (CDS_PUBLIC_BASE_URL first, else the caller's: the request host, or http://localhost for a replay)."""
        started = time.perf_counter()
        service = self.service(service_id)
        request = parse_hook_request(body, service, self.settings)
        evaluation_time = now or self.settings.evaluation_time()
        outcome = HookOutcome(
            body={"cards": []},
            service_id=service.id,
            hook_instance=request.hook_instance,
            patient_id=request.patient_id,
        )
        medications = prefetch_medications(request.prefetch)
        if service.evaluates_orders and not self._may_hold_tarlatamab(request, medications):
            outcome.evaluation_ms = (time.perf_counter() - started) * 1000
            return outcome

        client = self._fhir_client(request, allowed_fhir_servers)
        gathered = gather(request, self.templates, self.settings, client)
        medications += self._fetch_medications(request, gathered, medications, client)
        only_identity = service.evaluates_orders and not self._tarlatamab_drafts(request, medications)
        if only_identity and not self._unidentified_drafts(request, medications):
            outcome.evaluation_ms = (time.perf_counter() - started) * 1000
            outcome.data_origin = dict(gathered.origin)
            return outcome
        if service.hook == "patient-view" and not self._ever_treated(gathered, medications):
            outcome.evaluation_ms = (time.perf_counter() - started) * 1000
            outcome.data_origin = dict(gathered.origin)
            return outcome

        zone = site_zone(self.settings.site_timezone)
        facts = build_facts(
            patient_id=request.patient_id,
            hook=service.hook,
            resources=gathered.resources,
            draft_entries=with_draft_ids(request.draft_entries),
            selections=request.selections,
            protocol=self.protocol,
            now=evaluation_time,
            issues=gathered.issues,
            unavailable=frozenset(gathered.unavailable),
            zone=zone,
            medications=medications,
        )
        ctx = EvaluationContext(hook=service.hook, now=evaluation_time, local_today=facts.today)
        if only_identity:
            # No draft is recognisably tarlatamab, but one cannot be identified at all: say so (section 12).
            identity = replace(facts, issues=tuple(i for i in facts.issues if i.affects == "medication identity"))
            findings = data_quality.check_data_quality(identity, self.protocol, ctx)
        elif service.evaluates_orders:
            findings = evaluate_orders(facts, self.protocol, ctx)
        else:
            findings = evaluate_patient_view(facts, self.protocol, ctx)
        builder = ValidSuggestions(
            self.protocol,
            patient_id=request.patient_id,
            hook_instance=request.hook_instance,
            draft_orders={o.resource_id: o for o in facts.draft_orders},
            encounter_id=request.context.get("encounterId"),
            requester=request.user_id,
        )
        builder.unnamed = frozenset(
            f"draft-entry-{i}" for i, r in enumerate(request.draft_entries) if not isinstance(r.get("id"), str)
        )
        rendered = self.renderer.render(
            findings,
            hook=service.hook,
            hook_instance=request.hook_instance,
            suggestion_builder=builder,
            base_url=self.settings.public_base_url or base_url,
        )
        outcome.body = {"cards": [card for _, card in rendered]}
        outcome.cards = [
            CardRecord(card["uuid"], rule_id, card["source"]["topic"]["code"], card["indicator"])
            for rule_id, card in rendered
        ]
        outcome.data_origin = dict(gathered.origin)
        outcome.evaluation_ms = (time.perf_counter() - started) * 1000
        return outcome

    # --- steps --------------------------------------------------------------------------------------
    def _may_hold_tarlatamab(self, request: HookRequest, medications: list[dict[str, Any]]) -> bool:
        """Whether a draft may be tarlatamab: recognised, or naming a Medication still to be fetched."""
        catalog = build_catalog(medications)
        for resource in request.draft_entries:
            if resource.get("resourceType") != "MedicationRequest":
                continue
            if is_medication(resource, self.protocol, "tarlatamab", catalog):
                return True
            if not concept_identifies(medication_concept(resource, catalog)):
                return True  # a reference to fetch, or a medication that cannot be identified at all
        return False

    def _unidentified_drafts(self, request: HookRequest, medications: list[dict[str, Any]]) -> bool:
        catalog = build_catalog(medications)
        return any(
            resource.get("resourceType") == "MedicationRequest"
            and not concept_identifies(medication_concept(resource, catalog))
            for resource in request.draft_entries
        )

    def _tarlatamab_drafts(self, request: HookRequest, medications: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The draft tarlatamab MedicationRequests of the request (selected ones at order-select).

        Never a 400: a draft recognisable as tarlatamab is always evaluated, whatever else is wrong with it.
        """
        catalog = build_catalog(medications)
        drafts = [
            resource
            for resource in with_draft_ids(request.draft_entries)
            if resource.get("resourceType") == "MedicationRequest"
            and is_medication(resource, self.protocol, "tarlatamab", catalog)
        ]
        if request.hook == "order-select" and drafts:
            selected = {s.split("/", 1)[-1] for s in request.selections if s.startswith("MedicationRequest/")}
            drafts = [d for d in drafts if d["id"] in selected]
        return drafts

    def _fetch_medications(
        self,
        request: HookRequest,
        gathered: GatheredData,
        known: list[dict[str, Any]],
        client: FhirClient | None,
    ) -> list[dict[str, Any]]:
        """Medications referenced by the orders and administrations, fetched from fhirServer (section 12)."""
        if client is None:
            return []
        catalog = build_catalog([*known, *(r for v in gathered.resources.values() for r in v)])
        wanted: list[str] = []
        records: Iterable[dict[str, Any]] = (
            *request.draft_entries,
            *gathered.resources.get("medications", ()),
            *gathered.resources.get("administrations", ()),
        )
        for resource in records:
            key = unresolved_reference(resource, catalog) if isinstance(resource, dict) else None
            if key is not None and key not in wanted:
                wanted.append(key)
        fetched: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.settings.fhir_total_timeout
        for key in wanted[:MAX_MEDICATION_FETCHES]:
            try:
                resource = client.read(key, deadline)
            except FhirUnavailable as exc:
                log.info("medication %s could not be fetched: %s", key, exc)
                continue
            if resource.get("resourceType") == "Medication":
                fetched.append(resource)
        return fetched

    def _fhir_client(self, request: HookRequest, allowed: Collection[str] | None) -> FhirClient | None:
        if request.fhir_server is None:
            return None
        if allowed is not None and not fhir_server_allowed(request.fhir_server, allowed):
            if all(key in request.prefetch for key in PREFETCH_KEYS):
                return None  # everything was prefetched: the unlisted server is simply never contacted
            raise ServiceError.single(
                403,
                "fhirServer is not a FHIR server this client is allowed to send the service to, and the "
                "prefetch is incomplete",
                code="forbidden",
                expression="fhirServer",
            )
        return FhirClient(
            request.fhir_server,
            request.access_token,
            connect_timeout=self.settings.fhir_connect_timeout,
            total_timeout=self.settings.fhir_total_timeout,
            max_pages=self.settings.fhir_max_pages,
            session=self._session,
        )

    def _ever_treated(self, gathered: GatheredData, medications: list[dict[str, Any]]) -> bool:
        if "administrations" in gathered.unavailable:
            return True  # unknown: the summary must say the history could not be read
        catalog = build_catalog(medications)
        return any(
            is_medication(r, self.protocol, "tarlatamab", catalog)
            for r in gathered.resources.get("administrations", [])
        )


def with_draft_ids(entries: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The draft orders, each with an id: a draft without one is named by its entry ("draft-entry-2"), so that
    its cards can still be shown (suggestions then refer to that name)."""
    out = []
    for index, resource in enumerate(entries):
        if isinstance(resource, dict) and not isinstance(resource.get("id"), str):
            resource = {**resource, "id": f"draft-entry-{index}"}
        out.append(resource)
    return tuple(out)
