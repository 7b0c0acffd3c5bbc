"""Premedication and hydration that are already ordered, as lines of the dose's plan card (section 4).

`premedication.ordered` / `hydration.ordered` (role `plan`) report a companion order with the wanted amount
for a dose that needs one, so that the plan card can say what is ordered. The problems (missing, wrong
amount) stay with `rules/premedication.py`.
"""

from __future__ import annotations

from ..facts import DraftOrder, PatientFacts
from ..findings import Finding
from ..protocol import Protocol
from . import EvaluationContext
from .premedication import companion_evidence, matching_companions, needs_premedication
from .schedule import expected_dose

_COMPANIONS = (
    ("premedication.ordered", "dexamethasone", "dexamethasone_mg", "Dexamethasone order"),
    ("hydration.ordered", "sodium_chloride", "saline_volume_ml", "Sodium chloride order"),
)


def check_companions_ordered(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    expected = expected_dose(facts, order.planned_date, protocol)
    if expected is None or not needs_premedication(expected, protocol):
        return []
    premed = protocol.section("premedication")
    tolerance = float(protocol.section("doses")["tolerance_mg"])
    findings = []
    for rule_id, medication, amount_key, label in _COMPANIONS:
        wanted = float(premed[amount_key])
        found = [
            c
            for c in matching_companions(facts, order, medication, protocol)  # type: ignore[arg-type]
            if (amount := c.dose_mg if medication == "dexamethasone" else c.volume_ml) is not None
            and abs(amount - wanted) <= tolerance
        ]
        if found:
            findings.append(
                Finding(
                    rule_id,
                    order.resource_id,
                    {"position": expected.position.display, "planned_date": order.planned_date.isoformat()},
                    companion_evidence(found[:1], label),
                )
            )
    return findings
