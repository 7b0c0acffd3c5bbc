"""Clinical facts from realistic FHIR: lab selection and units, toxicity episodes, pregnancy, conditions."""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import Any

import pytest
from conftest import NOW
from fhir_builders import (
    ICD10,
    LOCAL,
    SNOMED,
    breastfeeding,
    condition,
    crs_condition,
    grade_observation,
    hcg_quantitative,
    hcg_urine,
    icans_condition,
    lab,
    normal_labs,
    patient,
    pregnancy_status,
    sclc_condition,
)

from cds_service.facts.build import ClinicalFacts, build_clinical_facts
from cds_service.protocol import Protocol
from cds_service.reading.dates import local_date


def build(
    protocol: Protocol,
    observations: list[dict[str, Any]] = (),  # type: ignore[assignment]
    conditions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    patient_resource: dict[str, Any] | None = None,
) -> ClinicalFacts:
    resources = {
        "patient": [patient_resource or patient()],
        "observations": list(observations),
        "conditions": list(conditions),
    }
    return build_clinical_facts(resources, protocol, NOW)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- dates -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected_date"),
    [
        ("2026-11-20", date(2026, 11, 20)),
        ("2026-11-20T23:30:00-05:00", date(2026, 11, 20)),  # the calendar date as written, not the UTC date
        ("2026-11-20T08:00:00Z", date(2026, 11, 20)),
        ("2026-11-20T08:00:00.123+01:00", date(2026, 11, 20)),
        ("2026-11", None),
        ("2026", None),
        ("20/11/2026", None),
        ("2026-02-30", None),
        (None, None),
    ],
)
def test_fhir_dates(text: str | None, expected_date: date | None) -> None:
    assert local_date(text) == expected_date


# --- patient -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("birth_date", "expected", "issue"),
    [("1961-04-12", date(1961, 4, 12), False), ("1961", None, True), ("1961-04", None, True), (None, None, True)],
)
def test_birth_date(protocol: Protocol, birth_date: str | None, expected: date | None, issue: bool) -> None:
    facts = build(protocol, patient_resource=patient(gender="female", birth_date=birth_date))
    assert facts.birth_date == expected
    assert facts.gender == "female"
    age_issues = [i for i in facts.issues if i.affects == "age"]
    assert bool(age_issues) is issue
    if issue:
        assert age_issues[0].kind == "unusable" and age_issues[0].element == "birthDate"


# --- laboratory results ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "present", "usable"),
    [
        ("final", True, True),
        ("amended", True, True),
        ("corrected", True, True),
        ("preliminary", True, True),  # section 12: usable to raise a finding, flagged preliminary
        ("unknown", False, False),  # section 12: not a result
        ("cancelled", False, False),
        ("entered-in-error", False, False),
        ("registered", False, False),
    ],
)
def test_lab_status(protocol: Protocol, status: str, present: bool, usable: bool) -> None:
    facts = build(protocol, [lab("anc", 2.0, "2026-11-20T08:00:00Z", status=status, oid="anc-1")])
    results = facts.labs["anc"]
    assert bool(results) is present
    if present:
        assert results[0].usable is usable
        assert results[0].final is (status != "preliminary")
        assert any(i.reference == "Observation/anc-1" for i in facts.issues) is not usable


def test_lab_values_converted_with_reference_range_uln(protocol: Protocol) -> None:
    bili = lab("bilirubin", 61.6, "2026-11-20T08:00:00Z", unit="umol/L", ref_high=20.5, oid="bili-1")
    facts = build(protocol, [bili])
    result = facts.labs["bilirubin"][0]
    assert result.value == pytest.approx(61.6 / 17.1, rel=1e-6)
    assert result.uln == pytest.approx(20.5 / 17.1, rel=1e-6)
    assert result.uln_source == "reference range"
    assert result.unit == "mg/dL" and result.raw_unit == "umol/L" and result.raw_value == "61.6"


def test_uln_default_when_no_reference_range(protocol: Protocol) -> None:
    facts = build(protocol, [lab("alt", 3.0, "2026-11-20T08:00:00Z", unit="ukat/L", ref_high=None)])
    result = facts.labs["alt"][0]
    assert result.value == pytest.approx(180.0)
    assert (result.uln, result.uln_source) == (40.0, "default")


def test_reference_range_without_unit_is_in_the_result_unit(protocol: Protocol) -> None:
    obs = lab("bilirubin", 30, "2026-11-20T08:00:00Z", unit="umol/L", ref_high=None)
    obs["referenceRange"] = [{"high": {"value": 21}}]
    result = build(protocol, [obs]).labs["bilirubin"][0]
    assert result.uln == pytest.approx(21 / 17.1, rel=1e-6)


