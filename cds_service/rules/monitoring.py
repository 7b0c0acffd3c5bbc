"""Monitoring after the dose (clinical specification section 5): one card per tarlatamab order.

Escalation applies to the next dose given after the event only (section 13.2): the event must follow the
last dose (instants when both carry one, local dates otherwise); a dose drafted earlier in the same request
counts as that next dose.

`monitoring.schedule` (info) with variant "extended" (22-24 h from infusion start) for the positions of
`monitoring.extended.positions`, else "observation" with the hours of the first matching
`monitoring.observation` row. `monitoring.escalated` (warning) instead when a Grade >= 2 CRS, ICANS or other
neurologic toxicity began after the last dose and the plain schedule needs less than extended monitoring.
When the position is unknown (history unavailable) the card advises extended monitoring, the cautious choice.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from ..facts import DraftOrder, PatientFacts, SchedulePosition, ToxicityEpisode
from ..findings import Evidence, Finding
from ..protocol import Protocol
from . import EvaluationContext
from .schedule import ExpectedDose, expected_dose, onset_between

TOXICITY_NAMES = {
    "crs": "cytokine release syndrome",
    "icans": "ICANS",
    "neurotox": "neurologic toxicity",
}


def needs_extended(position: SchedulePosition, protocol: Protocol) -> bool:
    positions = {str(p) for p in protocol.section("monitoring")["extended"]["positions"]}
    return bool(position.names & positions)


def observation_hours(position: SchedulePosition, protocol: Protocol) -> str | None:
    """Hours of observation after the infusion from the first matching `monitoring.observation` row."""
    for row in protocol.section("monitoring")["observation"]:
        if position.names & {str(p) for p in row.get("positions", [])}:
            return str(row["hours"])
        if position.cycle is None:
            continue
        if position.cycle in {int(c) for c in row.get("cycles", [])}:
            return str(row["hours"])
        if "from_cycle" in row and position.cycle >= int(row["from_cycle"]):
            return str(row["hours"])
    return None


def escalating_episode(
    facts: PatientFacts, expected: ExpectedDose, planned: date, protocol: Protocol
) -> ToxicityEpisode | None:
    """The worst Grade >= escalation_min_grade CRS/ICANS/neurotox episode that began after the last dose."""
    last = expected.last
    if last is None:
        return None
    min_grade = int(protocol.section("monitoring")["escalation_min_grade"])
    candidates = [
        e
        for e in facts.episodes
        if e.kind in TOXICITY_NAMES and e.grade >= min_grade and onset_between(e, last, planned)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda e: (e.grade, e.onset))


def episode_evidence(episode: ToxicityEpisode) -> Evidence:
    state = "active" if episode.active else "resolved"
    return Evidence(
        f"{TOXICITY_NAMES[episode.kind].capitalize()} after the last dose",
        f"Grade {episode.grade}, {state}",
        episode.onset.date().isoformat(),
        ", ".join(episode.references) or None,
    )


def _order_evidence(order: DraftOrder, expected: ExpectedDose | None) -> list[Evidence]:
    position = expected.position.display if expected else "position unknown"
    out = [
        Evidence(
            "Tarlatamab order",
            f"{order.dose.display}, {position}, planned {order.planned_date.isoformat()}",
            reference=f"MedicationRequest/{order.resource_id}",
        )
    ]
    if expected is not None and expected.last is not None:
        last = expected.last
        out.append(
            Evidence(
                "Last tarlatamab dose",
                last.position.display if last.position else "position unknown",
                last.local_date.isoformat(),
                last.reference,
            )
        )
    return out


def check_monitoring(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    expected = expected_dose(facts, order.planned_date, protocol)
    values: dict[str, Any] = {
        "position": expected.position.display if expected else "Position unknown",
        "planned_date": order.planned_date.isoformat(),
        "ordered": order.dose.display,
    }
    evidence = _order_evidence(order, expected)
    hours = None if expected is None else observation_hours(expected.position, protocol)
    extended = expected is None or needs_extended(expected.position, protocol) or hours is None
    episode = None if expected is None else escalating_episode(facts, expected, order.planned_date, protocol)
    if episode is not None:
        evidence.append(episode_evidence(episode))
        if not extended:
            return [
                Finding(
                    rule_id="monitoring.escalated",
                    order_id=order.resource_id,
                    values={
                        **values,
                        "grade": episode.grade,
                        "toxicity": TOXICITY_NAMES[episode.kind],
                        "toxicity_date": episode.onset.date().isoformat(),
                        "plain_monitoring": f"observation for {hours} hours after the infusion",
                    },
                    evidence=tuple(evidence),
                )
            ]
    variant = "extended" if extended else "observation"
    if variant == "observation":
        values["hours"] = hours
    return [
        Finding(
            rule_id="monitoring.schedule",
            order_id=order.resource_id,
            values={**values, "variant": variant},
            evidence=tuple(evidence),
        )
    ]
