"""Reading real-world records (clinical specification section 12) and the clarifications of section 13.

Every row of both tables has a test here (or in test_reading_layer.py for the pure readers), built from the
shapes EHRs and the CDS Hooks sandbox send: 11-digit NDCs, panel Observations, offsets like 22:00-05:00,
contained Medications, preliminary results, comparators. Each test fails when its row breaks.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from card_validator import card_rules
from conftest import NOW
from fhir_builders import (
    LOINC,
    NDC,
    SNOMED,
    UCUM,
    administration,
    breastfeeding,
    condition,
    crs_condition,
    dexamethasone_order,
    grade_observation,
    hcg_quantitative,
    hcg_urine,
    hook_request,
    lab,
    normal_labs,
    patient,
    pregnancy_status,
    saline_order,
    tarlatamab_order,
)
from support_fhir_server import Route, running_fhir_server

from cds_service.engine import Engine
from cds_service.protocol import Protocol, parse_protocol
from cds_service.settings import Settings

SIGN, SELECT, VIEW = "tarlatamab-order-sign", "tarlatamab-order-select", "tarlatamab-patient-view"
PLANNED = "2026-11-21T10:00:00Z"
DRAWN = "2026-11-20T07:30:00Z"
C1D1_KIT_11 = {"coding": [{"system": NDC, "code": "55513005901"}]}  # 11-digit, no dashes, no text


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(Settings(data_dir=tmp_path_factory.mktemp("data"), now=NOW))


def cards(engine: Engine, body: dict[str, Any], service: str = SIGN, **kw: Any) -> list[dict[str, Any]]:
    return engine.handle(service, copy.deepcopy(body), **kw).body["cards"]


def topics(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((c["source"]["topic"]["code"], c["indicator"]) for c in found)


def rule_cards(found: list[dict[str, Any]], rule_id: str) -> list[dict[str, Any]]:
    return [c for c in found if rule_id in card_rules(c)]


def quality_cards(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in found if c["source"]["topic"]["code"] == "data-quality"]


def history(*doses: tuple[str, float]) -> list[dict[str, Any]]:
    return [administration(when, mg, aid=f"adm-{i}") for i, (when, mg) in enumerate(doses)]


C1D1_GIVEN = history(("2026-11-14T09:00:00Z", 1))  # the order of 2026-11-21 is C1D8
FIRST_CYCLE = history(("2026-10-24T09:00:00Z", 1), ("2026-10-31T09:00:00Z", 10), ("2026-11-07T09:00:00Z", 10))


def request(**kw: Any) -> dict[str, Any]:
    kw.setdefault("drafts", [tarlatamab_order(PLANNED, 10)])
    kw.setdefault("observations", normal_labs(DRAWN))
    return hook_request(kw.pop("hook", "order-sign"), **kw)


def sandbox_draft(dose: dict[str, Any], medication: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sandbox's draft order shape (category and reasonCode as objects), with a tarlatamab medication."""
    return {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "intent": "order",
        "category": {"coding": [{"code": "outpatient"}], "text": "Outpatient"},
        "reasonCode": {"coding": [{"system": SNOMED, "code": "254632001"}], "text": "ES-SCLC"},
        "medicationCodeableConcept": medication or copy.deepcopy(C1D1_KIT_11),
        "subject": {"reference": "Patient/pt-sclc-001"},
        "dosageInstruction": [
            {
                "text": "as directed",
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": dose}],
            }
        ],
    }


# === section 12 ======================================================================================
def test_12_validation_scope_sandbox_draft_gets_the_same_cards_as_a_clean_one(engine: Engine) -> None:
    clean = sandbox_draft({"value": 1, "unit": "mg"})
    del clean["category"], clean["reasonCode"]
    sandbox = sandbox_draft({"value": 1, "unit": "mg"})
    bad_lab = lab("anc", 3.2, DRAWN)
    bad_lab["category"] = {"text": "laboratory"}  # an object where a list belongs, in an element never read
    observations = [*normal_labs(DRAWN)[1:], bad_lab]
    got_clean = cards(engine, request(drafts=[clean], observations=observations))
    got_sandbox = cards(engine, request(drafts=[sandbox], observations=observations))
    assert [(c["summary"], c["indicator"]) for c in got_sandbox] == [(c["summary"], c["indicator"]) for c in got_clean]
    assert not [c for c in got_sandbox if c["source"]["topic"]["code"] == "data-quality"]
    assert not [c for c in got_sandbox if c["source"]["topic"]["code"] == "labs-missing"]  # the ANC was not dropped


def test_12_invalid_tarlatamab_draft_is_answered_with_cards_and_a_critical_data_quality_card(engine: Engine) -> None:
    body = request(drafts=[sandbox_draft({"value": 1, "unit": "{pill}"})], hook="order-select",
                   selections=["MedicationRequest/request-123"])  # fmt: skip
    found = cards(engine, body, SELECT)
    (quality,) = rule_cards(found, "data-quality.draft-order")
    assert quality["indicator"] == "critical" and "tarlatamab dose" in quality["summary"]
    assert rule_cards(found, "dose.invalid-amount")[0]["indicator"] == "critical"
    # The checks that can run, ran: at order-sign the same draft also gets its plan card (order-select leaves
    # the plan card out).
    signed = cards(engine, request(drafts=[sandbox_draft({"value": 1, "unit": "{pill}"})]))
    assert rule_cards(signed, "data-quality.draft-order") and rule_cards(signed, "monitoring.schedule")


def test_12_malformed_relevant_record_is_reported_in_every_hook(engine: Engine) -> None:
    broken = lab("anc", 0.4, "2026-11-20T09:00:00Z", oid="anc-broken")
    broken["valueQuantity"]["value"] = "0,4"  # a string: unreadable
    observations = [*normal_labs("2026-11-19T08:00:00Z"), broken]
    for service in (SIGN, VIEW):
        body = request(observations=observations, administrations=C1D1_GIVEN,
                       hook="patient-view" if service == VIEW else "order-sign")  # fmt: skip
        found = cards(engine, body, service)
        quality = [c for c in found if c["source"]["topic"]["code"] == "data-quality"]
        assert any("Observation/anc-broken" in c["detail"] for c in quality), service


def test_12_an_older_result_never_stands_in_silently_for_an_unreadable_newer_one(engine: Engine) -> None:
    """The newest ANC cannot be read (unknown unit); an older normal ANC in the window does not satisfy the
    pre-dose requirement: a labs-missing warning names the unreadable result, at order-sign and patient-view."""
    unreadable = lab("anc", 0.4, "2026-11-20T09:00:00Z", oid="anc-newest")
    unreadable["valueQuantity"].update(unit="bananas", code="bananas")
    observations = [*normal_labs("2026-11-19T08:00:00Z"), unreadable]
    signed = cards(engine, request(observations=observations, administrations=C1D1_GIVEN))
    (missing,) = rule_cards(signed, "labs.missing")
    assert missing["indicator"] == "warning" and "ANC" in missing["summary"]
    assert "Observation/anc-newest" in missing["detail"] and "not usable" in missing["detail"]
    viewed = cards(engine, request(observations=observations, administrations=C1D1_GIVEN, hook="patient-view"), VIEW)
    (summary,) = [c for c in viewed if c["source"]["topic"]["code"] == "summary"]
    assert "ANC" in summary["detail"] and "are on record" not in summary["detail"]
    # Boundary: the same older result alone (no unreadable newer one) satisfies the requirement.
    fine = cards(engine, request(observations=normal_labs("2026-11-19T08:00:00Z"), administrations=C1D1_GIVEN))
    assert not rule_cards(fine, "labs.missing")


