"""Dexamethasone premedication and saline hydration at C1D1, C1D8, R1, R2 (the clinical specification 4, 13.1, 13.17).

A companion order covers the tarlatamab dose when it is a draft of the same request (undated, or planned for
the same local date), or an active order planned for the same local date or, without timing, authored on that
date or up to `premedication.authored_days_before` days before. A leftover order of an earlier dose never
covers a later dose. Dexamethasone must be 8 mg IV; hydration 0.9% sodium chloride 1000 mL IV: another stated
route, strength or volume is a warning naming what differs (no route stated is accepted, 13.17).
The indicator is left to the protocol (warning at order-sign, info at order-select).
When the administration history is unavailable the position is unknown: no card here (the critical
`data-quality.dose-history` card already says the checks could not run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..facts import CompanionOrder, DraftOrder, PatientFacts
from ..findings import Evidence, Finding, SuggestionSpec
from ..protocol import Protocol
from . import EvaluationContext
from .schedule import ExpectedDose, expected_dose


def needs_premedication(expected: ExpectedDose, protocol: Protocol) -> bool:
    positions = {str(p) for p in protocol.section("premedication")["positions"]}
    return bool(expected.position.names & positions)


def matching_companions(
    facts: PatientFacts,
    order: DraftOrder,
    medication: Literal["dexamethasone", "sodium_chloride"],
    protocol: Protocol,
) -> list[CompanionOrder]:
    before = int(protocol.section("premedication")["authored_days_before"])
    return [c for c in facts.companion_orders if c.medication == medication and covers(c, order, before)]


def covers(companion: CompanionOrder, order: DraftOrder, authored_days_before: int) -> bool:
    """Whether a premedication / hydration order covers the tarlatamab dose of `order` (section 13.1)."""
    if companion.planned_date is not None:
        # A dated order (a draft of this request or an active order) covers the dose of its own local date only:
        # C1D1 and C1D8 signed together each need their own premedication.
        return companion.planned_date == order.planned_date
    if companion.in_request:
        return True  # an undated draft goes with the tarlatamab order it is signed with
    if companion.authored_on is None:
        return False
    return 0 <= (order.planned_date - companion.authored_on).days <= authored_days_before


def companion_evidence(companions: list[CompanionOrder], label: str) -> tuple[Evidence, ...]:
    return tuple(
        Evidence(
            label,
            f"{c.dose_display or 'no amount stated'} ({'order in this request' if c.in_request else 'active order'})",
            c.planned_date.isoformat() if c.planned_date else None,
            f"MedicationRequest/{c.resource_id}",
        )
        for c in companions
    )


def _base_evidence(order: DraftOrder, expected: ExpectedDose) -> tuple[Evidence, ...]:
    return (
        Evidence(
            "Tarlatamab order",
            f"{expected.position.display}, planned {order.planned_date.isoformat()}",
            reference=f"MedicationRequest/{order.resource_id}",
        ),
    )


def _is_amount(value: float | None, wanted: float, protocol: Protocol) -> bool:
    """Whether an amount equals the wanted one (up to the floating-point tolerance of `doses.tolerance_mg`)."""
    return value is not None and abs(value - wanted) <= float(protocol.section("doses")["tolerance_mg"])


@dataclass(frozen=True)
class _Companion:
    """What one companion check (dexamethasone premedication, saline hydration) looks for and reports."""

    medication: Literal["dexamethasone", "sodium_chloride"]
    amount_key: str  # `premedication` key of the wanted amount
    amount: Callable[[CompanionOrder], float | None]  # the ordered amount compared with it
    missing_rule: str
    missing_evidence: str
    suggestion: str
    amount_rule: str
    shown_key: str  # finding value holding the ordered amounts
    order_label: str
    route_rule: str
    strength_rule: str | None = None


_DEXAMETHASONE = _Companion(
    medication="dexamethasone",
    amount_key="dexamethasone_mg",
    amount=lambda c: c.dose_mg,
    missing_rule="premedication.dexamethasone-missing",
    missing_evidence="Dexamethasone orders found",
    suggestion="create-dexamethasone-premed",
    amount_rule="premedication.dexamethasone-dose",
    shown_key="ordered_dose",
    order_label="Dexamethasone order",
    route_rule="premedication.dexamethasone-route",
)

_SALINE = _Companion(
    medication="sodium_chloride",
    amount_key="saline_volume_ml",
    amount=lambda c: c.volume_ml,
    missing_rule="hydration.saline-missing",
    missing_evidence="Sodium chloride 0.9% orders found",
    suggestion="create-saline",
    amount_rule="hydration.saline-volume",
    shown_key="ordered_volume",
    order_label="Sodium chloride order",
    route_rule="hydration.saline-route",
    strength_rule="hydration.saline-strength",
)


def _check_companion(spec: _Companion, facts: PatientFacts, order: DraftOrder, protocol: Protocol) -> list[Finding]:
    expected = expected_dose(facts, order.planned_date, protocol)
    if expected is None or not needs_premedication(expected, protocol):
        return []
    wanted = float(protocol.section("premedication")[spec.amount_key])
    found = matching_companions(facts, order, spec.medication, protocol)
    values: dict[str, object] = {"position": expected.position.display, "planned_date": order.planned_date.isoformat()}
    if not found:
        return [
            Finding(
                rule_id=spec.missing_rule,
                order_id=order.resource_id,
                values=values,
                evidence=(*_base_evidence(order, expected), Evidence(spec.missing_evidence, "none")),
                suggestions=(SuggestionSpec(spec.suggestion, order.resource_id),),
            )
        ]
    if any(_is_amount(spec.amount(c), wanted, protocol) and right_kind(c) for c in found):
        return []
    evidence = (*_base_evidence(order, expected), *companion_evidence(found, spec.order_label))
    findings: list[Finding] = []
    wrong_route = [c for c in found if c.route_iv is False]
    if wrong_route:
        route = "; ".join(sorted({route_words(c.route) for c in wrong_route}))
        findings.append(Finding(spec.route_rule, order.resource_id, {**values, "route": route}, evidence))
    wrong_strength = [c for c in found if c.strength_display is not None]
    if spec.strength_rule is not None and wrong_strength:
        strength = "; ".join(sorted({c.strength_display or "" for c in wrong_strength}))
        findings.append(Finding(spec.strength_rule, order.resource_id, {**values, "strength": strength}, evidence))
    if not any(_is_amount(spec.amount(c), wanted, protocol) for c in found):
        shown = "; ".join(c.dose_display or "no amount stated" for c in found)
        findings.append(Finding(spec.amount_rule, order.resource_id, {**values, spec.shown_key: shown}, evidence))
    return findings


def route_words(route: str | None) -> str:
    """A route as it reads after "by the ... route": "Oral route" -> "oral", "PO" -> "PO", none -> "non-IV"."""
    if not route:
        return "non-IV"
    words = route.strip()
    if words.lower().endswith(" route"):
        words = words[: -len(" route")]
    return words if words.isupper() else words.lower()


def right_kind(companion: CompanionOrder) -> bool:
    """IV (or no route stated, 13.17) and, for sodium chloride, 0.9% (or no strength stated)."""
    return companion.route_iv is not False and companion.strength_display is None


def check_premedication(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return _check_companion(_DEXAMETHASONE, facts, order, protocol)


def check_hydration(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    return _check_companion(_SALINE, facts, order, protocol)
