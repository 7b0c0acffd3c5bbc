"""Infusion over 1 hour at 250 mL/h by pump, no CSTD (clinical specification section 3).

One card per order: `administration.infusion` (info), or `administration.rate-conflict` (warning) when the
order states a rate or duration that contradicts the label, or one written in a unit that cannot be checked.
"""

from __future__ import annotations

from ..facts import DraftOrder, PatientFacts
from ..findings import Evidence, Finding
from ..protocol import Protocol
from . import EvaluationContext
from .schedule import expected_dose, position_display


def _differs(stated: float, labelled: float, relative_tolerance: float) -> bool:
    return abs(stated - labelled) > relative_tolerance * labelled


def _number(value: float) -> str:
    return f"{value:g}"


def infusion_conflicts(order: DraftOrder, protocol: Protocol) -> list[str]:
    """What the order states that contradicts (or cannot be checked against) 1 hour at 250 mL/h."""
    admin = protocol.section("administration")
    tolerance = float(admin["relative_tolerance"])
    conflicts: list[str] = []
    if order.rate_ml_per_h is not None:
        if _differs(order.rate_ml_per_h, float(admin["infusion_rate_ml_per_h"]), tolerance):
            conflicts.append(f"a rate of {_number(order.rate_ml_per_h)} mL/h")
    elif order.rate_display is not None:
        conflicts.append(f"a rate of {order.rate_display} (unit not checkable)")
    if order.duration_minutes is not None:
        if _differs(order.duration_minutes, float(admin["infusion_minutes"]), tolerance):
            conflicts.append(f"a duration of {_number(order.duration_minutes)} min")
    elif order.duration_display is not None:
        conflicts.append(f"a duration of {order.duration_display} (unit not checkable)")
    return conflicts


def stated_evidence(order: DraftOrder) -> tuple[Evidence, ...]:
    ref = f"MedicationRequest/{order.resource_id}"
    out = []
    if order.rate_ml_per_h is not None or order.rate_display is not None:
        rate = f"{_number(order.rate_ml_per_h)} mL/h" if order.rate_ml_per_h is not None else order.rate_display
        out.append(Evidence("Infusion rate on the order", str(rate), reference=ref))
    if order.duration_minutes is not None or order.duration_display is not None:
        duration = (
            f"{_number(order.duration_minutes)} min" if order.duration_minutes is not None else order.duration_display
        )
        out.append(Evidence("Infusion duration on the order", str(duration), reference=ref))
    if not out:
        out.append(Evidence("Infusion rate and duration on the order", "not stated", reference=ref))
    if len(out) > 1:
        # Cards show one evidence line per referenced resource: a second line naming the same order would be
        # dropped, hiding the stated duration. One line carries both.
        out = [Evidence("Infusion rate and duration on the order", "; ".join(e.value for e in out), reference=ref)]
    return tuple(out)


def check_administration(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    position = position_display(expected_dose(facts, order.planned_date, protocol))
    conflicts = infusion_conflicts(order, protocol)
    values: dict[str, object] = {"position": position, "planned_date": order.planned_date.isoformat()}
    if conflicts:
        return [
            Finding(
                rule_id="administration.rate-conflict",
                order_id=order.resource_id,
                values={**values, "stated": " and ".join(conflicts)},
                evidence=stated_evidence(order),
            )
        ]
    return [
        Finding(
            rule_id="administration.infusion",
            order_id=order.resource_id,
            values=values,
            evidence=stated_evidence(order),
        )
    ]