@pytest.mark.parametrize(
    ("mutate", "element", "why"),
    [
        (lambda o: o["valueQuantity"].update(unit="cells", code="cells"), "valueQuantity.code", "cannot be converted"),
        (lambda o: o.pop("valueQuantity"), "value[x]", "no value"),
        (lambda o: o["valueQuantity"].update(comparator="~"), "valueQuantity.comparator", "comparator"),
    ],
)
def test_unusable_lab_is_kept_and_reported(protocol: Protocol, mutate: Any, element: str, why: str) -> None:
    obs = lab("anc", 0.4, "2026-11-20T08:00:00Z", oid="anc-bad")
    mutate(obs)
    facts = build(protocol, [obs])
    result = facts.labs["anc"][0]
    assert result.value is None and not result.usable and why in (result.problem or "")
    issue = next(i for i in facts.issues if i.reference == "Observation/anc-bad")
    assert (issue.kind, issue.element, issue.affects) == ("unusable", element, "ANC")


def test_data_absent_reason_is_unusable(protocol: Protocol) -> None:
    facts = build(protocol, [lab("platelets", None, "2026-11-20T08:00:00Z", oid="plt-1")])
    result = facts.labs["platelets"][0]
    assert result.value is None and "data absent" in (result.problem or "")
    assert any(i.element == "dataAbsentReason" for i in facts.issues)


def test_invalid_fhir_result_is_unusable_naming_the_element(protocol: Protocol) -> None:
    obs = lab("alt", 30, "2026-11-20T08:00:00Z", oid="anc-invalid")
    obs["referenceRange"] = {"high": {"value": 40}}  # must be a list: the ALT rules read the ULN from it
    facts = build(protocol, [obs])
    result = facts.labs["alt"][0]
    assert not result.usable and "invalid FHIR" in (result.problem or "")
    issue = next(i for i in facts.issues if i.reference == "Observation/anc-invalid")
    assert issue.element is not None and "referenceRange" in issue.element


def test_invalid_element_no_rule_reads_never_drops_a_result(protocol: Protocol) -> None:
    # Section 12, validation scope: `subject` as a string and `category` as an object are never read.
    obs = lab("anc", 0.4, "2026-11-20T08:00:00Z", oid="anc-odd")
    obs["subject"] = "Patient/pt-sclc-001"
    obs["category"] = {"text": "laboratory"}
    facts = build(protocol, [obs])
    assert facts.labs["anc"][0].usable and facts.labs["anc"][0].value == 0.4
    assert not [i for i in facts.issues if i.reference == "Observation/anc-odd"]


def test_undated_result_is_reported(protocol: Protocol) -> None:
    obs = lab("anc", 2.0, "2026-11", oid="anc-undated")
    obs.pop("issued")
    facts = build(protocol, [obs])
    assert facts.labs["anc"] == ()
    assert any(i.reference == "Observation/anc-undated" and i.element == "effectiveDateTime" for i in facts.issues)


def test_effective_period_and_issued(protocol: Protocol) -> None:
    by_period = lab("anc", 2.0, "2026-11-19T08:00:00Z", oid="p")
    by_period["effectivePeriod"] = {"start": by_period.pop("effectiveDateTime")}
    by_issued = lab("anc", 2.1, "2026-11-20T08:00:00Z", oid="i")
    by_issued.pop("effectiveDateTime")
    [period_result] = build(protocol, [by_period]).labs["anc"]
    assert (period_result.observation_id, period_result.local_date) == ("p", date(2026, 11, 19))
    [issued_result] = build(protocol, [by_issued]).labs["anc"]
    assert (issued_result.observation_id, issued_result.local_date) == ("i", date(2026, 11, 20))
    # Both together: the newer one (by issued) is the one read; the older is never needed.
    assert [r.observation_id for r in build(protocol, [by_period, by_issued]).labs["anc"]] == ["i"]


def test_results_are_read_down_to_the_newest_usable_one(protocol: Protocol) -> None:
    newest_bad_unit = lab("anc", 2.0, "2026-11-20T08:00:00Z", oid="bad", unit="cells")
    usable = lab("anc", 2.1, "2026-11-19T08:00:00Z", oid="ok")
    older = lab("anc", 0.5, "2026-11-10T08:00:00Z", oid="old")
    results = build(protocol, [older, usable, newest_bad_unit]).labs["anc"]
    assert [r.observation_id for r in results] == ["bad", "ok"]
    assert results[0].problem is not None and results[1].usable