def test_a_held_c1d1_still_names_the_skipped_step_up(engine: Engine) -> None:
    """A C1D1 ordered at 10 mg with ANC 0.3: one critical hold card, which also says the step-up is skipped
    (listed for the case the hold is overridden, without a dose button: the card's one action deletes)."""
    anc_low = [*normal_labs(DRAWN)[1:], lab("anc", 0.3, DRAWN)]
    (held,) = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], observations=anc_low))
    assert held["indicator"] == "critical" and "lab-hold.anc" in card_rules(held)
    overridden = held["detail"].partition("If the hold is overridden")[2]
    assert "1 mg" in overridden and "C1D1" in overridden
    assert [a["type"] for s in held["suggestions"] for a in s["actions"]] == ["delete"]


def test_12_medication_identity_contained_prefetch_fetched_and_unidentifiable(engine: Engine) -> None:
    anc_low = [*normal_labs(DRAWN)[1:], lab("anc", 0.3, DRAWN)]
    contained = tarlatamab_order(PLANNED, 1)
    del contained["medicationCodeableConcept"]
    contained["contained"] = [{"resourceType": "Medication", "id": "kit", "code": C1D1_KIT_11}]
    contained["medicationReference"] = {"reference": "#kit"}
    assert rule_cards(cards(engine, request(drafts=[contained], observations=anc_low)), "lab-hold.anc")

    by_reference = tarlatamab_order(PLANNED, 1)
    del by_reference["medicationCodeableConcept"]
    by_reference["medicationReference"] = {"reference": "Medication/kit-1mg"}
    body = request(drafts=[by_reference], observations=anc_low)
    body["prefetch"]["medications"]["entry"].append(
        {"resource": {"resourceType": "Medication", "id": "kit-1mg", "code": C1D1_KIT_11}, "search": {"mode": "include"}}
    )
    assert rule_cards(cards(engine, body), "lab-hold.anc")

    medication = {"resourceType": "Medication", "id": "kit-1mg", "code": C1D1_KIT_11}
    with running_fhir_server({"Medication": Route(body=medication)}) as server:
        body = request(drafts=[by_reference], observations=anc_low)
        body["fhirServer"] = server.base_url
        assert rule_cards(cards(engine, body), "lab-hold.anc")
        assert any(r.path == "/fhir/Medication/kit-1mg" for r in server.requests)

    unknown = tarlatamab_order("2026-11-21T10:00:00Z", 1, oid="mystery-order")
    del unknown["medicationCodeableConcept"]
    unknown["medicationReference"] = {"reference": "Medication/gone"}
    mixed = request(drafts=[tarlatamab_order(PLANNED, 1), unknown])
    quality = [c for c in cards(engine, mixed) if c["source"]["topic"]["code"] == "data-quality"]
    assert any("MedicationRequest/mystery-order" in c["detail"] and c["indicator"] == "warning" for c in quality)


def test_12_eleven_digit_ndc_c1d1_with_low_anc_is_held(engine: Engine) -> None:
    order = tarlatamab_order(PLANNED, 1)
    order["medicationCodeableConcept"] = {"coding": [{"system": NDC, "code": "55513-0059-01"}]}
    found = cards(engine, request(drafts=[order], observations=[*normal_labs(DRAWN)[1:], lab("anc", 0.3, DRAWN)]))
    assert rule_cards(found, "lab-hold.anc")[0]["indicator"] == "critical"


def test_12_units_free_text_case_insensitive_ucum_case_sensitive(engine: Engine) -> None:
    upper = tarlatamab_order(PLANNED, 1)
    upper["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] = {"value": 1, "unit": "MG"}
    assert not rule_cards(cards(engine, request(drafts=[upper])), "dose.invalid-amount")
    megagram = tarlatamab_order(PLANNED, 1)
    megagram["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] = {"value": 1, "system": UCUM, "code": "Mg"}
    assert rule_cards(cards(engine, request(drafts=[megagram])), "dose.invalid-amount")


def comparator_lab(analyte: str, comparator: str, value: float, **kw: Any) -> dict[str, Any]:
    resource = lab(analyte, value, DRAWN, **kw)
    resource["valueQuantity"]["comparator"] = comparator
    return resource


def test_12_comparators_used_when_the_bound_decides_else_reported(engine: Engine) -> None:
    def run(result: dict[str, Any], administrations: list[dict[str, Any]] = C1D1_GIVEN) -> list[dict[str, Any]]:
        others = [o for o in normal_labs(DRAWN) if o["code"]["coding"][0]["code"] != result["code"]["coding"][0]["code"]]
        return cards(engine, request(observations=[*others, result], administrations=administrations))

    assert rule_cards(run(comparator_lab("anc", "<", 0.1)), "lab-hold.anc")
    undecided = run(comparator_lab("anc", "<", 1.5))
    assert not rule_cards(undecided, "lab-hold.anc")
    (limit,) = rule_cards(undecided, "data-quality.lab-limit")
    # Plain text with a clinical unit, never the raw UCUM code; the detail escapes the comparator for Markdown.
    # In the threshold's unit (10*3/uL = 10*9/L), plain text, never the raw UCUM code; Markdown-escaped in the detail.
    assert "<1.5 ×10⁹/L" in limit["summary"] and "10*3" not in limit["summary"]
    assert "\\<1.5 ×10⁹/L" in limit["detail"]
    (grade4,) = rule_cards(run(comparator_lab("alt", ">", 1000)), "lab-hold.hepatotoxicity-grade4")
    assert ">25 × ULN" in grade4["summary"] or ">25.0 × ULN" in grade4["summary"]  # a bound stays a bound
    assert not rule_cards(run(comparator_lab("anc", ">", 1.5)), "data-quality.lab-limit")  # >1.5 is not below 1.0


def test_12_comparator_beta_hcg_below_25_is_negative(engine: Engine) -> None:
    woman = patient(gender="female", birth_date="1990-03-02")
    negative = hcg_quantitative(2, "2026-11-20T08:00:00Z")
    negative["valueQuantity"]["comparator"] = "<"
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=woman,
                                  observations=[*normal_labs(DRAWN), negative]))  # fmt: skip
    assert not rule_cards(found, "pregnancy.pregnant") and not rule_cards(found, "pregnancy.status-unknown")


def cbc_panel(anc: float, when: str = DRAWN) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "cbc-panel-1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "57021-8", "display": "CBC W Auto Differential panel"}]},
        "subject": {"reference": "Patient/pt-sclc-001"},
        "effectiveDateTime": when,
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "718-7"}]},
             "valueQuantity": {"value": 12.1, "unit": "g/dL", "system": UCUM, "code": "g/dL"}},
            {"code": {"coding": [{"system": LOINC, "code": "777-3"}]},
             "valueQuantity": {"value": 210, "unit": "10*3/uL", "system": UCUM, "code": "10*3/uL"}},
            {"code": {"coding": [{"system": LOINC, "code": "751-8"}]},
             "valueQuantity": {"value": anc, "unit": "10*3/uL", "system": UCUM, "code": "10*3/uL"},
             "referenceRange": [{"low": {"value": 1.8}, "high": {"value": 7.7}}]},
        ],
    }  # fmt: skip


def test_12_panel_components_count(engine: Engine) -> None:
    hepatic = [o for o in normal_labs(DRAWN) if o["code"]["coding"][0]["code"] in ("1742-6", "1920-8", "1975-2")]
    found = cards(engine, request(observations=[*hepatic, cbc_panel(0.6)], administrations=C1D1_GIVEN))
    (hold,) = rule_cards(found, "lab-hold.anc")
    assert "Observation/cbc-panel-1" in hold["detail"]
    assert not rule_cards(found, "labs.missing")  # the panel's components satisfy the CBC


