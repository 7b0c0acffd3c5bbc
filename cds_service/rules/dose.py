"""Ordered dose vs expected dose, and doses planned too early (clinical specification section 2.2, 6.2 R1 row)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..facts import Administration, DraftOrder, PatientFacts
from ..findings import Evidence, Finding, SuggestionSpec
from ..protocol import Protocol
from . import EvaluationContext
from .schedule import ExpectedDose, describe_last, earliest_date, expected_dose, is_dose

_STEP_UP_RULE = {
    "first-dose": "dose.step-up-skipped",
    "restart-delay": "dose.restart-after-delay",
    "restart-crs-grade3": "dose.restart-after-crs-grade3",
}


def ordered_display(order: DraftOrder) -> str:
    """The ordered dose as written, with its mg equivalent when written in another unit."""
    dose = order.dose
    shown = dose.display
    if dose.mg is not None and dose.raw_unit not in ("mg",):
        shown += f" (= {dose.mg:g} mg)"
    return shown


def order_evidence(order: DraftOrder) -> tuple[Evidence, ...]:
    ref = f"MedicationRequest/{order.resource_id}"
    return (
        Evidence("Ordered dose", ordered_display(order), reference=ref),
        Evidence("Planned administration date", f"{order.planned_date.isoformat()} (from {order.planned_source})"),
    )


def last_dose_evidence(last: Administration | None) -> tuple[Evidence, ...]:
    if last is None:
        return (Evidence("Tarlatamab doses on record", "none"),)
    position = last.position.display if last.position else "position unknown"
    return (
        Evidence(
            "Last tarlatamab dose",
            f"{last.dose.display}, {position}",
            last.local_date.isoformat(),
            last.reference,
        ),
    )


def schedule_evidence(order: DraftOrder, expected: ExpectedDose) -> tuple[Evidence, ...]:
    out = [*order_evidence(order), *last_dose_evidence(expected.last)]
    if expected.gap_days is not None:
        out.append(
            Evidence(
                "Days since the last dose", f"{expected.gap_days} (restart when more than {expected.max_gap_days})"
            )
        )
    episode = expected.crs_episode
    if episode is not None:
        state = "active" if episode.active else "resolved"
        out.append(
            Evidence(
                "Cytokine release syndrome",
                f"Grade {episode.grade}, {state}",
                episode.onset.date().isoformat(),
                ", ".join(episode.references) or None,
            )
        )
    out.append(Evidence("Expected dose", f"{expected.dose_mg} mg for {expected.position.display}"))
    return tuple(out)


def dose_values(order: DraftOrder, expected: ExpectedDose) -> dict[str, Any]:
    episode = expected.crs_episode
    return {
        "position": expected.position.display,
        "planned_date": order.planned_date.isoformat(),
        "ordered": ordered_display(order),
        "expected_mg": expected.dose_mg,
        "max_gap_days": expected.max_gap_days if expected.max_gap_days is not None else "-",
        "crs_date": episode.onset.date().isoformat() if episode else "-",
        "crs_state": ("active" if episode.active else "resolved") if episode else "-",
        "problem": order.dose.problem or "it is neither 1 mg nor 10 mg",
        **describe_last(expected),
    }


def dose_rule(order: DraftOrder, expected: ExpectedDose, protocol: Protocol) -> str | None:
    """The rule id a dose breaks (None when the ordered dose is the expected dose)."""
    doses = protocol.section("doses")
    step_up, target = float(doses["step_up_mg"]), float(doses["target_mg"])
    mg = order.dose.mg
    if is_dose(mg, expected.dose_mg, protocol):
        return None
    if is_dose(mg, target, protocol) and expected.dose_mg == step_up:
        return _STEP_UP_RULE.get(expected.reason, "dose.step-up-skipped")
    if is_dose(mg, step_up, protocol) and expected.dose_mg == target:
        return "dose.step-up-repeated"
    return "dose.invalid-amount"


def check_dose(facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    expected = expected_dose(facts, order.planned_date, protocol)
    if expected is None:  # history unavailable: data-quality.dose-history says so
        return []
    rule_id = dose_rule(order, expected, protocol)
    if rule_id is None:
        return []
    return [
        Finding(
            rule_id=rule_id,
            order_id=order.resource_id,
            values=dose_values(order, expected),
            evidence=schedule_evidence(order, expected),
            suggestions=(SuggestionSpec("update-dose", order.resource_id, {"dose_mg": expected.dose_mg}),),
        )
    ]


def check_too_early(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    expected = expected_dose(facts, order.planned_date, protocol)
    if expected is None or expected.last is None or expected.gap_days is None or expected.interval_days is None:
        return []
    earliest = earliest_date(expected, protocol)
    if earliest is None or order.planned_date >= earliest:
        return []
    last = expected.last
    return [
        Finding(
            rule_id="schedule.too-early",
            order_id=order.resource_id,
            values={
                "position": expected.position.display,
                "planned_date": order.planned_date.isoformat(),
                "interval_days": expected.interval_days,
                "earliest_date": earliest.isoformat(),
                "due_date": (last.local_date + timedelta(days=expected.interval_days)).isoformat(),
                **describe_last(expected),
            },
            evidence=(
                *order_evidence(order),
                *last_dose_evidence(last),
                Evidence(
                    "Days since the last dose",
                    f"{expected.gap_days} (interval {expected.interval_days}, "
                    f"tolerance {protocol.section('schedule')['too_early_tolerance_days']})",
                ),
            ),
        )
    ]


def check_product(facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    """A 10 mg dose on the 1 mg kit (or 1 mg on the 10 mg kit): the product does not match the dose (13.13)."""
    doses = protocol.section("doses")
    step_up, target = float(doses["step_up_mg"]), float(doses["target_mg"])
    mg, kit = order.dose.mg, order.product_mg
    if kit is None or mg is None or is_dose(mg, kit, protocol):
        return []
    known = (is_dose(mg, step_up, protocol) and is_dose(kit, target, protocol)) or (
        is_dose(mg, target, protocol) and is_dose(kit, step_up, protocol)
    )
    if not known:
        return []  # any other amount is the invalid-amount card's concern
    return [
        Finding(
            rule_id="dose.product-mismatch",
            order_id=order.resource_id,
            values={
                "ordered": ordered_display(order),
                "kit_mg": f"{kit:g}",
                "planned_date": order.planned_date.isoformat(),
            },
            evidence=(
                *order_evidence(order),
                Evidence("Product on the order", f"{kit:g} mg kit", reference=f"MedicationRequest/{order.resource_id}"),
            ),
        )
    ]


def check_duplicates(drafts: tuple[DraftOrder, ...], protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    """Two or more tarlatamab drafts for the same planned date: a duplicate dose (section 12).

    The first draft of the request for a date is kept; each later one gets a critical card suggesting its deletion.
    """
    findings: list[Finding] = []
    first_of_date: dict[object, DraftOrder] = {}
    for order in drafts:
        kept = first_of_date.setdefault(order.planned_date, order)
        if kept is order or (not order.selected and not kept.selected):
            continue
        findings.append(
            Finding(
                rule_id="schedule.duplicate-order",
                order_id=order.resource_id,
                values={"planned_date": order.planned_date.isoformat(), "other_order": kept.resource_id},
                evidence=(
                    Evidence(
                        "Tarlatamab order",
                        f"{order.dose.display}, planned {order.planned_date.isoformat()}",
                        reference=f"MedicationRequest/{order.resource_id}",
                    ),
                    Evidence(
                        "Other tarlatamab order for the same date",
                        f"{kept.dose.display}, planned {kept.planned_date.isoformat()}",
                        reference=f"MedicationRequest/{kept.resource_id}",
                    ),
                ),
                suggestions=(SuggestionSpec("delete-order", order.resource_id),),
            )
        )
    return findings
