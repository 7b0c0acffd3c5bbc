"""PLACEHOLDER (issue 3): order facts from MedicationRequest / MedicationAdministration resources."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .codes import is_medication
from .facts import Administration, CompanionOrder, DataIssue, Dose, DraftOrder, ToxicityEpisode
from .protocol import Protocol


@dataclass(frozen=True)
class OrderFacts:
    administrations: tuple[Administration, ...] = ()
    draft_orders: tuple[DraftOrder, ...] = ()
    companion_orders: tuple[CompanionOrder, ...] = ()
    platinum_history: tuple[str, ...] = ()
    issues: tuple[DataIssue, ...] = ()


def build_order_facts(
    resources: dict[str, list[dict[str, Any]]],
    *,
    draft_entries: tuple[dict[str, Any], ...],
    selections: tuple[str, ...],
    hook: str,
    protocol: Protocol,
    now: datetime,
    episodes: tuple[ToxicityEpisode, ...],
) -> OrderFacts:
    drafts = tuple(
        DraftOrder(
            resource_id=str(r.get("id")),
            status=str(r.get("status")),
            planned_date=now.date(),
            planned_source="evaluation time",
            dose=Dose(mg=None, problem="not read yet"),
            resource=r,
        )
        for r in draft_entries
        if r.get("resourceType") == "MedicationRequest" and is_medication(r, protocol, "tarlatamab")
    )
    return OrderFacts(draft_orders=drafts)