def test_12_observation_status_preliminary_raises_never_satisfies_or_clears(engine: Engine) -> None:
    prelim_low = lab("anc", 0.5, "2026-11-20T10:00:00Z", status="preliminary", oid="anc-prelim")
    found = cards(engine, request(observations=[*normal_labs(DRAWN), prelim_low], administrations=C1D1_GIVEN))
    (hold,) = rule_cards(found, "lab-hold.anc")
    assert "preliminary" in hold["summary"]
    prelim_normal = lab("anc", 3.0, "2026-11-20T10:00:00Z", status="preliminary")
    final_low = lab("anc", 0.5, DRAWN)
    others = normal_labs(DRAWN)[1:]
    assert rule_cards(cards(engine, request(observations=[*others, final_low, prelim_normal],
                                            administrations=C1D1_GIVEN)), "lab-hold.anc")  # fmt: skip
    only_prelim = [*others, lab("anc", 3.0, DRAWN, status="preliminary")]
    missing = rule_cards(cards(engine, request(observations=only_prelim, administrations=C1D1_GIVEN)), "labs.missing")
    assert missing and "preliminary" in missing[0]["detail"]
    cancelled = [*others, lab("anc", 0.2, DRAWN, status="cancelled")]
    found = cards(engine, request(observations=cancelled, administrations=C1D1_GIVEN))
    assert rule_cards(found, "labs.missing") and not rule_cards(found, "lab-hold.anc")


@pytest.mark.parametrize("status", [None, "FINAL", "done", ["final"]], ids=repr)
def test_12_a_lab_with_no_fhir_status_is_malformed_reported_and_no_older_result_stands_in(
    engine: Engine, status: Any
) -> None:
    newer = lab("anc", 0.5, "2026-11-20T07:30:00Z", oid="anc-newest")
    if status is None:
        del newer["status"]
    else:
        newer["status"] = status
    older = lab("anc", 3.4, "2026-11-19T07:30:00Z", oid="anc-older")
    labs = [*normal_labs(DRAWN)[1:], newer, older]
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=labs))
    assert rule_cards(found, "labs.missing"), [c["summary"] for c in found]  # 3.4 of the day before does not count
    (quality,) = quality_cards(found)
    assert "Observation/anc-newest" in quality["detail"] and "not a FHIR Observation status" in quality["detail"]
    # the same record with a cancelled status is not a result: the older one is then the newest result
    newer["status"] = "cancelled"
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=labs))
    assert not rule_cards(found, "labs.missing") and not quality_cards(found)


@pytest.mark.parametrize("status", [None, "Final"], ids=repr)
def test_12_a_grade_or_pregnancy_test_with_no_fhir_status_is_reported_not_dropped(engine: Engine, status: Any) -> None:
    grade = grade_observation("crs-grade", 3, "2026-11-18T10:00:00Z", oid="crs-grade-1")
    positive = hcg_urine(True, "2026-11-19T08:00:00Z")
    positive["id"] = "hcg-1"
    for record in (grade, positive):
        if status is None:
            del record["status"]
        else:
            record["status"] = status
    woman = patient(gender="female", birth_date="1994-03-02")
    found = cards(
        engine,
        request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=woman, observations=[
            *normal_labs(DRAWN), grade, positive]),
    )
    detail = "\n".join(c["detail"] for c in quality_cards(found))
    assert "Observation/crs-grade-1" in detail and "Observation/hcg-1" in detail, [c["summary"] for c in found]


def test_12_preliminary_crs_grade_raises_a_hold(engine: Engine) -> None:
    grade = grade_observation("crs-grade", 2, "2026-11-20T06:00:00Z")
    grade["status"] = "preliminary"
    found = cards(engine, request(observations=[*normal_labs(DRAWN), grade], administrations=C1D1_GIVEN))
    assert rule_cards(found, "crs.active")


def test_12_condition_status_refuted_ignored(engine: Engine) -> None:
    refuted = crs_condition(2, "2026-11-19T10:00:00Z")
    refuted["verificationStatus"] = {"coding": [{"code": "refuted"}]}
    assert not rule_cards(cards(engine, request(conditions=[refuted], administrations=C1D1_GIVEN)), "crs.active")


@pytest.mark.parametrize("status", ["on-hold", "unknown"])
def test_12_administration_status_on_hold_and_unknown_count_as_given(engine: Engine, status: str) -> None:
    given = [administration("2026-11-14T09:00:00Z", 1, aid="c1d1", status=status)]
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], administrations=given))
    assert not rule_cards(found, "dose.step-up-skipped")  # C1D1 was given: 10 mg is the C1D8 dose
    assert rule_cards(found, "monitoring.schedule")[0]["summary"].startswith("C1D8")
    warned = [c for c in rule_cards(found, "data-quality.unusable") if "assumes it was given" in c["detail"]]
    assert bool(warned) is (status == "unknown")
    assert not rule_cards(found, "data-quality.dose-history")


@pytest.mark.parametrize("status", [None, "Completed", "given", 42, ["completed"]], ids=repr)
def test_12_administration_without_a_fhir_status_counts_as_given_and_is_reported(engine: Engine, status: Any) -> None:
    """Only a record that says the dose was not given leaves the schedule; a missing or unknown status is
    malformed, and dropping it would move every later dose (here C2D1 would pass for C1D15)."""
    doses = history(("2026-11-06T09:00:00Z", 1), ("2026-11-13T09:00:00Z", 10), ("2026-11-20T09:00:00Z", 10))
    if status is None:
        del doses[2]["status"]
    else:
        doses[2]["status"] = status
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], administrations=doses))
    assert rule_cards(found, "schedule.too-early"), [c["summary"] for c in found]
    (quality,) = [c for c in found if c["source"]["topic"]["code"] == "data-quality"]
    assert "MedicationAdministration/adm-2" in quality["detail"]
    assert "the schedule position assumes it was given" in quality["detail"]


def test_12_dose_in_history_from_product_and_data_quality_once_per_request(engine: Engine) -> None:
    from_kit = administration("2026-11-14T09:00:00Z", 1, aid="c1d1")
    del from_kit["dosage"]["dose"]
    found = cards(engine, request(administrations=[from_kit]))
    assert not [c for c in found if c["source"]["topic"]["code"] == "data-quality"]
    unknown = copy.deepcopy(from_kit)
    unknown["medicationCodeableConcept"] = {"text": "tarlatamab-dlle IV infusion"}
    drafts = [tarlatamab_order(PLANNED, 10), tarlatamab_order("2026-11-28T10:00:00Z", 10, oid="tarla-order-2")]
    found = cards(engine, request(drafts=drafts, administrations=[unknown]))
    assert len(rule_cards(found, "data-quality.dose-history")) == 1
    older = [administration("2026-06-01T09:00:00Z", 1, aid="old"), copy.deepcopy(unknown)]
    older[1]["effectiveDateTime"] = "2026-06-08T09:00:00Z"  # an old sequence, restarted since
    older[1]["id"] = "old-no-dose"
    restarted = older + history(("2026-11-14T09:00:00Z", 1))
    found = cards(engine, request(administrations=restarted))
    assert not rule_cards(found, "data-quality.dose-history")  # the unknown dose does not decide anything now


def test_12_split_administrations_are_one_dose(engine: Engine) -> None:
    part1 = administration("2026-11-14T09:00:00Z", 0.3, aid="c1d1-a")
    part2 = administration("2026-11-14T10:30:00Z", 0.7, aid="c1d1-b")
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], administrations=[part1, part2]))
    assert rule_cards(found, "monitoring.schedule")[0]["summary"].startswith("C1D8")
    assert rule_cards(found, "premedication.dexamethasone-missing")  # C1D8 needs premedication
    assert not rule_cards(found, "dose.step-up-repeated") and not rule_cards(found, "dose.step-up-skipped")


