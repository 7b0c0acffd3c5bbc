"""The card set of one request: which findings become which cards (the step between rules and rendering).

For each draft tarlatamab order (service contract, "the card set of one draft order"):

- **held** (any finding whose rule has `role: hold`): ONE critical card. Its reasons are every hold finding,
  a permanent discontinuation first; its topic is the leading reason's. Findings whose topic is in the
  protocol's `card_set.held_drops_topics` (dose, schedule, premedication, hydration, administration,
  monitoring) are advice for a dose that must not be given and are left out; the order's other problems are
  listed in the card ("also noted"). The only suggestion deletes the draft.
- **not held**: one card per `problem` finding, and ONE plan card (topic monitoring) gathering the `plan`
  findings (monitoring, infusion, premedication/hydration already ordered, contraception advice), `info`, or
  `warning` when a plan finding is (escalated monitoring). At order-select the plan card is left out unless it
  is more than info (`card_set.plan_card_at_order_select`).

Findings that belong to no order (data quality, the patient-view summary) are each their own card.

A rule's role is the `role` field of its catalogue entry. A rule without one (e.g. added without
classifying it) is classified by its finding: a finding that suggests deleting the order is a hold, anything
else a problem, so an unclassified rule is never hidden in the plan card.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .findings import Finding
from .protocol import Protocol

CardKind = Literal["single", "held", "plan"]
PLAN_TOPIC = "monitoring"


@dataclass(frozen=True)
class CardPlan:
    """One card to render: `findings[0]` leads (its rule gives the topic, source and audit rule id)."""

    kind: CardKind
    findings: tuple[Finding, ...]
    also: tuple[Finding, ...] = ()  # held: the order's other problems, listed in the card
    order_id: str | None = None

    @property
    def lead(self) -> Finding:
        return self.findings[0]


def role_of(finding: Finding, protocol: Protocol) -> str:
    rule = protocol.rule(finding.rule_id)
    if rule.role is not None:
        return rule.role
    if any(s.kind == "delete-order" for s in finding.suggestions):
        return "hold"
    return "problem"


def assemble(findings: Iterable[Finding], protocol: Protocol, hook: str) -> list[CardPlan]:
    """The cards of a request, in the order the findings' orders first appear (patient-level ones last)."""
    by_order: dict[str | None, list[Finding]] = {}
    for finding in findings:
        by_order.setdefault(finding.order_id, []).append(finding)
    plans: list[CardPlan] = []
    for order_id, order_findings in by_order.items():
        if order_id is None:
            plans.extend(CardPlan("single", (f,)) for f in order_findings)
        else:
            plans.extend(order_cards(order_id, order_findings, protocol, hook))
    return plans


def order_cards(order_id: str, findings: list[Finding], protocol: Protocol, hook: str) -> list[CardPlan]:
    """The cards of one draft order (see the module docstring)."""
    rank = protocol.rule_rank
    settings = protocol.data.get("card_set", {})
    by_role: dict[str, list[Finding]] = {}
    for f in findings:
        by_role.setdefault(role_of(f, protocol), []).append(f)
    holds = by_role.get("hold", [])
    problems = by_role.get("problem", [])
    if holds:
        holds.sort(key=lambda f: (not protocol.rule(f.rule_id).permanent, rank.get(f.rule_id, len(rank))))
        dropped = {str(t) for t in settings.get("held_drops_topics", ())}
        also = tuple(f for f in problems if protocol.rule(f.rule_id).topic not in dropped)
        return [CardPlan("held", tuple(_unique(holds)), also, order_id)]
    cards = [CardPlan("single", (f,), order_id=order_id) for f in problems]
    plan = sorted(
        by_role.get("plan", ()),
        key=lambda f: (protocol.rule(f.rule_id).topic != PLAN_TOPIC, rank.get(f.rule_id, len(rank))),
    )
    if plan:
        escalated = any(plan_indicator(f, protocol, hook) != "info" for f in plan)
        if hook != "order-select" or escalated or settings.get("plan_card_at_order_select", False):
            cards.append(CardPlan("plan", tuple(plan), order_id=order_id))
    return cards


def plan_indicator(finding: Finding, protocol: Protocol, hook: str) -> str:
    return finding.indicator or protocol.rule(finding.rule_id).indicator_for(hook)


def _unique(findings: list[Finding]) -> list[Finding]:
    """The same rule firing twice for one order (e.g. two episodes) is listed once per distinct value set."""
    seen: set[tuple[str, str]] = set()
    out = []
    for f in findings:
        key = (f.rule_id, repr(sorted(f.values.items(), key=lambda kv: kv[0])))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
