"""The lean structure check of the prefetched resources (issue 11, part 2; clinical specification section 12).

The elements the rules read are checked by `cds_service.reading.structure` instead of fhir.resources: every
element read is covered by the tables, everything fhir.resources rejects among those elements is still
rejected (with the same element path), wrong JSON types fhir.resources coerced are now rejected too, and
whatever the rules never read costs nothing and never makes a record unusable.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from fhir_builders import administration, condition, crs_condition, grade_observation, lab, patient

from cds_service import fhir_validation as fv
from cds_service.facts.labs import read_elements
from cds_service.facts.populations import PATIENT_READ_ELEMENTS
from cds_service.protocol import Protocol
from cds_service.reading import administrations as adm_reading
from cds_service.reading import conditions as cond_reading
from cds_service.reading import observations as obs_reading
from cds_service.reading import structure

READ = {
    "Observation": obs_reading.READ_ELEMENTS,
    "Condition": cond_reading.READ_ELEMENTS,
    "MedicationAdministration": adm_reading.READ_ELEMENTS,
    "Patient": PATIENT_READ_ELEMENTS,
}
WHEN = "2026-11-20T08:00:00-05:00"
NDC = "http://hl7.org/fhir/sid/ndc"


def _administration_with_contained_medication() -> dict[str, Any]:
    adm = administration("2026-11-13T09:00:00-05:00")
    adm.pop("medicationCodeableConcept", None)
    adm["contained"] = [
        {"resourceType": "Medication", "id": "med1", "code": {"coding": [{"system": NDC, "code": "55513005901"}]}}
    ]
    adm["medicationReference"] = {"reference": "#med1"}
    return adm


def _panel() -> dict[str, Any]:
    obs = lab("anc", 0.4, WHEN)
    obs["interpretation"] = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "L"}]}
    ]
    return obs


def _date_only_lab() -> dict[str, Any]:
    obs = lab("alt", 30, "2026-11-20")
    obs["issued"] = "2026-11-20T14:02:11.250Z"
    return obs


def _records() -> list[dict[str, Any]]:
    return [
        _panel(),
        _date_only_lab(),
        grade_observation("crs-grade", 2, WHEN),
        crs_condition(3, "2026-11-01", "2026-11-05"),
        condition("http://hl7.org/fhir/sid/icd-10-cm", "C34.90", "Small cell lung cancer", "2025-12-02"),
        _administration_with_contained_medication(),
        patient(),
    ]


@pytest.fixture
def no_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(resource_type: str) -> Any:
        raise AssertionError(f"fhir.resources used for a prefetched {resource_type}")

    monkeypatch.setattr(fv, "model_class", refuse)


def test_every_element_the_rules_read_is_in_the_tables(protocol: Protocol) -> None:
    for rtype, read in READ.items():
        assert set(read) - {"resourceType"} <= set(structure.RESOURCES[rtype]), rtype
    for analyte in ("anc", "alt", "bilirubin", "platelets"):
        assert set(read_elements(analyte, protocol)) - {"resourceType"} <= set(structure.RESOURCES["Observation"])


def test_valid_realistic_records_pass_without_fhir_resources(no_pydantic: None) -> None:
    for record in _records():
        assert fv.first_problem(record, READ[record["resourceType"]]) is None, record["resourceType"]


@pytest.mark.parametrize(
    "written",
    [
        "2026",
        "2026-11",
        "2026-11-20",
        "2026-11-20T08:00:00Z",
        "2026-11-20T08:00:00.123+05:30",
        "2026-11-20T08:00:00-05:00",
        "2016-12-31T23:59:60Z",  # a leap second is legal FHIR
    ],
)
def test_every_legal_dateTime_form_passes(no_pydantic: None, written: str) -> None:
    obs = lab("anc", 2.0, written)
    obs.pop("issued")
    assert fv.first_problem(obs, READ["Observation"]) is None


def _mutated(record: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(record)
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("index", "path", "value", "element", "words"),
    [
        (0, ("status",), 123, "Observation.status", "Expected a string"),
        (0, ("status",), " final", "Observation.status", "code"),
        (0, ("code",), "ANC", "Observation.code", "JSON object"),
        (0, ("code", "coding"), {"system": "http://loinc.org", "code": "751-8"}, "Observation.code.coding", "list"),
        (0, ("code", "coding", 0, "code"), "", "Observation.code.coding[0].code", "empty"),
        (0, ("code", "coding", 0, "vaule"), "x", "Observation.code.coding[0].vaule", "Unknown element"),
        (0, ("effectiveDateTime",), "2026-11-20T08:00:00", "Observation.effectiveDateTime", "time zone"),
        (0, ("effectiveDateTime",), "2026-11-20 08:00:00Z", "Observation.effectiveDateTime", "dateTime"),
        (0, ("effectiveDateTime",), "2026-02-30", "Observation.effectiveDateTime", "dateTime"),
        (0, ("effectiveDateTime",), 20261120, "Observation.effectiveDateTime", "Expected a string"),
        (0, ("issued",), "2026-11-20", "Observation.issued", "instant"),
        (0, ("valueQuantity", "value"), "abc", "Observation.valueQuantity.value", "Expected a number"),
        (0, ("valueQuantity", "value"), "0.4", "Observation.valueQuantity.value", "Expected a number"),
        (0, ("valueQuantity", "value"), True, "Observation.valueQuantity.value", "Expected a number"),
        (0, ("valueQuantity", "comparator"), "~", "Observation.valueQuantity.comparator", "comparator"),
        (0, ("valueQuantity", "unit"), 5, "Observation.valueQuantity.unit", "Expected a string"),
        (0, ("valueQuantity",), [{"value": 0.4}], "Observation.valueQuantity", "list"),
        (0, ("interpretation",), {"coding": []}, "Observation.interpretation", "list"),
        (0, ("interpretation",), [None], "Observation.interpretation", "null"),
        (0, ("referenceRange", 0, "high", "value"), "7.5", "Observation.referenceRange[0].high.value", "number"),
        (2, ("valueInteger",), "2", "Observation.valueInteger", "integer"),
        (2, ("valueInteger",), 2.5, "Observation.valueInteger", "integer"),
        (3, ("onsetDateTime",), "2026-11-01T08:00", "Condition.onsetDateTime", "dateTime"),
        (3, ("clinicalStatus", "coding", 0), "active", "Condition.clinicalStatus.coding[0]", "JSON object"),
        (3, ("abatementBoolean",), True, "Condition.abatementBoolean", "R4"),
        (5, ("status",), ["completed"], "MedicationAdministration.status", "list"),
        (5, ("dosage", "dose", "value"), "1", "MedicationAdministration.dosage.dose.value", "number"),
        (5, ("dosage",), [{"dose": {"value": 1, "unit": "mg"}}], "MedicationAdministration.dosage", "list"),
        (
            5,
            ("effectivePeriod",),
            {"start": "2026-13-01"},
            "MedicationAdministration.effectivePeriod.start",
            "dateTime",
        ),
        (5, ("contained", 0, "code"), "tarlatamab", "MedicationAdministration.contained[0].code", "JSON object"),
        (
            5,
            ("contained", 0, "resourceType"),
            None,
            "MedicationAdministration.contained[0].resourceType",
            "resourceType",
        ),
        (6, ("birthDate",), "1970-02-30", "Patient.birthDate", "date"),
        (6, ("birthDate",), "19700101", "Patient.birthDate", "date"),
        (6, ("gender",), "", "Patient.gender", "empty"),
    ],
)
def test_a_problem_in_an_element_read_is_named_by_its_path(
    no_pydantic: None, index: int, path: tuple[Any, ...], value: Any, element: str, words: str
) -> None:
    record = _records()[index]
    problem = fv.first_problem(_mutated(record, path, value), READ[record["resourceType"]])
    assert problem is not None
    assert problem[0] == element and words in problem[1]
    assert repr(value) not in problem[1] or value in ("", None, True)  # never echoes what was sent


def test_required_and_choice_rules_of_an_observation(no_pydantic: None) -> None:
    obs = lab("anc", 0.4, WHEN)
    del obs["status"]
    assert fv.first_problem(obs, READ["Observation"]) == (
        "Observation.status",
        "The required element status is missing",
    )
    obs = lab("anc", 0.4, WHEN)
    del obs["code"]
    assert fv.first_problem(obs, READ["Observation"]) == ("Observation.code", "The required element code is missing")
    obs = lab("anc", 0.4, WHEN)
    obs["valueString"] = "0.4"
    problem = fv.first_problem(obs, READ["Observation"])
    assert problem is not None and problem[0] == "Observation" and "valueQuantity" in problem[1]


def test_what_no_rule_reads_never_makes_a_record_unusable(no_pydantic: None) -> None:
    obs = lab("anc", 0.4, WHEN)
    obs["category"] = {"coding": "laboratory"}  # must be a list of objects: never read
    obs["subject"] = "Patient/1"
    obs["performer"] = [None]
    obs["valueQuantity"]["extension"] = [{"url": "http://example.org/x", "valueString": "y"}]
    obs["_status"] = {"extension": [{"url": "http://example.org/y", "valueCode": "z"}]}
    assert fv.first_problem(obs, READ["Observation"]) is None
    adm = _administration_with_contained_medication()
    adm["contained"].append({"resourceType": "Practitioner", "name": "not a list"})  # a contained resource not read
    adm["contained"][0]["batch"] = "not an object"  # an element of the Medication not read
    assert fv.first_problem(adm, READ["MedicationAdministration"]) is None


def test_hostile_nesting_is_still_refused_before_anything_is_read(no_pydantic: None) -> None:
    obs = lab("anc", 0.4, WHEN)
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(fv.MAX_RESOURCE_DEPTH + 5):
        node["x"] = {}
        node = node["x"]
    obs["note"] = [deep]  # not an element read: still refused
    problem = fv.first_problem(obs, READ["Observation"])
    assert problem is not None and problem[0] == "Observation" and "nests deeper" in problem[1]


def _paths(value: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if loc:
        yield loc
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "resourceType":
                yield from _paths(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*loc, index))


_PROBES = (None, "", " ", "x", " a", 5, 2.5, True, [], [None], {}, {"foo": 1}, ["x"], "2026-13-01", "2026-11-20T08:00")


def _pydantic_problem(record: dict[str, Any], read: frozenset[str]) -> tuple[str, str] | None:
    rtype = record["resourceType"]
    reduced = {k: v for k, v in record.items() if k in read or k == "resourceType"}
    for message, _, loc in fv._validate(reduced):
        if not loc or loc[0] in read:
            return fv._path(rtype, loc), message
    return None


def test_everything_fhir_resources_rejects_in_an_element_read_is_still_rejected_at_the_same_element() -> None:
    # The only intended relaxation: inside a contained Medication only what is read (id, code) is checked.
    checked = 0
    for record in _records():
        read = READ[record["resourceType"]]
        for path in _paths(record):
            if path[0] not in read:
                continue
            for probe in _PROBES:
                mutated = _mutated(record, path, probe)
                before = _pydantic_problem(mutated, read)
                if before is None or (path[0] == "contained" and len(path) > 2 and path[2] not in ("id", "code")):
                    continue
                checked += 1
                now = fv.first_problem(mutated, read)
                assert now is not None, (path, probe, before)
                if now[0] == before[0] or now[0].startswith(before[0]) or before[0] == record["resourceType"]:
                    continue  # the same element (a choice error names the resource: any element will do)
                # a contained resource without a type, or with unknown elements: named by its resourceType
                assert path[0] == "contained" and len(path) > 1, (path, probe, before, now)
                assert now[0] == f"{record['resourceType']}.contained[{path[1]}].resourceType", (path, probe, now)
    assert checked > 300


# --- the compiled acceptance test (issue 11) ---------------------------------------------------------------

_HOSTILE = (
    None, "", " ", " x", "x  y", "x", 0, -1, 1.5, 2**40, True, False, [], {}, [None], ["x"], [{}], {"x": 1},
    "2026", "2026-02-30", "2026-11-20T08:00:00", "2026-11-20T08:00:00Z", "2016-12-31T23:59:60Z", "<", "~",
    "Sp-1.a", "a b",
)  # fmt: skip
_EXTRA_KEYS = (("vaule", 1), ("extension", [{"url": 5}]), ("extension", [{"url": "urn:x"}]), ("_code", {}), ("id", 5))


def _variants(record: dict[str, Any], read: frozenset[str]) -> Iterator[dict[str, Any]]:
    yield record
    for name in read:
        if name != "resourceType":
            for value in _HOSTILE:
                yield _mutated(record, (name,), value)
    for path in (p for p in _paths(record) if p[0] in read):
        for value in _HOSTILE:
            yield _mutated(record, path, value)
        target = record
        for part in path:
            target = target[part]
        if isinstance(target, dict):
            for key, value in _EXTRA_KEYS:
                yield _mutated(record, (*path, key), value)


def _all_records() -> list[dict[str, Any]]:
    records = _records()
    condition_with_ages = crs_condition(3, "2026-11-01", "2026-11-05")
    condition_with_ages["abatementAge"] = {"value": 70, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
    records.append(condition_with_ages)
    ranged = lab("alt", 30, WHEN)
    ranged["referenceRange"][0]["appliesTo"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "248153007"}]}]
    ranged["referenceRange"][0]["age"] = {"low": {"value": 18, "unit": "a"}, "high": {"value": 99, "unit": "a"}}
    records.append(ranged)
    return records


def test_what_the_compiled_test_accepts_the_element_checks_accept_too() -> None:
    # A compiled "valid" is only ever given where the element-by-element checks find no problem; for anything
    # else the element checks decide (and name the element). Thousands of hostile variants of real shapes.
    accepted = checked = 0
    for record in _all_records():
        rtype = record["resourceType"]
        read = frozenset(READ[rtype])
        accept, checks = structure._plan(rtype, read)
        for variant in _variants(record, read):
            checked += 1
            if accept(variant):
                accepted += 1
                assert structure.first_problem_in(variant, rtype, read, checks) is None, (rtype, variant)
    assert checked > 3000 and accepted > 100  # both verdicts were exercised


def test_the_compiled_test_accepts_the_tidy_records_real_ehrs_send() -> None:
    # Its point is speed on the usual record: every tidy record of the replay fixtures takes the compiled path.
    for record in _records():
        rtype = record["resourceType"]
        accept, _ = structure._plan(rtype, frozenset(READ[rtype]))
        assert accept(record), rtype


def test_a_problem_is_still_named_when_the_compiled_test_declines(no_pydantic: None) -> None:
    obs = lab("anc", 0.4, WHEN)
    obs["valueQuantity"]["extension"] = [{"url": 7}]  # declined by the compiled test, named by the element checks
    assert fv.first_problem(obs, READ["Observation"]) == (
        "Observation.valueQuantity.extension[0].url",
        "Expected a string (uri), found a number",
    )