def test_12_dates_crs_at_22h_minus_5_after_a_dose_at_01z_is_after_the_dose(engine: Engine) -> None:
    # C1D1 on 2026-11-07 01:00Z (local date 11-07); Grade 3 CRS charted 2026-11-06T22:00-05:00 = 11-07 03:00Z.
    given = [administration("2026-11-07T01:00:00Z", 1, aid="c1d1")]
    crs = [
        grade_observation("crs-grade", 3, "2026-11-06T22:00:00-05:00"),
        grade_observation("crs-grade", 0, "2026-11-09T10:00:00-05:00"),
    ]
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], administrations=given,
                                  observations=[*normal_labs(DRAWN), *crs]))  # fmt: skip
    assert rule_cards(found, "dose.restart-after-crs-grade3")


EVENING_NEW_YORK = "2026-11-19T22:00:00-05:00"  # local date 2026-11-19; instant 2026-11-20T03:00Z


def test_12_newest_lab_by_local_date_when_one_record_has_no_time(engine: Engine) -> None:
    """A date-only result of 2026-11-20 is newer than one of the evening before in New York, although that
    one's instant is later than 2026-11-20T00:00Z: only the newest (0.5) may decide."""
    newest = lab("anc", 0.5, "2026-11-20")
    newest["issued"] = "2026-11-20T16:02:00-05:00"  # issued is an instant; effectiveDateTime has no time
    labs = [*normal_labs(DRAWN)[1:], lab("anc", 3.4, EVENING_NEW_YORK), newest]
    assert rule_cards(cards(engine, request(administrations=C1D1_GIVEN, observations=labs)), "lab-hold.anc")


def test_12_newest_pregnancy_test_by_local_date_when_one_record_has_no_time(engine: Engine) -> None:
    woman = patient(gender="female", birth_date="1994-03-02")
    tests = [hcg_urine(False, EVENING_NEW_YORK), hcg_urine(True, "2026-11-20")]
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=woman, observations=[
        *normal_labs(DRAWN), *tests]))
    assert rule_cards(found, "pregnancy.pregnant"), [c["summary"] for c in found]


def test_12_grade_order_by_local_date_when_one_record_has_no_time(engine: Engine) -> None:
    grades = [grade_observation("crs-grade", 0, EVENING_NEW_YORK), grade_observation("crs-grade", 2, "2026-11-20")]
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), *grades]))
    assert rule_cards(found, "crs.active"), [c["summary"] for c in found]  # grade 2 after the grade 0: active


AHEAD = "2026-11-21T12:00:00Z"  # three hours after the evaluation time (a local time written as UTC, a clock ahead)


def test_12_a_lab_dated_after_the_check_is_reported_an_older_one_never_decides_silently(engine: Engine) -> None:
    ahead = lab("anc", 0.4, AHEAD, oid="anc-ahead")
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), ahead]))
    (quality,) = quality_cards(found)
    assert "Observation/anc-ahead" in quality["detail"] and "after the time of this check" in quality["detail"]
    assert not quality_cards(cards(engine, request(administrations=C1D1_GIVEN, observations=normal_labs(DRAWN))))


def test_12_a_grade_or_pregnancy_test_dated_after_the_check_is_reported(engine: Engine) -> None:
    woman = patient(gender="female", birth_date="1994-03-02")
    grade = grade_observation("crs-grade", 3, AHEAD, oid="crs-ahead")
    positive = pregnancy_status(True, AHEAD)
    positive["id"] = "preg-ahead"
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=woman, observations=[
        *normal_labs(DRAWN), grade, positive]))
    detail = "\n".join(c["detail"] for c in quality_cards(found))
    assert "Observation/crs-ahead" in detail and "Observation/preg-ahead" in detail, [c["summary"] for c in found]


def test_12_a_dose_recorded_for_after_the_check_is_reported(engine: Engine) -> None:
    doses = [*C1D1_GIVEN, administration("2062-11-14T09:00:00Z", 10, aid="adm-2062")]
    found = cards(engine, request(administrations=doses))
    assert any(
        "MedicationAdministration/adm-2062" in c["detail"] and "after the time of this check" in c["detail"]
        for c in quality_cards(found)
    ), [c["summary"] for c in found]
    today = administration("2026-11-21", 10, aid="adm-today")  # date only, today: not after the check
    assert not quality_cards(cards(engine, request(administrations=[*C1D1_GIVEN, today])))


def test_12_a_lab_code_with_stray_whitespace_is_still_that_lab_and_is_reported_not_dropped(engine: Engine) -> None:
    alt = lab("alt", 900, "2026-11-20T08:00:00Z", oid="alt-spaced")
    alt["code"]["coding"][0]["code"] = " " + alt["code"]["coding"][0]["code"]
    labs = [r for r in normal_labs(DRAWN) if "1742-6" not in str(r["code"])] + [alt]
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=labs))
    assert any("Observation/alt-spaced" in c["detail"] for c in quality_cards(found)), [c["summary"] for c in found]


@pytest.mark.parametrize(("value", "shown"), [("3", "the text '3' where a number 0-4 belongs"),
                                              (7, "value 7, outside 0-4"), ([3], "a value that is not a number")])
def test_12_an_unreadable_grade_value_is_described_as_written(engine: Engine, value: Any, shown: str) -> None:
    grade = grade_observation("crs-grade", 3, "2026-11-18T10:00:00Z", oid="crs-grade-odd")
    grade["valueInteger"] = value
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), grade]))
    detail = "\n".join(c["detail"] for c in quality_cards(found))
    assert shown in detail, detail


def test_12_the_newest_record_does_not_depend_on_the_order_the_records_come_in(engine: Engine) -> None:
    """Three ANCs where comparing pair by pair (instants for two, dates otherwise) is a cycle: the answer is
    one answer, whatever the order of the Bundle."""
    date_only = lab("anc", 0.3, "2026-11-20", oid="anc-date-only")
    date_only["issued"] = "2026-11-20T16:00:00-05:00"
    records = [date_only, lab("anc", 3.0, EVENING_NEW_YORK, oid="anc-ny"), lab("anc", 3.0, "2026-11-20T01:00:00Z")]
    answers = set()
    for received in itertools.permutations(records):
        found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN)[1:], *received]))
        answers.add(tuple(sorted(c["summary"] for c in found)))
    assert len(answers) == 1, answers


def test_12_a_grade_dated_after_the_check_is_not_used_anywhere(engine: Engine) -> None:
    grade = grade_observation("crs-grade", 2, "2026-11-21T15:00:00Z", oid="crs-later")
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), grade]))
    assert any("Observation/crs-later" in c["detail"] for c in quality_cards(found))
    others = [c for c in found if c["source"]["topic"]["code"] != "data-quality"]
    assert not any("crs-later" in c["detail"] or "Grade 2" in c["detail"] for c in others), others


def test_12_after_the_check_is_judged_by_the_sites_local_date_for_a_date_only_record(tmp_path: Path) -> None:
    """08:30 on 2026-11-21 in Tokyo (2026-11-20T23:30Z): a dose recorded for 2026-11-21 is today's, not a
    future one; at 22:00 on 2026-11-20 in New York, a dose recorded for 2026-11-21 is tomorrow's."""
    dose_of_21st = administration("2026-11-21", 1, aid="adm-21st")
    tokyo = Engine(Settings(data_dir=tmp_path, now=datetime(2026, 11, 20, 23, 30, tzinfo=UTC),
                            site_timezone="Asia/Tokyo"))
    new_york = Engine(Settings(data_dir=tmp_path, now=datetime(2026, 11, 21, 3, 0, tzinfo=UTC),
                               site_timezone="America/New_York"))
    body = request(drafts=[tarlatamab_order("2026-11-28T01:00:00Z", 10)], administrations=[dose_of_21st])

    def reported(found: list[dict[str, Any]]) -> bool:
        return any("adm-21st" in c["detail"] and "after the time of this check" in c["detail"] for c in found)

    assert not reported(cards(tokyo, body))
    assert reported(cards(new_york, body))


