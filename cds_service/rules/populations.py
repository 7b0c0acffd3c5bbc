"""Special populations and other pre-dose checks (clinical specification sections 1 and 9).

Decisions where the specification is silent:
- The pregnancy checks apply only to patients whose administrative gender is female, unknown or absent, aged
  12-55 (section 13.7), and when the age is unknown (it cannot be excluded). A positive hCG in any other
  patient raises no pregnancy card. An active pregnancy Condition contradicted by a newer negative test is a
  "reconcile" warning, not a critical card. When the schedule
  position is unknown (administration history unavailable) it is applied too; the contraception advice and
  the indication check, which are tied to C1D1, are not.
- "Pregnant" is decided by the newest pregnancy evidence up to now; a positive result older than
  `pregnancy_positive_lookback_days` before the planned date no longer counts.
- The renal and hepatic checks read the most recent usable eGFR / bilirubin up to now, whatever its age.
"""

from __future__ import annotations

from ..facts import DraftOrder, PatientFacts, PregnancyEvidence
from ..findings import Evidence, Finding, SuggestionSpec
from ..protocol import Protocol
from ..units import clean, format_multiple, format_quantity
from . import EvaluationContext, schedule
from .labs import latest_usable_any_date, result_evidence, result_value

# The first dose of treatment: contraception advice is given there (spec section 9, "every C1D1").
_GENDERS_THAT_CANNOT_BE_EXCLUDED = (None, "unknown")


def _position_names(facts: PatientFacts, order: DraftOrder, protocol: Protocol) -> frozenset[str] | None:
    expected = schedule.expected_dose(facts, order.planned_date, protocol)
    return expected.position.names if expected is not None else None


def _position_text(names: frozenset[str] | None) -> str:
    if names is None:
        return "this dose"
    return "R1" if "R1" in names else sorted(names)[0]


def _evidence(item: PregnancyEvidence) -> Evidence:
    return Evidence("Pregnancy", item.description, item.at.date().isoformat(), item.reference)


def latest_pregnancy(facts: PatientFacts, ctx: EvaluationContext) -> PregnancyEvidence | None:
    return next((e for e in facts.pregnancy if e.at <= ctx.now), None)


def _contradicted_condition(
    facts: PatientFacts, latest: PregnancyEvidence | None, ctx: EvaluationContext
) -> PregnancyEvidence | None:
    """An active pregnancy Condition older than the newest evidence when that is a negative test (13.7)."""
    if latest is None or latest.status != "not-pregnant" or latest.source != "test":
        return None
    return next(
        (e for e in facts.pregnancy if e.source == "condition" and e.status == "pregnant" and e.at <= latest.at),
        None,
    )


