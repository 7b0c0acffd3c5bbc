"""One hook call from parsed body to response: request model -> data gathering -> patient facts ->
protocol rules -> findings -> cards. Shared by the HTTP endpoint and `cds-service replay`."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from .cards import CardRenderer, check_templates, load_card_texts
from .client_auth import fhir_server_allowed
from .codes import is_medication
from .data_gathering import GatheredData, gather
from .errors import ServiceError
from .evaluator import evaluate_orders, evaluate_patient_view
from .fhir_client import FhirClient
from .fhir_validation import configure_cache, validation_issues, warm_up
from .hook_request import HookRequest, parse_hook_request
from .patient_facts import build_facts
from .protocol import Protocol, load_protocol
from .rules import EvaluationContext
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
        if service.evaluates_orders and not self._tarlatamab_drafts(request):
            outcome.evaluation_ms = (time.perf_counter() - started) * 1000
            return outcome

        client = self._fhir_client(request, allowed_fhir_servers)
        gathered = gather(request, self.templates, self.settings, client)
        if service.hook == "patient-view" and not self._ever_treated(gathered):
            outcome.evaluation_ms = (time.perf_counter() - started) * 1000
            outcome.data_origin = dict(gathered.origin)
            return outcome

        facts = build_facts(
            patient_id=request.patient_id,
            hook=service.hook,
            resources=gathered.resources,
            draft_entries=request.draft_entries,
            selections=request.selections,
            protocol=self.protocol,
            now=evaluation_time,
            issues=gathered.issues,
            unavailable=frozenset(gathered.unavailable),
        )
        ctx = EvaluationContext(hook=service.hook, now=evaluation_time)
        if service.evaluates_orders:
            findings = evaluate_orders(facts, self.protocol, ctx)
        else:
            findings = evaluate_patient_view(facts, self.protocol, ctx)
        builder = SuggestionBuilder(
            self.protocol,
            patient_id=request.patient_id,
            hook_instance=request.hook_instance,
            draft_orders={o.resource_id: o for o in facts.draft_orders},
            encounter_id=request.context.get("encounterId"),
            requester=request.user_id,
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
    def _tarlatamab_drafts(self, request: HookRequest) -> list[dict[str, Any]]:
        """The draft tarlatamab MedicationRequests; 400 naming the element when one is not valid FHIR."""
        drafts = []
        for index, resource in enumerate(request.draft_entries):
            if resource.get("resourceType") != "MedicationRequest":
                continue
            if not is_medication(resource, self.protocol, "tarlatamab"):
                continue
            issues = validation_issues(resource, f"context.draftOrders.entry[{index}].resource")
            if issues:
                raise ServiceError(status=400, issues=issues)
            if not isinstance(resource.get("id"), str):
                raise ServiceError.single(
                    400,
                    "A draft tarlatamab MedicationRequest needs an id so that suggestions can refer to it",
                    code="required",
                    expression=f"context.draftOrders.entry[{index}].resource.id",
                )
            drafts.append(resource)
        if request.hook == "order-select" and drafts:
            selected = {s.split("/", 1)[-1] for s in request.selections if s.startswith("MedicationRequest/")}
            drafts = [d for d in drafts if d["id"] in selected]
        return drafts

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

    def _ever_treated(self, gathered: GatheredData) -> bool:
        if "administrations" in gathered.unavailable:
            return True  # unknown: the summary must say the history could not be read
        return any(is_medication(r, self.protocol, "tarlatamab") for r in gathered.resources.get("administrations", []))