def test_12_site_time_zone_decides_the_planned_date_of_an_untimed_order(tmp_path: Path) -> None:
    untimed = tarlatamab_order(None, 10)
    late = NOW.replace(day=21, hour=3)  # 2026-11-21 03:00Z = 2026-11-20 22:00 in New York
    utc = Engine(Settings(data_dir=tmp_path, now=late))
    ny = Engine(Settings(data_dir=tmp_path, now=late, site_timezone="America/New_York"))
    body = request(drafts=[untimed], administrations=C1D1_GIVEN)
    in_utc = rule_cards(cards(utc, body), "monitoring.schedule")[0]["detail"]
    in_ny = rule_cards(cards(ny, body), "monitoring.schedule")[0]["detail"]
    assert "2026-11-21" in in_utc and "2026-11-20" in in_ny


def test_12_duplicate_drafts_for_the_same_date(engine: Engine) -> None:
    drafts = [tarlatamab_order(PLANNED, 10, oid="first"), tarlatamab_order("2026-11-21T14:00:00Z", 10, oid="second")]
    found = cards(engine, request(drafts=drafts, administrations=C1D1_GIVEN))
    (duplicate,) = rule_cards(found, "schedule.duplicate-order")
    assert duplicate["indicator"] == "critical"
    (action,) = duplicate["suggestions"][0]["actions"]
    assert action == {"type": "delete", "description": action["description"], "resourceId": "MedicationRequest/second"}


# === section 13 ======================================================================================
def test_13_1_premedication_coverage_route_strength_volume(engine: Engine) -> None:
    def run(companions: list[dict[str, Any]], drafts: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
        return cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10), *drafts], medications=companions,
                                     administrations=C1D1_GIVEN))  # fmt: skip

    leftover = dexamethasone_order("2026-11-14T08:00:00Z", oid="dexa-c1d1", status="active")
    assert rule_cards(run([leftover]), "premedication.dexamethasone-missing")
    untimed = dexamethasone_order(None, oid="dexa-untimed", status="active")
    untimed["authoredOn"] = "2026-11-20T16:00:00Z"  # the day before the dose
    assert not rule_cards(run([untimed]), "premedication.dexamethasone-missing")
    untimed["authoredOn"] = "2026-11-18T16:00:00Z"  # three days before: a leftover
    assert rule_cards(run([untimed]), "premedication.dexamethasone-missing")

    oral = dexamethasone_order("2026-11-21T09:00:00Z")
    oral["dosageInstruction"][0]["route"] = {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]}
    (route,) = rule_cards(run([], [oral]), "premedication.dexamethasone-route")
    assert "ordered by the oral route" in route["summary"]
    hypertonic = saline_order("2026-11-21T11:00:00Z")
    hypertonic["medicationCodeableConcept"]["text"] = "sodium chloride 3% injection 500 mL"
    (strength,) = rule_cards(run([], [hypertonic]), "hydration.saline-strength")
    assert "3%" in strength["summary"]
    subcutaneous = saline_order("2026-11-21T11:00:00Z")
    subcutaneous["dosageInstruction"][0]["route"] = {"text": "subcutaneous"}
    assert rule_cards(run([], [subcutaneous]), "hydration.saline-route")
    half_litre = saline_order("2026-11-21T11:00:00Z", 500)
    assert rule_cards(run([], [half_litre]), "hydration.saline-volume")


def test_13_17_premedication_without_a_route_is_accepted_when_the_dose_is_right(engine: Engine) -> None:
    no_route = dexamethasone_order("2026-11-21T09:00:00Z")
    del no_route["dosageInstruction"][0]["route"]
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10), no_route], administrations=C1D1_GIVEN))
    assert not [c for c in found if c["source"]["topic"]["code"] == "premedication"]


def test_13_2_escalated_monitoring_only_for_the_next_dose(engine: Engine) -> None:
    crs = [grade_observation("crs-grade", 2, "2026-11-08T10:00:00Z"), grade_observation("crs-grade", 0, "2026-11-10T10:00:00Z")]
    after_c1d15 = [*normal_labs(DRAWN), *crs]
    found = cards(engine, request(administrations=FIRST_CYCLE, observations=after_c1d15))
    (escalated,) = rule_cards(found, "monitoring.escalated")
    assert escalated["indicator"] == "warning"
    later = request(drafts=[tarlatamab_order(PLANNED, 10, oid="c2d1"), tarlatamab_order("2026-12-05T10:00:00Z", 10,
                    oid="c2d15")], administrations=FIRST_CYCLE, observations=after_c1d15)  # fmt: skip
    found = cards(engine, later)
    assert [c["summary"][:4] for c in rule_cards(found, "monitoring.escalated")] == ["C2D1"]
    at_c1d8 = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), *[
        grade_observation("crs-grade", 2, "2026-11-15T10:00:00Z"), grade_observation("crs-grade", 0, "2026-11-16T10:00:00Z")]]))  # fmt: skip
    (plain,) = rule_cards(at_c1d8, "monitoring.schedule")
    assert plain["indicator"] == "info" and "after the last dose" in plain["detail"]


def test_13_3_ice_and_recorded_icans_grade_are_separate_series(engine: Engine) -> None:
    recorded = [grade_observation("icans-grade", 2, "2026-11-16T10:00:00Z"),
                grade_observation("ice-score", 10, "2026-11-18T10:00:00Z", oid="ice-ten")]  # fmt: skip
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), *recorded]))
    (active,) = rule_cards(found, "neurotox.grade1-2-active")  # a later ICE 10 does not resolve a recorded grade
    assert "Observation/ice-ten" in active["detail"]  # the card names the ICE result
    ice_only = [grade_observation("ice-score", 5, "2026-11-16T10:00:00Z"), grade_observation("ice-score", 10, "2026-11-18T10:00:00Z")]
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), *ice_only]))
    assert not rule_cards(found, "neurotox.grade1-2-active")
    invalid = [grade_observation("ice-score", 11, "2026-11-18T10:00:00Z", oid="ice-11")]
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), *invalid]))
    assert any("Observation/ice-11" in c["detail"] and c["indicator"] == "warning"
               for c in rule_cards(found, "data-quality.unusable"))  # fmt: skip


def test_13_4_condition_and_grade_observations_of_one_event_are_one_episode(engine: Engine) -> None:
    event = [
        grade_observation("crs-grade", 3, "2026-10-02T10:00:00Z"),
        grade_observation("crs-grade", 1, "2026-10-03T10:00:00Z"),
    ]
    coded = crs_condition(3, "2026-10-02T08:00:00Z", clinical_status="resolved")
    coded["recordedDate"] = "2026-10-06"
    body = request(administrations=FIRST_CYCLE, observations=[*normal_labs(DRAWN), *event], conditions=[coded])
    assert not rule_cards(cards(engine, body), "crs.grade3-recurrent")
    second = [*event, grade_observation("crs-grade", 0, "2026-10-05T10:00:00Z"),
              grade_observation("crs-grade", 3, "2026-10-20T10:00:00Z"), grade_observation("crs-grade", 0, "2026-10-22T10:00:00Z")]  # fmt: skip
    body = request(administrations=FIRST_CYCLE, observations=[*normal_labs(DRAWN), *second])
    assert rule_cards(cards(engine, body), "crs.grade3-recurrent")