def check_pregnancy(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    pops = protocol.section("populations")
    findings: list[Finding] = []
    sex_applies = facts.gender == pops["pregnancy_check_sex"] or facts.gender in _GENDERS_THAT_CANNOT_BE_EXCLUDED
    age = facts.age_on(order.planned_date)
    age_applies = age is None or int(pops["pregnancy_check_age_min"]) <= age <= int(pops["pregnancy_check_age_max"])
    if not (sex_applies and age_applies):
        return findings
    latest = latest_pregnancy(facts, ctx)
    reconcile = _contradicted_condition(facts, latest, ctx)
    if reconcile is not None and latest is not None:
        findings.append(
            Finding(
                "pregnancy.reconcile",
                order.resource_id,
                {
                    "condition": reconcile.description,
                    "test": latest.description,
                    "test_date": latest.at.date().isoformat(),
                },
                (_evidence(reconcile), _evidence(latest)),
            )
        )
    pregnant = (
        latest is not None
        and latest.status == "pregnant"
        and (order.planned_date - latest.at.date()).days <= int(pops["pregnancy_positive_lookback_days"])
    )
    if pregnant:
        assert latest is not None
        findings.append(
            Finding(
                "pregnancy.pregnant",
                order.resource_id,
                {
                    "evidence": latest.description + (" (preliminary)" if latest.preliminary else ""),
                    "date": latest.at.date().isoformat(),
                },
                (_evidence(latest),),
                (SuggestionSpec("delete-order", order.resource_id),),
            )
        )

    names = _position_names(facts, order, protocol)
    if names is not None and not names & set(pops["pregnancy_check_positions"]):
        return findings

    window = int(pops["pregnancy_status_window_days"])
    recent = [e for e in facts.pregnancy if e.at <= ctx.now and (order.planned_date - e.at.date()).days <= window]
    if not recent and not pregnant:
        latest_text = (
            f"The latest on record is {latest.description} ({latest.at.date().isoformat()})."
            if latest is not None
            else "None is on record."
        )
        findings.append(
            Finding(
                "pregnancy.status-unknown",
                order.resource_id,
                {
                    "position": _position_text(names),
                    "age": age if age is not None else "unknown",
                    "planned_date": order.planned_date.isoformat(),
                    "latest": latest_text,
                },
                (_evidence(latest),) if latest is not None else (),
                (SuggestionSpec("create-lab", order.resource_id, {"orderable": "hcg"}),),
            )
        )
    if names is not None and names & set(protocol.section("populations")["contraception_positions"]) and not pregnant:
        position = _position_text(names)
        who = f"{facts.gender or 'gender not recorded'}, " + (f"{age} years" if age is not None else "age unknown")
        findings.append(
            Finding(
                "pregnancy.contraception",
                order.resource_id,
                {
                    "position": position,
                    "planned_date": order.planned_date.isoformat(),
                    "patient": who,
                },
                (
                    Evidence("Patient", who, order.planned_date.isoformat()),
                    Evidence(
                        "Tarlatamab order",
                        f"{position}, planned {order.planned_date.isoformat()}",
                        reference=f"MedicationRequest/{order.resource_id}",
                    ),
                ),
            )
        )
    return findings


def check_lactation(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    latest = next((b for b in facts.breastfeeding if b[1] <= ctx.now), None)
    if latest is None or not latest[0]:
        return []
    _, at, reference = latest
    return [
        Finding(
            "lactation.breastfeeding",
            order.resource_id,
            {"date": at.date().isoformat()},
            (Evidence("Breastfeeding status", "currently breastfeeding", at.date().isoformat(), reference),),
        )
    ]


def check_age(facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext) -> list[Finding]:
    age = facts.age_on(order.planned_date)
    if age is None or age >= int(protocol.section("populations")["adult_age_years"]):
        return []  # an unknown birth date is reported by the data-quality card (facts.issues)
    assert facts.birth_date is not None
    return [
        Finding(
            "eligibility.age",
            order.resource_id,
            {"age": age, "birth_date": facts.birth_date.isoformat()},
            (Evidence("Age at the planned administration", f"{age} years", order.planned_date.isoformat()),),
        )
    ]


def check_indication(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    names = _position_names(facts, order, protocol)
    if names is None or not names & set(protocol.section("populations")["indication_check_positions"]):
        return []
    missing: list[str] = []
    if not facts.sclc_diagnoses:
        missing.append("small cell lung cancer diagnosis")
    if not facts.platinum_history:
        drugs = " or ".join(protocol.section("medications")["platinum"]["text"])
        missing.append(f"prior platinum chemotherapy ({drugs})")
    if not missing:
        return []
    evidence = tuple(
        Evidence(
            "Small cell lung cancer diagnosis", d.display, d.onset.date().isoformat() if d.onset else None, d.reference
        )
        for d in facts.sclc_diagnoses
    ) + tuple(Evidence("Prior platinum", "on record", reference=ref) for ref in facts.platinum_history[:3])
    return [Finding("eligibility.indication", order.resource_id, {"missing": " and ".join(missing)}, evidence)]


def check_organ_function(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    thresholds = protocol.section("labs")["thresholds"]
    findings: list[Finding] = []
    egfr = latest_usable_any_date(facts.labs.get("egfr", ()), ctx.now)
    if egfr is not None and egfr.below(float(thresholds["egfr_severe_below"])):  # ">90" never reads as low
        findings.append(
            Finding(
                "organ-function.renal",
                order.resource_id,
                {"value": result_value(egfr), "date": egfr.local_date.isoformat()},
                (result_evidence(egfr),),
            )
        )
    bilirubin = latest_usable_any_date(facts.labs.get("bilirubin", ()), ctx.now)
    limit = float(thresholds["hepatic_impairment_bilirubin_uln"])
    if bilirubin is not None and bilirubin.value is not None and bilirubin.uln:
        multiple = clean(bilirubin.value / bilirubin.uln)
        if bilirubin.above_uln(limit):
            findings.append(
                Finding(
                    "organ-function.hepatic",
                    order.resource_id,
                    {
                        "value": result_value(bilirubin),
                        "date": bilirubin.local_date.isoformat(),
                        "multiple": format_multiple(multiple, limit),
                        "uln": format_quantity(bilirubin.uln, bilirubin.unit)
                        + (" (protocol default)" if bilirubin.uln_source == "default" else ""),
                    },
                    (result_evidence(bilirubin, f" = {format_multiple(multiple, limit)} x ULN"),),
                )
            )
    return findings


def check_infection(
    facts: PatientFacts, order: DraftOrder, protocol: Protocol, ctx: EvaluationContext
) -> list[Finding]:
    infections = facts.active_infections
    if not infections:
        return []
    names = [f"{c.display} ({c.code})" for c in infections]
    shown = ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")
    return [
        Finding(
            "infection.active",
            order.resource_id,
            {"conditions": shown, "all_conditions": "; ".join(names)},
            tuple(
                Evidence(
                    "Active infection",
                    f"{c.display} ({c.code})",
                    c.onset.date().isoformat() if c.onset else None,
                    c.reference,
                )
                for c in infections
            ),
        )
    ]
