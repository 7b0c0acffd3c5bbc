"""Dexamethasone premedication and saline hydration at C1D1, C1D8, R1, R2 (spec/protocol.md section 4).

A companion order counts for the tarlatamab dose when it is a draft of the same request, or an active
order whose own planned date lies within `premedication.match_window_days` of the tarlatamab planned date.
The indicator is left to the protocol (warning at order-sign, info at order-select).
When the administration history is unavailable the position is unknown: no card here (the critical
`data-quality.dose-history` card already says the checks could not run).
"""

from __future__ import annotations

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
    window = int(protocol.section("premedication")["match_window_days"])
    return [
        c
        for c in facts.companion_orders
        if c.medication == medication
        and (c.in_request or (c.planned_date is not None and abs((c.planned_date - order.planned_date).days) <= window))
    ]


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


def check_premedication(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    expected = expected_dose(facts, order.planned_date, protocol)
    if expected is None or not needs_premedication(expected, protocol):
        return []
    wanted = float(protocol.section("premedication")["dexamethasone_mg"])
    found = matching_companions(facts, order, "dexamethasone", protocol)
    values: dict[str, object] = {"position": expected.position.display, "planned_date": order.planned_date.isoformat()}
    if not found:
        return [
            Finding(
                rule_id="premedication.dexamethasone-missing",
                order_id=order.resource_id,
                values=values,
                evidence=(*_base_evidence(order, expected), Evidence("Dexamethasone orders found", "none")),
                suggestions=(SuggestionSpec("create-dexamethasone-premed", order.resource_id),),
            )
        ]
    if any(_is_amount(c.dose_mg, wanted, protocol) for c in found):
        return []
    shown = "; ".join(c.dose_display or "no amount stated" for c in found)
    return [
        Finding(
            rule_id="premedication.dexamethasone-dose",
            order_id=order.resource_id,
            values={**values, "ordered_dose": shown},
            evidence=(*_base_evidence(order, expected), *companion_evidence(found, "Dexamethasone order")),
        )
    ]


def check_hydration(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    expected = expected_dose(facts, order.planned_date, protocol)
    if expected is None or not needs_premedication(expected, protocol):
        return []
    wanted = float(protocol.section("premedication")["saline_volume_ml"])
    found = matching_companions(facts, order, "sodium_chloride", protocol)
    values: dict[str, object] = {"position": expected.position.display, "planned_date": order.planned_date.isoformat()}
    if not found:
        return [
            Finding(
                rule_id="hydration.saline-missing",
                order_id=order.resource_id,
                values=values,
                evidence=(*_base_evidence(order, expected), Evidence("Sodium chloride 0.9% orders found", "none")),
                suggestions=(SuggestionSpec("create-saline", order.resource_id),),
            )
        ]
    if any(_is_amount(c.volume_ml, wanted, protocol) for c in found):
        return []
    shown = "; ".join(c.dose_display or "no amount stated" for c in found)
    return [
        Finding(
            rule_id="hydration.saline-volume",
            order_id=order.resource_id,
            values={**values, "ordered_volume": shown},
            evidence=(*_base_evidence(order, expected), *companion_evidence(found, "Sodium chloride order")),
        )
    ]