def test_13_6_grade4_liver_result_after_the_first_dose_persists(engine: Engine) -> None:
    old_grade4 = lab("alt", 900, "2026-11-12T08:00:00Z")  # 22.5 x ULN, nine days ago, after C1D1
    body = request(administrations=FIRST_CYCLE, observations=[old_grade4, *normal_labs(DRAWN)])
    assert rule_cards(cards(engine, body), "lab-hold.hepatotoxicity-grade4")
    hys = [lab("alt", 140, "2026-11-12T08:00:00Z"), lab("bilirubin", 2.6, "2026-11-12T08:00:00Z")]
    body = request(administrations=FIRST_CYCLE, observations=[*hys, *normal_labs(DRAWN)])
    assert rule_cards(cards(engine, body), "lab-hold.hys-law")


def test_13_6_grade3_after_the_last_dose_holds_until_resume_thresholds_are_met(engine: Engine) -> None:
    grade3 = lab("ast", 230, "2026-11-10T08:00:00Z")  # 5.75 x ULN after C1D15 (2026-11-07)
    only_alt = [lab("alt", 30, DRAWN)]  # a later ALT alone does not show AST and bilirubin back
    body = request(administrations=FIRST_CYCLE, observations=[grade3, *only_alt])
    assert rule_cards(cards(engine, body), "lab-hold.hepatotoxicity-grade3")
    recovered = normal_labs(DRAWN)
    body = request(administrations=FIRST_CYCLE, observations=[grade3, *recovered])
    assert not rule_cards(cards(engine, body), "lab-hold.hepatotoxicity-grade3")
    still_high = normal_labs(DRAWN, ast=130)  # 3.25 x ULN: below Grade 3, above the resume threshold (3 x)
    body = request(administrations=FIRST_CYCLE, observations=[grade3, *still_high])
    assert rule_cards(cards(engine, body), "lab-hold.hepatotoxicity-grade3")


def test_13_16_liver_results_before_the_first_dose_hold_never_discontinue(engine: Engine) -> None:
    pre_treatment = normal_labs(DRAWN, alt=900)
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], observations=pre_treatment))
    assert rule_cards(found, "lab-hold.hepatotoxicity-grade3")
    assert not rule_cards(found, "lab-hold.hepatotoxicity-grade4")
    earlier = [lab("alt", 900, "2026-11-10T08:00:00Z"), *normal_labs(DRAWN)]
    assert not rule_cards(cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], observations=earlier)),
                          "lab-hold.hepatotoxicity-grade4")  # fmt: skip


@pytest.mark.parametrize(
    ("gender", "birth", "cards_expected"),
    [("male", "1961-04-12", False), ("other", "1990-01-01", False), ("female", "1990-01-01", True),
     ("unknown", "1990-01-01", True), (None, "1990-01-01", True), ("female", "1966-01-01", False),
     ("female", "2014-11-22", False), ("female", "2014-11-21", True)],
)  # fmt: skip
def test_13_7_pregnancy_checks_only_for_female_unknown_or_absent_aged_12_to_55(
    engine: Engine, gender: str | None, birth: str, cards_expected: bool
) -> None:
    person = patient(gender="female", birth_date=birth)
    if gender is None:
        del person["gender"]
    else:
        person["gender"] = gender
    positive = hcg_urine(True, "2026-11-20T08:00:00Z")
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=person,
                                  observations=[*normal_labs(DRAWN), positive]))  # fmt: skip
    assert bool(rule_cards(found, "pregnancy.pregnant")) is cards_expected


def test_13_7_active_pregnancy_condition_contradicted_by_a_newer_negative_test_is_reconcile(engine: Engine) -> None:
    woman = patient(gender="female", birth_date="1990-03-02")
    pregnancy = condition(SNOMED, "77386006", "Pregnant", "2026-09-01")
    negative = hcg_urine(False, "2026-11-20T08:00:00Z")
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=woman,
                                  conditions=[pregnancy], observations=[*normal_labs(DRAWN), negative]))  # fmt: skip
    (reconcile,) = rule_cards(found, "pregnancy.reconcile")
    assert reconcile["indicator"] == "warning" and not rule_cards(found, "pregnancy.pregnant")


def test_13_9_patient_view_reports_every_hold_that_applies_now(engine: Engine) -> None:
    # Last dose C1D1 on 2026-11-20: the next dose (C1D8) is 6 days away; ANC is low today.
    given = history(("2026-11-20T09:00:00Z", 1))
    body = request(hook="patient-view", administrations=given,
                   observations=[*normal_labs("2026-11-19T08:00:00Z"), lab("anc", 0.5, "2026-11-21T07:00:00Z")])  # fmt: skip
    (summary,) = [c for c in cards(engine, body, VIEW) if c["source"]["topic"]["code"] == "summary"]
    assert summary["indicator"] == "critical" and "ANC" in summary["detail"]


def test_13_10_anemia_is_a_lab_hold_warning(engine: Engine, protocol: Protocol) -> None:
    rule = protocol.rule("lab-hold.hemoglobin")
    assert (rule.topic, rule.indicator) == ("lab-hold", "warning")
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=normal_labs(DRAWN, hemoglobin=7.9)))
    assert topics(rule_cards(found, "lab-hold.hemoglobin")) == [("lab-hold", "warning")]


@pytest.mark.parametrize(
    ("drawn", "counts"),
    [("2026-11-18T23:30:00-05:00", True),   # local date 11-18 = planned - 3 (UTC 11-19)
     ("2026-11-17T23:30:00-05:00", False),  # local date 11-17 (UTC already 11-18): outside the window
     ("2026-11-18", True)],
)  # fmt: skip
def test_13_11_lab_window_by_local_date(engine: Engine, drawn: str, counts: bool) -> None:
    observations = normal_labs(drawn)
    for obs in observations:
        obs.pop("issued")  # an instant needs a time: the builder copies the date-time
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=observations))
    assert bool(rule_cards(found, "labs.missing")) is not counts


def test_13_12_drafts_judged_in_planned_date_order(engine: Engine) -> None:
    drafts = [
        tarlatamab_order("2026-11-28T10:00:00Z", 10, oid="c1d8"),
        tarlatamab_order(PLANNED, 1, oid="c1d1"),
        dexamethasone_order("2026-11-21T09:00:00Z", oid="dexa-1"), saline_order("2026-11-21T12:00:00Z", oid="nacl-1"),
        dexamethasone_order("2026-11-28T09:00:00Z", oid="dexa-8"), saline_order("2026-11-28T12:00:00Z", oid="nacl-8"),
    ]  # fmt: skip
    found = cards(engine, request(drafts=drafts))
    assert not [c for c in found if c["source"]["topic"]["code"] in ("dose", "schedule", "premedication", "hydration")]


def test_13_13_product_does_not_match_the_dose(engine: Engine) -> None:
    on_small_kit = tarlatamab_order(PLANNED, 10)
    on_small_kit["medicationCodeableConcept"] = copy.deepcopy(C1D1_KIT_11)
    (mismatch,) = rule_cards(cards(engine, request(drafts=[on_small_kit], administrations=C1D1_GIVEN)),
                             "dose.product-mismatch")  # fmt: skip
    assert mismatch["indicator"] == "warning" and "1 mg kit" in mismatch["summary"]
    assert not rule_cards(cards(engine, request(administrations=C1D1_GIVEN)), "dose.product-mismatch")