def test_newest_first_and_only_newest_results_are_checked(protocol: Protocol) -> None:
    old_bad = lab("anc", 1.0, "2026-10-01T08:00:00Z", unit="cells", oid="old-bad")
    newest = lab("anc", 2.0, "2026-11-20T08:00:00Z", oid="newest")
    middle = lab("anc", 1.5, "2026-11-10T08:00:00Z", oid="middle")
    facts = build(protocol, [old_bad, newest, middle])
    # Read down to the newest usable result; the older ones are never read (no conversion, no card).
    assert [r.observation_id for r in facts.labs["anc"]] == ["newest"]
    assert not [i for i in facts.issues if i.reference == "Observation/old-bad"]


def test_hundreds_of_observations_stay_fast(protocol: Protocol) -> None:
    observations = []
    for day in range(1, 29):
        for hour in range(0, 24, 3):
            observations.extend(normal_labs(f"2026-10-{day:02d}T{hour:02d}:00:00Z"))
    assert len(observations) > 1000
    started = time.perf_counter()
    facts = build(protocol, observations)
    elapsed = time.perf_counter() - started
    [newest] = facts.labs["anc"]
    assert newest.local_date.isoformat() == "2026-10-28" and newest.usable
    assert elapsed < 0.25  # selection is cheap dict work; only the newest results are converted


# --- toxicity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("resource", "kind", "grade", "active", "unspecified"),
    [
        (crs_condition(1, "2026-11-18T10:00:00Z"), "crs", 1, True, False),
        (crs_condition(2, "2026-11-18T10:00:00Z", abatement="2026-11-19T10:00:00Z"), "crs", 2, False, False),
        (crs_condition(2, "2026-11-18T10:00:00Z", clinical_status="resolved"), "crs", 2, False, False),
        (crs_condition(3, "2026-11-18T10:00:00Z", clinical_status="recurrence"), "crs", 3, True, False),
        (crs_condition(4, "2026-11-18T10:00:00Z", clinical_status="inactive"), "crs", 4, False, False),
        (crs_condition(5, "2026-11-18T10:00:00Z"), "crs", 5, True, False),
        (crs_condition(None, "2026-11-18T10:00:00Z"), "crs", 3, True, True),
        (icans_condition(1, "2026-11-18T10:00:00Z"), "icans", 1, True, False),
        (icans_condition(3, "2026-11-18T10:00:00Z", clinical_status="relapse"), "icans", 3, True, False),
        (icans_condition(None, "2026-11-18T10:00:00Z"), "icans", 3, True, True),
    ],
)
def test_toxicity_conditions(
    protocol: Protocol, resource: dict, kind: str, grade: int, active: bool, unspecified: bool
) -> None:
    facts = build(protocol, conditions=[resource])
    (episode,) = facts.episodes
    assert (episode.kind, episode.grade, episode.active, episode.unspecified) == (kind, grade, active, unspecified)
    assert episode.onset == at("2026-11-18T10:00:00Z")
    assert facts.toxicity_points[0].source == "condition"


def test_refuted_condition_never_counts(protocol: Protocol) -> None:
    cond = crs_condition(4, "2026-11-18T10:00:00Z")
    cond["verificationStatus"]["coding"][0]["code"] = "entered-in-error"
    assert build(protocol, conditions=[cond]).episodes == ()


def test_abatement_date_resolves_condition(protocol: Protocol) -> None:
    facts = build(protocol, conditions=[icans_condition(3, "2026-11-10T10:00:00Z", abatement="2026-11-13T08:00:00Z")])
    (episode,) = facts.episodes
    assert not episode.active
    assert episode.resolved_at == episode.improved_at == at("2026-11-13T08:00:00Z")


@pytest.mark.parametrize(
    ("score", "grade"),
    [(10, 0), (9, 1), (7, 1), (6, 2), (3, 2), (2, 3), (0, 3)],
)
def test_ice_score_maps_to_icans_grade(protocol: Protocol, score: int, grade: int) -> None:
    facts = build(protocol, [grade_observation("ice-score", score, "2026-11-20T08:00:00Z")])
    (point,) = facts.toxicity_points
    assert (point.kind, point.grade, point.ice_score, point.source) == ("icans", grade, score, "ice-score")
    assert [e.grade for e in facts.episodes] == ([grade] if grade else [])


@pytest.mark.parametrize(
    ("code", "value"), [("ice-score", 11), ("ice-score", -1), ("crs-grade", 5), ("icans-grade", -1)]
)
def test_out_of_range_scores_are_invalid_data(protocol: Protocol, code: str, value: int) -> None:
    facts = build(protocol, [grade_observation(code, value, "2026-11-20T08:00:00Z", oid="bad-score")])
    assert facts.toxicity_points == () and facts.episodes == ()
    issue = next(i for i in facts.issues if i.reference == "Observation/bad-score")
    assert issue.kind == "unusable" and issue.element == "valueInteger"


