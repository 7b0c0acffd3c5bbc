"""The governance corpus (fixtures/corpus/): one realistic order-sign request per protocol rule that the
clinical fixtures of fixtures/requests/ do not already exercise.

Each scenario targets one rule and is otherwise clean (a full pre-dose panel in the window, the indication
documented, premedication and hydration ordered where due), so that the card a rule makes is not hidden by
another rule's hold. Realistic R4 shapes on purpose: 11-digit NDCs without dashes, a CBC panel Observation
with `hasMember`, time-zone offsets, a Medication contained in the order, OperationOutcome prefetch entries.

Dates are relative to the evaluation time 2026-11-21T09:00:00Z (pass `--now 2026-11-21T09:00:00Z`).
`python tests/corpus_scenarios.py` rewrites the files (ids and hookInstances are fixed).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fhir_builders import (
    LOINC,
    SNOMED,
    breastfeeding,
    condition,
    crs_condition,
    dexamethasone_order,
    grade_observation,
    hcg_quantitative,
    hcg_urine,
    hook_request,
    icans_condition,
    lab,
    patient,
    platinum_administration,
    saline_order,
    sclc_condition,
    tarlatamab_order,
)
from fhir_builders import administration as tarla_administration

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
NOW = "2026-11-21T09:00:00Z"
PLANNED = "2026-11-21T10:00:00Z"
LABS_DRAWN = "2026-11-20T07:30:00-05:00"  # drawn the day before, reported with the site's offset
NORMAL = {"anc": 3.4, "hemoglobin": 12.8, "platelets": 212, "alt": 24, "ast": 27, "bilirubin": 0.6}


def _hook_instance(n: int) -> str:
    return f"c0a5e7b2-6d1e-4f00-8a3b-{n:012d}"


def panel(prefix: str, when: str = LABS_DRAWN, **overrides: Any) -> list[dict[str, Any]]:
    """CBC and hepatic results with stable ids, plus the CBC panel Observation that groups them (hasMember)."""
    out = []
    for analyte, default in NORMAL.items():
        spec = overrides.get(analyte, default)
        kwargs = spec if isinstance(spec, dict) else {"value": spec}
        out.append(lab(analyte, when=when, oid=f"{prefix}-{analyte}", **kwargs))
    members = [{"reference": f"Observation/{prefix}-{a}"} for a in ("anc", "hemoglobin", "platelets")]
    out.append(
        {
            "resourceType": "Observation",
            "id": f"{prefix}-cbc-panel",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
                    ]
                }
            ],
            "code": {
                "coding": [{"system": LOINC, "code": "57021-8", "display": "CBC W Auto Differential panel - Blood"}]
            },
            "subject": {"reference": "Patient/pt-sclc-001"},
            "effectiveDateTime": when,
            "issued": when,
            "hasMember": members,
        }
    )
    return out


def first_cycle() -> list[dict[str, Any]]:
    """C1D1 1 mg, C1D8 and C1D15 10 mg given: an order for 2026-11-21 is C2D1 (14 days after C1D15)."""
    return [
        tarla_administration("2026-10-24T09:00:00Z", 1, aid="adm-c1d1"),
        tarla_administration("2026-10-31T10:05:00+01:00", 10, aid="adm-c1d8"),
        tarla_administration("2026-11-07T09:00:00Z", 10, aid="adm-c1d15", period=True),
    ]


def indication() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sclc = sclc_condition("2025-12-02")
    sclc["id"] = "cond-es-sclc"
    carbo = platinum_administration("2026-02-10T09:00:00Z")
    carbo["id"] = "carboplatin-adm-1"
    return [sclc], [carbo]


def ndc11(order: dict[str, Any]) -> dict[str, Any]:
    """The order coded with the 11-digit NDC (5-4-2 without dashes), as many pharmacy systems send it."""
    coding = order["medicationCodeableConcept"]["coding"][0]
    coding["code"] = {"55513-059-01": "55513005901", "55513-077-01": "55513007701"}[coding["code"]]
    return order


def contained_medication(order: dict[str, Any]) -> dict[str, Any]:
    """The order's medication as a contained Medication referenced by `#id`."""
    concept = order.pop("medicationCodeableConcept")
    order["contained"] = [{"resourceType": "Medication", "id": "med-tarla", "code": concept}]
    order["medicationReference"] = {"reference": "#med-tarla", "display": concept["text"]}
    return order