def test_13_14_crs_grade3_restart_is_a_protocol_setting(tmp_path: Path, protocol: Protocol) -> None:
    crs = [grade_observation("crs-grade", 3, "2026-11-09T10:00:00Z"), grade_observation("crs-grade", 0, "2026-11-12T10:00:00Z")]
    body = request(administrations=FIRST_CYCLE, observations=[*normal_labs(DRAWN), *crs])
    assert protocol.section("toxicity")["crs_grade3_restart"] == "step-up"
    default = Engine(Settings(data_dir=tmp_path, now=NOW))
    assert rule_cards(cards(default, body), "dose.restart-after-crs-grade3")
    data = copy.deepcopy(protocol.data)
    data["toxicity"]["crs_grade3_restart"] = "next-scheduled-dose"
    site = Engine(Settings(data_dir=tmp_path, now=NOW))
    site.protocol = parse_protocol(data)
    assert not rule_cards(cards(site, body), "dose.restart-after-crs-grade3")


def test_13_15_patient_view_malformed_record_adds_a_warning_beside_the_one_summary(engine: Engine) -> None:
    broken = lab("anc", 3.0, "2026-11-21T07:00:00Z", oid="anc-newest")
    broken["valueQuantity"]["unit"] = broken["valueQuantity"]["code"] = "cells/hpf"  # not convertible
    body = request(hook="patient-view", administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), broken])
    found = cards(engine, body, VIEW)
    assert len([c for c in found if c["source"]["topic"]["code"] == "summary"]) == 1
    assert any(c["indicator"] == "warning" and "Observation/anc-newest" in c["detail"]
               for c in found if c["source"]["topic"]["code"] == "data-quality")  # fmt: skip


def _iter_rules() -> Iterator[str]:  # the rules this file adds (named so the meta-test sees them)
    yield from ("dose.product-mismatch", "schedule.duplicate-order", "premedication.dexamethasone-route",
                "hydration.saline-route", "hydration.saline-strength", "pregnancy.reconcile",
                "data-quality.draft-order", "data-quality.lab-limit")  # fmt: skip


def test_new_rules_have_protocol_entries_and_wording(protocol: Protocol) -> None:
    for rule_id in _iter_rules():
        rule = protocol.rule(rule_id)
        assert rule.citation and rule.sources and rule.topic and rule.indicator


def test_12_an_unidentifiable_draft_alone_still_gets_a_data_quality_warning(engine: Engine) -> None:
    unknown = {
        "resourceType": "MedicationRequest",
        "id": "order-unknown",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/pt-sclc-001"},
        "medicationReference": {"reference": "#med-missing"},
    }
    found = cards(engine, request(drafts=[unknown]))
    assert topics(found) == [("data-quality", "warning")]
    assert "MedicationRequest/order-unknown" in found[0]["detail"]
    oral = {**unknown, "medicationCodeableConcept": {"text": "amoxicillin 500 mg capsule"}}
    del oral["medicationReference"]
    assert cards(engine, request(drafts=[oral])) == []  # identified, not tarlatamab: no card


@pytest.mark.parametrize(
    ("status", "reported"),
    [("completed", True), ("in-progress", True), ("stopped", True), ("on-hold", True), ("unknown", True),
     ("not-done", False), ("entered-in-error", False)],
)  # fmt: skip
def test_12_a_given_administration_whose_medication_cannot_be_identified_is_a_warning(
    engine: Engine, status: str, reported: bool
) -> None:
    """A dose given of an unidentifiable medication may be a tarlatamab dose the schedule did not count: a
    completed or stopped administration was given, so it is reported (an order in those statuses is not active)."""
    given = administration("2026-11-14T10:00:00Z", 1, aid="adm-unknown-kit", status=status)
    del given["medicationCodeableConcept"]
    given["medicationReference"] = {"reference": "Medication/kit-not-in-the-record"}
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], administrations=[given]))
    named = [c for c in found if "MedicationAdministration/adm-unknown-kit" in c["detail"]]
    assert bool(named) is reported, [c["summary"] for c in found]
    if reported:
        assert named[0]["source"]["topic"]["code"] == "data-quality" and named[0]["indicator"] == "warning"
        assert "cannot be identified" in named[0]["detail"]


def test_12_an_order_no_longer_active_whose_medication_cannot_be_identified_is_not_reported(engine: Engine) -> None:
    old = tarlatamab_order("2026-10-01T10:00:00Z", 1, oid="old-unknown-order")
    del old["medicationCodeableConcept"]
    old["medicationReference"] = {"reference": "Medication/gone"}
    old["status"] = "completed"
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1), old]))
    assert not [c for c in found if "old-unknown-order" in c["detail"]]


EPIC_ACTIVE = {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.4.698084.10000", "code": "1", "display": "Active"}
HL7_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
HL7_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


@pytest.mark.parametrize(
    ("clinical_status", "held", "warned"),
    [
        # a local status coding first (as EHRs send), the FHIR code second: the FHIR code is read
        ({"coding": [EPIC_ACTIVE, {"system": HL7_CLINICAL, "code": "active"}], "text": "Active"}, True, False),
        ({"coding": [{"code": "relapse"}]}, True, False),  # no system: FHIR's code is still recognised
        # no FHIR clinical status code at all: never read as ended; taken as active and reported
        ({"coding": [{"system": HL7_CLINICAL, "code": "Active"}]}, True, True),
        ({"coding": [EPIC_ACTIVE]}, True, True),
        ({"text": "Active"}, True, True),
        # conflicting FHIR codes: not known to have ended
        ({"coding": [{"system": HL7_CLINICAL, "code": "resolved"}, {"system": HL7_CLINICAL, "code": "active"}]},
         True, False),
        ({"coding": [EPIC_ACTIVE, {"system": HL7_CLINICAL, "code": "resolved"}]}, False, False),
    ],
)  # fmt: skip
def test_12_condition_clinical_status_is_read_from_fhir_codings_never_an_unknown_code_as_resolved(
    engine: Engine, clinical_status: dict[str, Any], held: bool, warned: bool
) -> None:
    crs = crs_condition(1, "2026-11-18T10:00:00Z", cid="crs-episode")
    crs["clinicalStatus"] = clinical_status
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], administrations=C1D1_GIVEN, conditions=[crs]))
    assert bool(rule_cards(found, "crs.active")) is held, [c["summary"] for c in found]
    warnings = [c for c in quality_cards(found) if "Condition/crs-episode" in c["detail"]]
    assert bool(warnings) is warned
    if warned:
        assert "is not a FHIR code: taken as active" in warnings[0]["detail"]


def test_12_condition_without_a_fhir_clinical_status_but_with_an_abatement_has_ended_and_is_reported(
    engine: Engine,
) -> None:
    crs = crs_condition(1, "2026-11-10T10:00:00Z", cid="crs-episode")
    crs["clinicalStatus"] = {"coding": [EPIC_ACTIVE]}
    crs["abatementDateTime"] = "2026-11-12T10:00:00Z"
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], administrations=C1D1_GIVEN, conditions=[crs]))
    assert not rule_cards(found, "crs.active")
    (warning,) = [c for c in quality_cards(found) if "Condition/crs-episode" in c["detail"]]
    assert "is not a FHIR code: taken as ended (abatement recorded)" in warning["detail"]


def test_12_verification_status_entered_in_error_is_read_behind_a_local_coding(engine: Engine) -> None:
    crs = crs_condition(1, "2026-11-18T10:00:00Z", cid="crs-episode")
    crs["verificationStatus"] = {"coding": [EPIC_ACTIVE, {"system": HL7_VERIFICATION, "code": "entered-in-error"}]}
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], administrations=C1D1_GIVEN, conditions=[crs]))
    assert not rule_cards(found, "crs.active")