def test_recorded_icans_grade_takes_precedence_over_ice_at_the_same_time(protocol: Protocol) -> None:
    when = "2026-11-20T08:00:00Z"
    facts = build(protocol, [grade_observation("ice-score", 2, when), grade_observation("icans-grade", 1, when)])
    # Section 13.3: separate series; the recorded grade decides the episode (7.1: it takes precedence).
    assert sorted((p.source, p.grade) for p in facts.toxicity_points) == [("grade-observation", 1), ("ice-score", 3)]
    (episode,) = facts.episodes
    assert episode.grade == 1


def test_observation_series_form_episodes_separated_by_zero(protocol: Protocol) -> None:
    series = [
        grade_observation("crs-grade", 2, "2026-10-01T10:00:00Z"),
        grade_observation("crs-grade", 3, "2026-10-01T18:00:00Z"),
        grade_observation("crs-grade", 1, "2026-10-02T10:00:00Z"),
        grade_observation("crs-grade", 0, "2026-10-03T10:00:00Z"),
        grade_observation("crs-grade", 3, "2026-11-15T10:00:00Z"),
    ]
    first, second = build(protocol, series).episodes
    assert (first.grade, first.active, first.onset) == (3, False, at("2026-10-01T10:00:00Z"))
    assert first.improved_at == at("2026-10-02T10:00:00Z")
    assert first.resolved_at == at("2026-10-03T10:00:00Z")
    assert (second.grade, second.active, second.resolved_at) == (3, True, None)


def test_series_without_zero_is_one_active_episode(protocol: Protocol) -> None:
    series = [
        grade_observation("icans-grade", 3, "2026-11-10T10:00:00Z"),
        grade_observation("icans-grade", 2, "2026-11-12T10:00:00Z"),
        grade_observation("icans-grade", 3, "2026-11-13T10:00:00Z"),
    ]
    (episode,) = build(protocol, series).episodes
    assert episode.active and episode.grade == 3
    assert episode.improved_at is None  # worsened back to the peak: the earlier improvement did not hold


def test_condition_and_observations_of_one_event_are_one_episode(protocol: Protocol) -> None:
    facts = build(
        protocol,
        [
            grade_observation("icans-grade", 3, "2026-11-10T10:00:00Z"),
            grade_observation("ice-score", 8, "2026-11-12T10:00:00Z"),
            grade_observation("ice-score", 10, "2026-11-13T10:00:00Z"),
        ],
        [icans_condition(3, "2026-11-10T09:00:00Z", abatement="2026-11-13T12:00:00Z")],
    )
    (episode,) = facts.episodes
    assert episode.grade == 3 and not episode.active
    assert episode.onset == at("2026-11-10T09:00:00Z")
    assert episode.improved_at == at("2026-11-12T10:00:00Z")
    assert len(episode.references) == 4


def test_unspecified_grade_superseded_by_a_graded_record_of_the_same_event(protocol: Protocol) -> None:
    facts = build(
        protocol,
        [grade_observation("crs-grade", 1, "2026-11-19T10:00:00Z")],
        [crs_condition(None, "2026-11-19T08:00:00Z")],
    )
    (episode,) = facts.episodes
    assert (episode.grade, episode.unspecified, episode.active) == (1, False, True)


def test_preliminary_grade_raises_but_never_clears(protocol: Protocol) -> None:
    # Section 12: a preliminary grade may raise a finding; a preliminary grade 0 never resolves one.
    obs = grade_observation("crs-grade", 2, "2026-11-20T08:00:00Z", oid="crs-pre")
    obs["status"] = "preliminary"
    (episode,) = build(protocol, [obs]).episodes
    assert episode.active and episode.grade == 2 and episode.preliminary
    final = grade_observation("crs-grade", 3, "2026-11-18T08:00:00Z", oid="crs-final")
    zero = grade_observation("crs-grade", 0, "2026-11-20T08:00:00Z", oid="crs-zero")
    zero["status"] = "preliminary"
    (episode,) = build(protocol, [final, zero]).episodes
    assert episode.active and not episode.preliminary


