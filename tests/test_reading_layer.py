"""The reading layer (cds_service.reading): dates, quantities, NDC forms, medications, observation shapes.

Spec/protocol.md section 12; each test fails when its row breaks. Records are realistic FHIR R4 shapes.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from typing import Any

import pytest
from conftest import NOW

from cds_service.protocol import Protocol
from cds_service.reading import identity
from cds_service.reading import observations as obs_reading
from cds_service.reading.codes import ndc_products
from cds_service.reading.conditions import condition_status
from cds_service.reading.dates import after, event_sort_key, read_when, site_date, site_zone
from cds_service.reading.medications import MedicationIndex, build_catalog, catalog_key, unresolved_reference
from cds_service.reading.quantities import UCUM, clean, clean_near, convert, decides_above, decides_below
from cds_service.settings import Settings

NDC = "http://hl7.org/fhir/sid/ndc"
MG = {"mg": 1, "ug": 0.001}


# --- dates and time zones ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "local", "instant"),
    [
        ("2026-11-20T22:00:00-05:00", date(2026, 11, 20), datetime(2026, 11, 21, 3, 0, tzinfo=UTC)),
        ("2026-11-21T01:00:00Z", date(2026, 11, 21), datetime(2026, 11, 21, 1, 0, tzinfo=UTC)),
        ("2026-11-21", date(2026, 11, 21), None),  # a date only: no instant
        ("2026-11-21T10:00:00", date(2026, 11, 21), None),  # a time without an offset: no instant
        ("2026-11", None, None),
        ("2026-02-30", None, None),
    ],
)
def test_local_date_as_written_and_instant_only_with_time_and_offset(
    text: str, local: date | None, instant: datetime | None
) -> None:
    when = read_when(text)
    assert (when.local_date if when else None) == local
    assert (when.instant if when else None) == instant


def test_event_order_compares_instants_when_both_have_them_else_local_dates() -> None:
    dose = read_when("2026-11-21T01:00:00Z")
    crs = read_when("2026-11-20T22:00:00-05:00")  # 03:00Z: two hours after the dose, on an earlier local date
    assert dose is not None and crs is not None
    assert after(crs.local_date, crs.instant, dose.local_date, dose.instant)
    assert not after(crs.local_date, None, dose.local_date, dose.instant)  # one without a time: local dates


def test_site_time_zone_turns_now_into_a_local_date() -> None:
    late_evening = datetime(2026, 11, 21, 3, 30, tzinfo=UTC)
    assert site_date(late_evening, site_zone("UTC")) == date(2026, 11, 21)
    assert site_date(late_evening, site_zone("America/New_York")) == date(2026, 11, 20)
    with pytest.raises(ValueError):
        site_zone("Mars/Olympus_Mons")


def test_site_timezone_setting_is_read_from_the_environment_and_validated() -> None:
    assert Settings.from_env({}).site_timezone == "UTC"
    assert Settings.from_env({"CDS_SITE_TIMEZONE": "Europe/Stockholm"}).site_timezone == "Europe/Stockholm"
    with pytest.raises(ValueError, match="IANA"):
        Settings.from_env({"CDS_SITE_TIMEZONE": "CET+99"})


# --- quantities ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("quantity", "mg"),
    [
        ({"value": 10, "unit": "MG"}, 10.0),  # free-text unit: case-insensitive
        ({"value": 10, "unit": "Mg"}, 10.0),
        ({"value": 10, "unit": "mg", "system": UCUM, "code": "mg"}, 10.0),
        ({"value": 1000, "unit": "UG"}, 1.0),
        ({"value": 10, "unit": "mg", "system": UCUM, "code": "Mg"}, None),  # UCUM "Mg" is a megagram
        ({"value": 10, "unit": "MG", "system": UCUM, "code": "MG"}, None),
    ],
)
def test_ucum_code_case_sensitive_free_text_unit_case_insensitive(quantity: dict, mg: float | None) -> None:
    assert convert(quantity, MG).value == mg


@pytest.mark.parametrize(
    ("value", "comparator", "threshold", "below", "above"),
    [
        (0.1, "<", 1.0, True, False),  # ANC "<0.1" is below 1.0
        (1.0, "<", 1.0, True, False),  # "<1.0" is below 1.0
        (1.0, "<=", 1.0, None, False),  # "<=1.0" may be exactly 1.0: does not decide "below"
        (1.5, "<", 1.0, None, None),  # "<1.5": could be either side of 1.0
        (1000, ">", 200, False, True),  # ALT ">1000" is above 5 x ULN (200)
        (200, ">", 200, False, True),
        (200, ">=", 200, False, None),
        (2.0, None, 2.0, False, False),
    ],
)
def test_comparators_are_used_only_when_the_bound_decides(
    value: float, comparator: str | None, threshold: float, below: bool | None, above: bool | None
) -> None:
    assert decides_below(value, comparator, threshold) is below
    assert decides_above(value, comparator, threshold) is above


@pytest.mark.parametrize("limit", [0.0, 1.5, 2.0, 3.0, 5.0, 20.0])
def test_clean_near_compares_with_its_limit_as_clean_does(limit: float) -> None:
    near = [limit * (1 + k * 1e-12) for k in range(-20, 21)] + [limit + k * 1e-13 for k in range(-5, 6)]
    ratios = [200 / 40, 51.3 / 17.1, 60 / 40 * 2, 0.1 + 0.2, *near, limit * 1.0001, limit * 0.9999, 1e6, 0.0]
    for ratio in ratios:
        for comparator in (None, "<", "<=", ">", ">="):
            assert decides_above(clean_near(ratio, limit), comparator, limit) is decides_above(
                clean(ratio), comparator, limit
            ), (ratio, comparator)


def test_a_comparator_is_kept_with_its_bound_and_an_unknown_one_is_unusable() -> None:
    kept = convert({"value": 0.1, "comparator": "<", "unit": "10*9/L", "system": UCUM, "code": "10*9/L"}, {"10*9/L": 1})
    assert (kept.value, kept.comparator, kept.problem) == (0.1, "<", None)
    assert convert({"value": 0.1, "comparator": "~", "unit": "mg"}, MG).problem is not None
    assert convert({"value": 0.1, "comparator": ["<"], "unit": "mg"}, MG).problem is not None


# --- NDC forms -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    ["55513-059-01", "55513-0059-01", "55513005901", "5551305901", "55513-059", "55513-0059", "555130059"],
)
def test_ndc_every_form_reduces_to_the_product(code: str) -> None:
    assert "555130059" in ndc_products(code)


def test_ndc_10_digit_forms_of_other_segmentations() -> None:
    assert "055130059" in ndc_products("5513-0059-01")  # 4-4-2
    assert "555130059" in ndc_products("55513-0059-1")  # 5-4-1
    assert ndc_products("55513-0590-1") == frozenset({"555130590"})  # a different product
    assert ndc_products("not-an-ndc") == frozenset()


@pytest.mark.parametrize("code", ["55513-059-01", "55513-0059-01", "55513005901", "55513-077", "55513007701"])
def test_tarlatamab_recognised_by_any_ndc_form_without_text(protocol: Protocol, code: str) -> None:
    order = {"resourceType": "MedicationRequest", "medicationCodeableConcept": {"coding": [{"system": NDC, "code": code}]}}
    assert MedicationIndex(protocol).is_(order, "tarlatamab")


def test_an_ndc_of_another_product_is_not_tarlatamab(protocol: Protocol) -> None:
    order = {"resourceType": "MedicationRequest", "medicationCodeableConcept": {"coding": [{"system": NDC, "code": "55513-0590-01"}]}}
    assert not MedicationIndex(protocol).is_(order, "tarlatamab")


# --- medications ------------------------------------------------------------------------------------
KIT = {"coding": [{"system": NDC, "code": "55513005901"}]}


def test_medication_from_contained_prefetch_and_fetched_catalog(protocol: Protocol) -> None:
    contained = {
        "resourceType": "MedicationAdministration",
        "contained": [{"resourceType": "Medication", "id": "k1", "code": KIT}],
        "medicationReference": {"reference": "#k1"},
    }
    assert MedicationIndex(protocol).is_(contained, "tarlatamab")
    by_reference = {"resourceType": "MedicationRequest", "medicationReference": {"reference": "Medication/kit-1mg"}}
    assert not MedicationIndex(protocol).is_(by_reference, "tarlatamab")
    catalog = build_catalog([{"resourceType": "Medication", "id": "kit-1mg", "code": KIT}])
    assert MedicationIndex(protocol, catalog).is_(by_reference, "tarlatamab")
    assert unresolved_reference(by_reference, {}) == "Medication/kit-1mg"
    assert unresolved_reference(by_reference, catalog) is None
    assert catalog_key("https://ehr.example.org/fhir/Medication/kit-1mg/_history/3") == "Medication/kit-1mg"


def test_unidentifiable_medication(protocol: Protocol) -> None:
    index = MedicationIndex(protocol)
    assert not index.identified({"medicationReference": {"reference": "Medication/gone"}})
    assert index.identified({"medicationReference": {"reference": "Medication/gone", "display": "tarlatamab"}})


# --- observations and conditions ------------------------------------------------------------------------
def test_status_policy_of_observations() -> None:
    classes = {s: obs_reading.status_class({"status": s}) for s in ("final", "amended", "corrected", "preliminary")}
    assert classes == {"final": "final", "amended": "final", "corrected": "final", "preliminary": "preliminary"}
    for status in ("registered", "cancelled", "entered-in-error", "unknown"):
        assert obs_reading.status_class({"status": status}) == "not-a-result"
    for malformed in (None, "FINAL", "done", 1, ["final"]):  # never dropped as if it were not a result
        assert obs_reading.status_class({"status": malformed}) == "malformed"
    assert obs_reading.status_class({}) == "malformed"


def test_panel_components_are_presented_as_observations() -> None:
    panel = {
        "resourceType": "Observation",
        "id": "cbc-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "57021-8"}]},
        "effectiveDateTime": "2026-11-20T07:30:00-05:00",
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}, "valueQuantity": {"value": 12}},
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
                "valueQuantity": {"value": 0.4, "unit": "10*3/uL"},
                "referenceRange": [{"high": {"value": 7.5}}],
            },
        ],
    }
    grouped = obs_reading.classify([panel], {"http://loinc.org": {"751-8": "anc", "718-7": "hemoglobin"}})
    (anc,) = grouped["anc"]
    assert anc["valueQuantity"]["value"] == 0.4 and anc["referenceRange"][0]["high"]["value"] == 7.5
    assert anc["id"] == "cbc-1" and anc["status"] == "final" and "component" not in anc
    assert obs_reading.element_path(anc, "valueQuantity.value") == "component[1].valueQuantity.value"


def test_condition_resolved_without_abatement_at_recorded_date_else_onset() -> None:
    resolved = {"clinicalStatus": {"coding": [{"code": "resolved"}]}, "onsetDateTime": "2026-11-01"}
    status = condition_status(resolved, ["active", "recurrence", "relapse"])
    assert not status.active and status.resolved is not None and status.resolved.local_date == date(2026, 11, 1)
    status = condition_status({**resolved, "recordedDate": "2026-11-09"}, ["active"])
    assert status.resolved is not None and status.resolved.local_date == date(2026, 11, 9)
    active = condition_status({"clinicalStatus": {"coding": [{"code": "relapse"}]}}, ["active", "relapse"])
    assert active.active and active.resolved is None
    assert NOW.tzinfo is not None


# --- shape of the code -------------------------------------------------------------------------------
def _imports(package: str) -> set[str]:
    import ast

    from cds_service.settings import REPO_ROOT

    found: set[str] = set()
    for path in (REPO_ROOT / "cds_service" / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                found.add(("." * node.level) + node.module)
            elif isinstance(node, ast.ImportFrom):
                found.update("." * node.level + alias.name for alias in node.names)
    return found


def test_arrows_run_one_way_reading_then_facts_then_rules() -> None:
    facts = _imports("facts")
    reading = _imports("reading")
    assert not [m for m in facts if "rules" in m], facts  # facts never call rule modules
    assert not [m for m in reading if "rules" in m or "facts" in m], reading


@pytest.mark.parametrize(
    ("resource", "expected"),
    [({"resourceType": "Observation", "id": "cbc-2211"}, "Observation/cbc-2211"),
     ({"resourceType": "Observation", "id": 4711}, "Observation/4711"),  # an integer id, as some interfaces send
     ({"resourceType": "Observation", "id": True}, "Observation/?"),
     ({"resourceType": "Observation", "id": ["\x10"]}, "Observation/?"),
     ({"resourceType": "Observation", "id": {"a": 1}}, "Observation/?"),
     ({"resourceType": "Observation"}, "Observation/?"),
     ({"resourceType": ["Observation"], "id": "x"}, "Resource/x")],
)  # fmt: skip
def test_a_record_is_named_by_its_id_only_when_it_is_one(resource: dict[str, Any], expected: str) -> None:
    assert identity.reference_of(resource) == expected
    assert identity.reference_of(resource, "MedicationAdministration").split("/", 1)[1] == expected.split("/", 1)[1]


def test_records_are_put_in_event_order_the_same_whatever_order_they_come_in() -> None:
    evening_ny = read_when("2026-11-19T22:00:00-05:00")  # instant 2026-11-20T03:00Z, local date 2026-11-19
    date_only = read_when("2026-11-20")  # read as 2026-11-20T00:00Z for comparisons with "now"
    utc_morning = read_when("2026-11-20T01:00:00Z")  # local date later, instant earlier than evening_ny
    same_day = read_when("2026-11-20T09:00:00Z")
    assert evening_ny and date_only and utc_morning and same_day
    assert date_only.moment < evening_ny.moment  # the instant alone would put the date-only record first
    exact = [same_day, evening_ny, utc_morning]  # all with instants: by instant, across offsets (section 12)
    for received in itertools.permutations(exact):
        assert sorted(received, key=event_sort_key(received)) == [utc_morning, evening_ny, same_day]
    # One record without a time: local dates, then the moment. Pair by pair (instants for two records with
    # one, dates otherwise) would be a cycle here: date_only > evening_ny > utc_morning > date_only.
    mixed = [same_day, date_only, evening_ny, utc_morning]
    for received in itertools.permutations(mixed):
        assert sorted(received, key=event_sort_key(received)) == [evening_ny, date_only, utc_morning, same_day]


def test_a_record_is_after_the_check_by_its_instant_or_else_by_the_sites_local_date() -> None:
    now = datetime(2026, 11, 20, 23, 30, tzinfo=UTC)  # 08:30 on 2026-11-21 in Tokyo
    tokyo_today = date(2026, 11, 21)
    date_only, later = read_when("2026-11-21"), read_when("2026-11-21T09:00:00+09:00")
    assert date_only and later
    assert not date_only.after(now, tokyo_today)  # today in Tokyo, although 2026-11-21T00:00Z is after now
    assert date_only.after(now, date(2026, 11, 20))  # in a site still on 2026-11-20
    assert later.after(now, tokyo_today)  # 00:00Z on 11-21: half an hour after the check