def test_12_a_pregnancy_condition_with_a_local_status_coding_first_is_still_a_pregnancy(engine: Engine) -> None:
    pregnant = condition(SNOMED, "77386006", "Pregnant", "2026-11-17", cid="preg-1")
    pregnant["clinicalStatus"] = {"coding": [EPIC_ACTIVE, {"system": HL7_CLINICAL, "code": "active"}]}
    woman = patient(gender="female", birth_date="1994-03-02")
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=woman, conditions=[pregnant]))
    assert rule_cards(found, "pregnancy.pregnant"), [c["summary"] for c in found]
    pregnant["clinicalStatus"] = {"text": "Active"}
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=woman, conditions=[pregnant]))
    assert rule_cards(found, "pregnancy.pregnant")
    assert any("Condition/preg-1" in c["detail"] for c in quality_cards(found))


@pytest.mark.parametrize(("event", "shown"), [({"\x10": None}, "an object"), (20261121, "20261121"), (True, "true")])
def test_12_a_planned_time_that_is_not_text_is_named_by_its_kind_never_its_repr(
    engine: Engine, event: Any, shown: str
) -> None:
    order = tarlatamab_order(PLANNED, 10)
    order["dosageInstruction"][0]["timing"] = {"event": [event]}
    text = "\n".join(c["detail"] for c in cards(engine, request(drafts=[order], administrations=C1D1_GIVEN)))
    assert f"The planned administration time '{shown}' has no full date" in text
    assert "x10" not in text and "{" not in text and "None" not in text


def test_12_an_unrecognised_breastfeeding_answer_is_reported_never_read_as_no(engine: Engine) -> None:
    woman = patient(gender="female", birth_date="1994-03-02")
    answer = breastfeeding("2026-11-19T08:00:00Z")
    answer["id"] = "bf-1"
    answer["valueCodeableConcept"]["coding"][0]["code"] = "LA-unknown"
    found = cards(engine, request(patient_resource=woman, administrations=C1D1_GIVEN, observations=[
        *normal_labs(DRAWN), pregnancy_status(False, DRAWN), answer]))
    assert any("Observation/bf-1" in c["detail"] for c in quality_cards(found)), [c["summary"] for c in found]
    answer["valueCodeableConcept"]["coding"][0]["code"] = "LA29253-4"  # not currently breastfeeding
    found = cards(engine, request(patient_resource=woman, administrations=C1D1_GIVEN, observations=[
        *normal_labs(DRAWN), pregnancy_status(False, DRAWN), answer]))
    assert not quality_cards(found) and not rule_cards(found, "lactation.breastfeeding")


@pytest.mark.parametrize("concept", [{}, {"coding": []}, {"text": " "}], ids=repr)
def test_12_a_draft_with_an_empty_medication_concept_gets_the_identity_warning(engine: Engine, concept: Any) -> None:
    unknown = tarlatamab_order(PLANNED, 10, oid="order-empty-concept")
    unknown["medicationCodeableConcept"] = concept
    found = cards(engine, request(drafts=[unknown]))
    assert topics(found) == [("data-quality", "warning")]
    assert "MedicationRequest/order-empty-concept" in found[0]["detail"]


@pytest.mark.parametrize("gender", ["F", "Female", "NaN"])
def test_12_a_gender_that_is_not_a_fhir_code_is_read_as_unknown_so_the_pregnancy_check_applies(
    engine: Engine, gender: str
) -> None:
    person = patient(gender="female", birth_date="1990-02-02")
    person["gender"] = gender
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=person, observations=[
        *normal_labs(DRAWN), pregnancy_status(True, DRAWN)]))
    assert rule_cards(found, "pregnancy.pregnant"), [c["summary"] for c in found]
    assert any("not a FHIR gender code" in c["detail"] for c in quality_cards(found))


def test_12_a_birth_date_in_the_future_gives_no_age(engine: Engine) -> None:
    person = patient(gender="female", birth_date="2030-01-01")
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=person))
    text = "\n".join(f"{c['summary']}\n{c['detail']}" for c in found)
    assert "-4" not in text and "years old" not in text
    assert any("2030-01-01" in c["detail"] and "age could not be determined" in c["detail"] for c in quality_cards(found))


def test_12_a_malformed_element_the_anc_hold_never_reads_keeps_the_hold_in_patient_view(engine: Engine) -> None:
    low = lab("anc", 0.4, "2026-11-21T07:00:00Z", oid="anc-low")
    low["referenceRange"] = {"low": {"value": 1.8}}  # an object, not a list: the ANC threshold is absolute
    low["interpretation"] = {"text": "L"}
    body = request(hook="patient-view", administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), low])
    (summary,) = [c for c in cards(engine, body, VIEW) if c["source"]["topic"]["code"] == "summary"]
    assert summary["indicator"] == "critical" and "ANC" in summary["detail"]
    alt = lab("alt", 90, DRAWN, oid="alt-odd")
    alt["referenceRange"] = {"high": {"value": 20}}  # the ULN is read for ALT: unusable, reported
    found = cards(engine, request(administrations=C1D1_GIVEN,
                                  observations=[o for o in normal_labs(DRAWN) if o["code"]["coding"][0]["code"] != "1742-6"] + [alt]))  # fmt: skip
    assert any("Observation/alt-odd" in c["detail"] for c in found if c["source"]["topic"]["code"] == "data-quality")


def test_12_liver_and_egfr_limits_decide_only_when_the_bound_does(engine: Engine) -> None:
    alt = comparator_lab("alt", "<", 500)  # could be 12.5 x ULN
    others = [o for o in normal_labs(DRAWN) if o["code"]["coding"][0]["code"] != "1742-6"]
    (limit,) = rule_cards(cards(engine, request(administrations=C1D1_GIVEN, observations=[*others, alt])),
                          "data-quality.lab-limit")  # fmt: skip
    assert "ALT" in limit["summary"]
    low_enough = comparator_lab("alt", "<", 100)  # at most 2.5 x ULN: decides "not Grade 3"
    assert not rule_cards(cards(engine, request(administrations=C1D1_GIVEN, observations=[*others, low_enough])),
                          "data-quality.lab-limit")  # fmt: skip
    egfr = lab("egfr", 90, DRAWN)
    egfr["valueQuantity"]["comparator"] = ">"
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), egfr]))
    assert not rule_cards(found, "organ-function.renal")
    severe = lab("egfr", 15, DRAWN)
    severe["valueQuantity"]["comparator"] = "<"
    found = cards(engine, request(administrations=C1D1_GIVEN, observations=[*normal_labs(DRAWN), severe]))
    assert rule_cards(found, "organ-function.renal")


@pytest.mark.parametrize(("birth", "applies"), [("1971-11-21", True), ("1970-11-21", False)])  # 55 / 56 on 11-21
def test_13_7_pregnancy_age_boundary_55(engine: Engine, birth: str, applies: bool) -> None:
    woman = patient(gender="female", birth_date=birth)
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 1)], patient_resource=woman))
    assert bool(rule_cards(found, "pregnancy.status-unknown")) is applies


def test_12_split_records_without_dosage_on_one_kit_are_one_1mg_dose(engine: Engine) -> None:
    parts = [administration("2026-11-14T09:00:00Z", 1, aid="a"), administration("2026-11-14T11:00:00Z", 1, aid="b")]
    for part in parts:
        del part["dosage"]["dose"]
    found = cards(engine, request(drafts=[tarlatamab_order(PLANNED, 10)], administrations=parts))
    assert rule_cards(found, "monitoring.schedule")[0]["summary"].startswith("C1D8")
    assert not rule_cards(found, "data-quality.dose-history")