# --- pregnancy, breastfeeding ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("resource", "status"),
    [
        (pregnancy_status(True, "2026-11-20T08:00:00Z"), "pregnant"),
        (pregnancy_status(False, "2026-11-20T08:00:00Z"), "not-pregnant"),
        (hcg_urine(True, "2026-11-20T08:00:00Z"), "pregnant"),
        (hcg_urine(False, "2026-11-20T08:00:00Z"), "not-pregnant"),
        (hcg_quantitative(25, "2026-11-20T08:00:00Z"), "pregnant"),
        (hcg_quantitative(24.9, "2026-11-20T08:00:00Z"), "not-pregnant"),
        (hcg_quantitative(30, "2026-11-20T08:00:00Z", unit="IU/L"), "pregnant"),
        (condition(SNOMED, "77386006", "Pregnant", "2026-11-01"), "pregnant"),
    ],
)
def test_pregnancy_evidence(protocol: Protocol, resource: dict, status: str) -> None:
    facts = build(protocol, *(([], [resource]) if resource["resourceType"] == "Condition" else ([resource],)))
    (evidence,) = facts.pregnancy
    assert evidence.status == status


@pytest.mark.parametrize(
    ("text", "status"), [("Not detected", "not-pregnant"), ("Detected", "pregnant"), ("Negative", "not-pregnant")]
)
def test_hcg_read_from_text(protocol: Protocol, text: str, status: str) -> None:
    obs = hcg_urine(True, "2026-11-20T08:00:00Z")
    obs.pop("interpretation")
    obs["valueCodeableConcept"] = {"text": text}
    assert build(protocol, [obs]).pregnancy[0].status == status


def test_unreadable_hcg_is_reported(protocol: Protocol) -> None:
    obs = hcg_urine(True, "2026-11-20T08:00:00Z")
    obs.pop("interpretation")
    obs["valueCodeableConcept"] = {"text": "see comment"}
    facts = build(protocol, [obs])
    assert facts.pregnancy == ()
    assert any(i.affects == "pregnancy status" for i in facts.issues)


def test_pregnancy_and_breastfeeding_newest_first(protocol: Protocol) -> None:
    facts = build(
        protocol,
        [
            hcg_urine(True, "2026-09-01T08:00:00Z"),
            hcg_urine(False, "2026-11-19T08:00:00Z"),
            breastfeeding("2026-06-01T08:00:00Z", currently=True),
            breastfeeding("2026-11-01T08:00:00Z", currently=False),
        ],
    )
    assert [e.status for e in facts.pregnancy] == ["not-pregnant", "pregnant"]
    assert [b[0] for b in facts.breastfeeding] == [False, True]


# --- diagnoses and infections ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("resource", "is_sclc"),
    [
        (sclc_condition(), True),
        (
            condition(ICD10, "C34.90", "Malignant neoplasm of lung", "2025-12-02", text="Small cell carcinoma, lung"),
            True,
        ),
        (
            condition(ICD10, "C34.11", "Malignant neoplasm of upper lobe", "2025-12-02", text="Adenocarcinoma RUL"),
            False,
        ),
        (condition(SNOMED, "254637007", "Non-small cell lung cancer", "2025-12-02"), False),
    ],
)
def test_sclc_diagnosis(protocol: Protocol, resource: dict, is_sclc: bool) -> None:
    assert bool(build(protocol, conditions=[resource]).sclc_diagnoses) is is_sclc


@pytest.mark.parametrize(
    ("system", "code", "infection"),
    [
        (ICD10, "A41.9", True),
        (ICD10, "A00.0", True),
        (ICD10, "B99.9", True),
        (ICD10, "C00.1", False),
        (ICD10, "J09.X2", True),
        (ICD10, "J18.9", True),
        (ICD10, "J19", False),
        (ICD10, "J85.1", True),
        (ICD10, "J86.9", True),
        (ICD10, "J84.10", False),
        (ICD10, "N39.0", True),
        (ICD10, "N39.3", False),
        (ICD10, "L03.115", True),
        (ICD10, "L02.91", False),
        (SNOMED, "40733004", True),
        (SNOMED, "233604007", True),
        (SNOMED, "254632001", False),
        (LOCAL, "A41.9", False),
    ],
)
def test_infection_value_set(protocol: Protocol, system: str, code: str, infection: bool) -> None:
    cond = condition(system, code, "Condition", "2026-11-18")
    assert bool(build(protocol, conditions=[cond]).active_infections) is infection


@pytest.mark.parametrize(("status", "abatement"), [("resolved", None), ("inactive", None), ("active", "2026-11-19")])
def test_infection_must_be_active(protocol: Protocol, status: str, abatement: str | None) -> None:
    cond = condition(ICD10, "J18.9", "Pneumonia", "2026-11-10", clinical_status=status, abatement=abatement)
    assert build(protocol, conditions=[cond]).active_infections == ()