def maintenance(
    n: int,
    *,
    order: dict[str, Any] | None = None,
    observations: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    administrations: list[dict[str, Any]] | None = None,
    patient_resource: dict[str, Any] | None = None,
    drafts: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    diagnoses, platinum = indication()
    return hook_request(
        drafts=[order or ndc11(tarlatamab_order(PLANNED, 10, oid=f"tarla-order-{n}")), *drafts],
        patient_resource=patient_resource,
        administrations=(first_cycle() if administrations is None else administrations) + platinum,
        observations=panel(f"lab{n}") if observations is None else observations,
        conditions=diagnoses + list(conditions),
        hook_instance=_hook_instance(n),
    )


def step_up_day(
    n: int,
    *,
    dose: float = 1,
    patient_resource: dict[str, Any] | None = None,
    observations: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    platinum: bool = True,
    dexamethasone_mg: float = 8,
    saline_ml: float = 1000,
    companions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """C1D1 (no tarlatamab given yet) with premedication and hydration ordered in the same request
    (`companions` replaces the default dexamethasone and saline drafts)."""
    diagnoses, platinum_history = indication()
    if companions is None:
        companions = [
            dexamethasone_order("2026-11-21T09:00:00Z", dexamethasone_mg, oid=f"dexa-order-{n}"),
            saline_order("2026-11-21T11:00:00Z", saline_ml, oid=f"nacl-order-{n}"),
        ]
    return hook_request(
        drafts=[contained_medication(tarlatamab_order(PLANNED, dose, oid=f"tarla-order-{n}")), *companions],
        patient_resource=patient_resource,
        administrations=platinum_history if platinum else [],
        observations=panel(f"lab{n}") if observations is None else observations,
        conditions=diagnoses if conditions is None else conditions,
        hook_instance=_hook_instance(n),
    )


def _outcome(diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": diagnostics}],
    }


# --- one scenario per rule -----------------------------------------------------------------------------------
def rate_conflict() -> dict[str, Any]:
    return maintenance(1, order=tarlatamab_order(PLANNED, 10, oid="tarla-order-1", rate=(125, "mL/h")))


def crs_grade3_recurrent() -> dict[str, Any]:
    episodes = [
        crs_condition(3, "2026-10-24T21:00:00Z", abatement="2026-10-26T10:00:00Z", cid="cond-crs-1"),
        crs_condition(3, "2026-11-07T22:00:00Z", abatement="2026-11-09T10:00:00Z", cid="cond-crs-2"),
    ]
    return maintenance(2, conditions=episodes)


def crs_grade4() -> dict[str, Any]:
    return maintenance(3, conditions=[crs_condition(4, "2026-10-24T21:00:00Z", abatement="2026-10-28T10:00:00Z",
                                                    cid="cond-crs-g4")])  # fmt: skip


def dose_history_unavailable() -> dict[str, Any]:
    body = maintenance(4)
    body["prefetch"]["administrations"] = _outcome("Timeout reading MedicationAdministration")
    return body


def conditions_unavailable() -> dict[str, Any]:
    body = maintenance(5)
    body["prefetch"]["conditions"] = _outcome("Condition search failed")
    return body


def unusable_ice_score() -> dict[str, Any]:
    return maintenance(6, observations=[*panel("lab6"), grade_observation("ice-score", 11, "2026-11-20T10:00:00Z",
                                                                         oid="ice-out-of-range")])  # fmt: skip


def invalid_amount() -> dict[str, Any]:
    return maintenance(7, order=tarlatamab_order(PLANNED, 5, oid="tarla-order-7"))


def restart_after_crs_grade3() -> dict[str, Any]:
    # A first Grade 3 CRS after C1D15, resolved: re-initiate with 1 mg, not the 10 mg ordered.
    crs = crs_condition(3, "2026-11-07T21:00:00Z", abatement="2026-11-10T10:00:00Z", cid="cond-crs-g3")
    return maintenance(8, conditions=[crs])


def step_up_repeated() -> dict[str, Any]:
    # C1D1 given a week ago: the order for today is C1D8 (10 mg), written as 1 mg again.
    diagnoses, platinum = indication()
    return hook_request(
        drafts=[
            ndc11(tarlatamab_order(PLANNED, 1, oid="tarla-order-9")),
            dexamethasone_order("2026-11-21T09:00:00Z", oid="dexa-order-9"),
            saline_order("2026-11-21T11:00:00Z", oid="nacl-order-9"),
        ],
        administrations=[tarla_administration("2026-11-14T09:00:00Z", 1, aid="adm-c1d1"), *platinum],
        observations=panel("lab9"),
        conditions=diagnoses,
        hook_instance=_hook_instance(9),
    )


def under_18() -> dict[str, Any]:
    return step_up_day(10, patient_resource=patient(birth_date="2009-12-30", name="Haddad"))


def no_indication() -> dict[str, Any]:
    return step_up_day(11, conditions=[], platinum=False)


def saline_volume() -> dict[str, Any]:
    return step_up_day(12, saline_ml=500)


def dexamethasone_dose() -> dict[str, Any]:
    return step_up_day(13, dexamethasone_mg=4)


def active_infection() -> dict[str, Any]:
    pneumonia = condition("http://hl7.org/fhir/sid/icd-10-cm", "J18.9", "Pneumonia, unspecified organism",
                          "2026-11-18T16:20:00-05:00", cid="cond-pneumonia")  # fmt: skip
    return maintenance(14, conditions=[pneumonia])


def hemoglobin_low() -> dict[str, Any]:
    return maintenance(15, observations=panel("lab15", hemoglobin=7.4))


def hepatotoxicity_grade4() -> dict[str, Any]:
    return maintenance(16, observations=panel("lab16", alt={"value": 17.5, "unit": "ukat/L", "ref_high": 0.67}))


def hys_law() -> dict[str, Any]:
    # ALT 3.75 x ULN (not above 5 x) with bilirubin 2.5 x ULN (not above 3 x): Hy's law alone.
    return maintenance(17, observations=panel("lab17", alt=150, bilirubin=3.0))


def platelets_low() -> dict[str, Any]:
    return maintenance(18, observations=panel("lab18", platelets={"value": 41000, "unit": "/uL", "ref_high": 400000}))


def breastfeeding_recorded() -> dict[str, Any]:
    observations = [*panel("lab19"), {**breastfeeding("2026-11-17T10:00:00+01:00"), "id": "bf-19"}]
    return maintenance(19, observations=observations,
                       patient_resource=patient(gender="female", birth_date="1988-03-09", name="Novak"))  # fmt: skip


def icans_grade2_active() -> dict[str, Any]:
    observations = [*panel("lab20"), grade_observation("ice-score", 6, "2026-11-20T12:00:00Z", oid="ice-20")]
    return maintenance(20, observations=observations)


def icans_grade3_active() -> dict[str, Any]:
    icans = icans_condition(3, "2026-11-19T20:00:00Z", cid="cond-icans-g3")
    return maintenance(21, conditions=[icans])


def neurotox_grade3_not_improved() -> dict[str, Any]:
    observations = [*panel("lab22"), grade_observation("ice-score", 1, "2026-11-12T08:00:00Z", oid="ice-22")]
    return maintenance(22, observations=observations)


def neurotox_grade3_recurrent() -> dict[str, Any]:
    observations = [
        *panel("lab23"),
        grade_observation("neurotox-grade", 3, "2026-10-25T10:00:00Z", oid="ntx-23a"),
        grade_observation("neurotox-grade", 0, "2026-10-27T10:00:00Z", oid="ntx-23b"),
        grade_observation("neurotox-grade", 3, "2026-11-08T10:00:00Z", oid="ntx-23c"),
        grade_observation("neurotox-grade", 0, "2026-11-10T10:00:00Z", oid="ntx-23d"),
    ]
    return maintenance(23, observations=observations)


def icans_grade4() -> dict[str, Any]:
    icans = icans_condition(4, "2026-10-25T03:00:00Z", abatement="2026-10-30T10:00:00Z", cid="cond-icans-g4")
    return maintenance(24, conditions=[icans])


def renal_impairment() -> dict[str, Any]:
    observations = [*panel("lab25"), lab("egfr", 24, LABS_DRAWN, oid="lab25-egfr")]
    return maintenance(25, observations=observations)


def contraception_c1d1() -> dict[str, Any]:
    observations = [*panel("lab26"), {**hcg_urine(False, "2026-11-20T08:10:00-05:00"), "id": "hcg-26"}]
    return step_up_day(26, patient_resource=patient(gender="female", birth_date="1987-07-21", name="Moreau"),
                       observations=observations)  # fmt: skip


def pregnancy_status_unknown() -> dict[str, Any]:
    return step_up_day(27, patient_resource=patient(gender="female", birth_date="1990-01-15", name="Ibarra"))


def too_early() -> dict[str, Any]:
    # C1D15 on 2026-11-07; C2D1 planned 2026-11-17, 10 days later (interval 14, tolerance 1).
    order = ndc11(tarlatamab_order("2026-11-17T10:00:00-05:00", 10, oid="tarla-order-28"))
    return maintenance(28, order=order, observations=panel("lab28", when="2026-11-16T07:30:00-05:00"))


def monitoring_escalated() -> dict[str, Any]:
    # Grade 2 CRS after C1D15, resolved before C2D1: C2D1 needs 22-24 h monitoring instead of 6-8 h (not held).
    crs = crs_condition(2, "2026-11-07T20:00:00Z", abatement="2026-11-09T08:00:00Z", cid="cond-crs-g2-resolved")
    return maintenance(30, conditions=[crs])


def organ_function_hepatic() -> dict[str, Any]:
    # Bilirubin 2.0 x ULN: moderate hepatic impairment, below every hold threshold.
    return maintenance(29, observations=panel("lab29", bilirubin=2.4))


# --- reading real-world records (section 12) and the clarifications of section 13 ---------------------------
def platelets_lower_limit() -> dict[str, Any]:
    # EDTA-induced platelet clumping: the analyser reports a minimum (">40 x10^3/uL") and asks for a citrate
    # sample. Whether the count is below the 50 x10^3/uL threshold cannot be told: reported, never passed.
    observations = panel("lab31")
    platelets = next(o for o in observations if o["id"] == "lab31-platelets")
    platelets["valueQuantity"].update({"value": 40, "comparator": ">"})
    platelets["note"] = [{"text": "Platelet clumps seen on smear; count is a minimum. Recollect in sodium citrate."}]
    return maintenance(31, observations=observations)


def product_mismatch() -> dict[str, Any]:
    # C2D1 10 mg written on the 1 mg kit (11-digit NDC 55513-0059-01): the product does not match the dose.
    order = tarlatamab_order(PLANNED, 10, oid="tarla-order-32")
    order["medicationCodeableConcept"] = tarlatamab_order(PLANNED, 1)["medicationCodeableConcept"]
    return maintenance(32, order=ndc11(order))


def duplicate_order() -> dict[str, Any]:
    # The C2D1 order set placed twice for the same day: the second draft (contained Medication, local time -05:00)
    # is a duplicate dose.
    again = contained_medication(tarlatamab_order("2026-11-21T08:30:00-05:00", 10, oid="tarla-order-33-dup"))
    again["authoredOn"] = "2026-11-20T16:40:00-05:00"
    return maintenance(33, drafts=[again])


def dexamethasone_oral() -> dict[str, Any]:
    # C1D1 premedication ordered as two 4 mg tablets by mouth: the dose is right, the route is not IV.
    dexa = dexamethasone_order("2026-11-21T09:00:00Z", 8, oid="dexa-order-34")
    dexa["medicationCodeableConcept"]["text"] = "dexamethasone 4 mg oral tablet"
    dosage = dexa["dosageInstruction"][0]
    dosage["text"] = "dexamethasone 8 mg (2 x 4 mg tablets) by mouth once, 60 minutes before tarlatamab"
    dosage["route"] = {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]}
    return step_up_day(34, companions=[dexa, saline_order("2026-11-21T11:00:00Z", oid="nacl-order-34")])


def saline_subcutaneous() -> dict[str, Any]:
    # C1D1 hydration ordered as hypodermoclysis: 1000 mL of 0.9% sodium chloride, but not intravenous.
    nacl = saline_order("2026-11-21T11:00:00Z", oid="nacl-order-35")
    dosage = nacl["dosageInstruction"][0]
    dosage["text"] = "sodium chloride 0.9% 1000 mL subcutaneous infusion (hypodermoclysis) over 4-5 hours"
    dosage["route"] = {"coding": [{"system": SNOMED, "code": "34206005", "display": "Subcutaneous route"}]}
    return step_up_day(35, companions=[dexamethasone_order("2026-11-21T09:00:00Z", oid="dexa-order-35"), nacl])


def saline_half_normal() -> dict[str, Any]:
    # C1D1 hydration picked as half-normal saline (0.45%) from the fluid list: 1000 mL IV, wrong strength.
    nacl = saline_order("2026-11-21T11:00:00Z", oid="nacl-order-36")
    nacl["medicationCodeableConcept"]["text"] = "sodium chloride 0.45% injection 1000 mL bag"
    nacl["dosageInstruction"][0]["text"] = "sodium chloride 0.45% 1000 mL IV over 4-5 hours after tarlatamab"
    return step_up_day(36, companions=[dexamethasone_order("2026-11-21T09:00:00Z", oid="dexa-order-36"), nacl])


def pregnancy_reconcile() -> dict[str, Any]:
    # A pregnancy from 2025 still active on the problem list; a serum beta-hCG "<2 mIU/mL" the day before C1D1.
    diagnoses, _ = indication()
    old_pregnancy = condition(SNOMED, "77386006", "Pregnancy", "2025-02-10", cid="cond-pregnancy-2025")
    hcg = hcg_quantitative(2, "2026-11-20T08:05:00-05:00")
    hcg["id"] = "hcg-37"
    hcg["valueQuantity"]["comparator"] = "<"
    return step_up_day(37, patient_resource=patient(gender="female", birth_date="1992-05-08", name="Lindgren"),
                       observations=[*panel("lab37"), hcg], conditions=[*diagnoses, old_pregnancy])  # fmt: skip


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "administration-rate-conflict": rate_conflict,
    "crs-grade3-recurrent": crs_grade3_recurrent,
    "crs-grade4-history": crs_grade4,
    "data-quality-dose-history-unavailable": dose_history_unavailable,
    "data-quality-conditions-unavailable": conditions_unavailable,
    "data-quality-ice-score-out-of-range": unusable_ice_score,
    "dose-invalid-amount-5mg": invalid_amount,
    "dose-restart-after-crs-grade3": restart_after_crs_grade3,
    "dose-step-up-repeated-c1d8": step_up_repeated,
    "eligibility-under-18": under_18,
    "eligibility-no-indication": no_indication,
    "hydration-saline-500ml": saline_volume,
    "premedication-dexamethasone-4mg": dexamethasone_dose,
    "infection-pneumonia": active_infection,
    "lab-hold-hemoglobin": hemoglobin_low,
    "lab-hold-hepatotoxicity-grade4": hepatotoxicity_grade4,
    "lab-hold-hys-law": hys_law,
    "lab-hold-platelets": platelets_low,
    "lactation-breastfeeding": breastfeeding_recorded,
    "neurotox-icans-grade2-active": icans_grade2_active,
    "neurotox-icans-grade3-active": icans_grade3_active,
    "neurotox-grade3-not-improved": neurotox_grade3_not_improved,
    "neurotox-grade3-recurrent": neurotox_grade3_recurrent,
    "neurotox-icans-grade4-history": icans_grade4,
    "organ-function-renal": renal_impairment,
    "organ-function-hepatic": organ_function_hepatic,
    "monitoring-escalated-after-crs-grade2": monitoring_escalated,
    "pregnancy-contraception-c1d1": contraception_c1d1,
    "pregnancy-status-unknown": pregnancy_status_unknown,
    "schedule-too-early": too_early,
    "data-quality-platelets-lower-limit": platelets_lower_limit,
    "dose-product-mismatch-1mg-kit": product_mismatch,
    "schedule-duplicate-order": duplicate_order,
    "premedication-dexamethasone-oral": dexamethasone_oral,
    "hydration-saline-subcutaneous": saline_subcutaneous,
    "hydration-saline-half-normal": saline_half_normal,
    "pregnancy-reconcile-old-condition": pregnancy_reconcile,
}


def regenerate() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, build in SCENARIOS.items():
        body = copy.deepcopy(build())
        (CORPUS / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    regenerate()
