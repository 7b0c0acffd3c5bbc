"""Clinical fixture requests (fixtures/requests/clinical-*.json): replay and HTTP agree, and the cards of the
clinical topics (CRS, neurotoxicity, labs, populations, data quality) are the ones the protocol requires.

The fixture files are generated from `SCENARIOS` below (deterministic ids, dates relative to 2026-11-21):
`python tests/test_fixtures_clinical.py` rewrites them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from card_validator import assert_valid_response
from fhir_builders import (
    administration,
    breastfeeding,
    condition,
    crs_condition,
    dexamethasone_order,
    grade_observation,
    hcg_urine,
    hook_request,
    lab,
    patient,
    platinum_administration,
    saline_order,
    sclc_condition,
    tarlatamab_order,
)

from cds_service.cli import main

REQUESTS = Path(__file__).resolve().parent.parent / "fixtures" / "requests"
PLANNED = "2026-11-21T10:00:00Z"
CLINICAL_TOPICS = {
    "crs",
    "neurotoxicity",
    "labs-missing",
    "lab-hold",
    "pregnancy",
    "lactation",
    "eligibility",
    "organ-function",
    "infection",
    "data-quality",
}


# --- scenario builders -------------------------------------------------------------------------------
def panel(when: str, prefix: str, **overrides: Any) -> list[dict[str, Any]]:
    """A pre-dose panel (CBC + hepatic) with stable ids; an override is a value or a lab() keyword dict."""
    values: dict[str, Any] = {"anc": 3.4, "hemoglobin": 12.8, "platelets": 212, "alt": 24, "ast": 27, "bilirubin": 0.6}
    out = []
    for analyte, default in values.items():
        spec = overrides.get(analyte, default)
        kwargs = spec if isinstance(spec, dict) else {"value": spec}
        out.append(lab(analyte, when=when, oid=f"{prefix}-{analyte.replace('_', '')}", **kwargs))
    return out


def first_cycle_history() -> list[dict[str, Any]]:
    """C1D1 (1 mg), C1D8 and C1D15 (10 mg) given: the order of 2026-11-21 is C2D1 (14 days after C1D15)."""
    return [
        administration("2026-10-24T09:00:00Z", 1, aid="tarla-adm-c1d1"),
        administration("2026-10-31T09:00:00Z", 10, aid="tarla-adm-c1d8"),
        administration("2026-11-07T09:00:00Z", 10, aid="tarla-adm-c1d15"),
    ]


def indication() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sclc = sclc_condition("2025-12-02")
    sclc["id"] = "cond-es-sclc"
    carbo = platinum_administration("2026-02-10T09:00:00Z")
    carbo["id"] = "carboplatin-adm-1"
    return [sclc], [carbo]


def maintenance_request(
    hook_instance: str,
    observations: list[dict[str, Any]],
    conditions: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    diagnoses, platinum = indication()
    return hook_request(
        drafts=[tarlatamab_order(PLANNED, 10, oid="tarla-order-c2d1")],
        administrations=first_cycle_history() + platinum,
        observations=observations,
        conditions=diagnoses + list(conditions),
        hook_instance=hook_instance,
    )


def neutropenia_hold() -> dict[str, Any]:
    anc = {"value": 800, "unit": "/uL", "ref_high": 7700}
    return maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-000000000001", panel("2026-11-20T07:30:00Z", "lab", anc=anc))


def hepatotoxicity_grade3() -> dict[str, Any]:
    # Bilirubin 66 umol/L with ULN 20.5 umol/L = 3.2 x ULN (> 3); ALT 2.75 x and AST 2.5 x ULN: no Hy's law.
    bilirubin = {"value": 66, "unit": "umol/L", "ref_high": 20.5}
    observations = panel("2026-11-20T07:30:00Z", "lab", alt=110, ast=100, bilirubin=bilirubin)
    return maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-000000000002", observations)


def crs_grade2_active() -> dict[str, Any]:
    crs = crs_condition(2, "2026-11-19T22:00:00Z", cid="cond-crs-g2")
    observations = [
        *panel("2026-11-20T07:30:00Z", "lab"),
        grade_observation("crs-grade", 1, "2026-11-19T22:00:00Z", oid="crs-grade-1"),
        grade_observation("crs-grade", 2, "2026-11-20T04:00:00Z", oid="crs-grade-2"),
    ]
    return maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-000000000003", observations, [crs])


def icans_grade3_resolved() -> dict[str, Any]:
    # First Grade 3 ICANS after C1D15 (ICE 2), ICE 8 two days later, ICE 10 on day 3: improved within 7 days.
    observations = [
        *panel("2026-11-20T07:30:00Z", "lab"),
        grade_observation("ice-score", 2, "2026-11-08T14:00:00Z", oid="ice-1"),
        grade_observation("ice-score", 8, "2026-11-10T09:00:00Z", oid="ice-2"),
        grade_observation("ice-score", 10, "2026-11-11T09:00:00Z", oid="ice-3"),
    ]
    icans = condition(
        "http://hl7.org/fhir/sid/icd-10-cm",
        "G92.03",
        "Immune effector cell-associated neurotoxicity syndrome, grade 3",
        "2026-11-08T14:00:00Z",
        clinical_status="resolved",
        abatement="2026-11-11T09:00:00Z",
        cid="cond-icans-g3",
    )
    return maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-000000000004", observations, [icans])


def pregnant_c1d1() -> dict[str, Any]:
    diagnoses, platinum = indication()
    hcg = hcg_urine(True, "2026-11-20T08:10:00Z")
    hcg["id"] = "hcg-urine-1"
    return hook_request(
        drafts=[
            tarlatamab_order(PLANNED, 1, oid="tarla-order-c1d1"),
            dexamethasone_order("2026-11-21T09:00:00Z"),
            saline_order("2026-11-21T11:00:00Z"),
        ],
        patient_resource=patient(gender="female", birth_date="1992-05-17", name="Lindgren"),
        administrations=platinum,
        observations=[*panel("2026-11-20T07:30:00Z", "lab"), hcg],
        conditions=diagnoses,
        hook_instance="5b0f8a4e-0c1d-4e55-9a1e-000000000005",
    )


def stale_labs() -> dict[str, Any]:
    # Last panel 2026-11-16: 5 days before the planned administration (window: 3 days).
    return maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-000000000006", panel("2026-11-16T07:30:00Z", "lab"))


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "clinical-neutropenia-hold": neutropenia_hold,
    "clinical-hepatotoxicity-grade3": hepatotoxicity_grade3,
    "clinical-crs-grade2-active": crs_grade2_active,
    "clinical-icans-grade3-resolved": icans_grade3_resolved,
    "clinical-pregnant-c1d1": pregnant_c1d1,
    "clinical-stale-labs": stale_labs,
}

# Cards of the clinical topics each fixture must produce: (topic, indicator, words in the summary), exactly.
# A held order has ONE critical card (issue 9): the order's other problems are listed in it (EXPECTED_ALSO).
EXPECTED: dict[str, list[tuple[str, str, str]]] = {
    "clinical-neutropenia-hold": [("lab-hold", "critical", "ANC 0.8 ×10⁹/L (reported 800 /µL)")],
    "clinical-hepatotoxicity-grade3": [
        ("lab-hold", "critical", "Grade 3 hepatotoxicity (total bilirubin 3.2 × ULN)"),
    ],
    "clinical-crs-grade2-active": [
        ("crs", "critical", "Grade 2 CRS since 2026-11-19"),
    ],
    "clinical-icans-grade3-resolved": [("neurotoxicity", "critical", "neurology clearance")],
    "clinical-pregnant-c1d1": [("pregnancy", "critical", "hCG positive, 2026-11-20")],
    "clinical-stale-labs": [("labs-missing", "warning", "ANC, hemoglobin, platelets, ALT, AST, total bilirubin")],
}
# Problems of a held order listed in its critical card ("Also noted"), in place of cards of their own.
EXPECTED_ALSO: dict[str, list[str]] = {
    "clinical-hepatotoxicity-grade3": ["hepatic impairment, bilirubin 3.2 × ULN"],
    "clinical-crs-grade2-active": [
        "before 2026-11-21 (active CRS): sodium, potassium, uric acid",
        "Check sodium, potassium and uric acid: Grade 2 CRS active",
    ],
}


def regenerate() -> None:
    REQUESTS.mkdir(parents=True, exist_ok=True)
    for name, build in SCENARIOS.items():
        (REQUESTS / f"{name}.json").write_text(json.dumps(build(), indent=2) + "\n", encoding="utf-8")


# --- tests -------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CDS_NOW", raising=False)


def replay(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["replay", "--now", "2026-11-21T09:00:00Z", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.strip()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fixture_replay_and_http_agree_with_the_expected_cards(
    name: str, capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    path = REQUESTS / f"{name}.json"
    body = json.loads(path.read_text(encoding="utf-8"))
    assert set(body["prefetch"]) == {"patient", "medications", "administrations", "observations", "conditions"}
    assert all(body["prefetch"][k]["type"] == "searchset" for k in body["prefetch"] if k != "patient")

    replayed = replay(path, capsys)
    http = client.post("/cds-services/tarlatamab-order-sign", json=body)
    assert http.status_code == 200
    assert replayed.encode() == http.data  # byte for byte, uuids included
    response = json.loads(replayed)
    assert_valid_response(response)

    clinical = [c for c in response["cards"] if c["source"]["topic"]["code"] in CLINICAL_TOPICS]
    got = sorted((c["source"]["topic"]["code"], c["indicator"]) for c in clinical)
    assert got == sorted((topic, indicator) for topic, indicator, _ in EXPECTED[name])
    for topic, indicator, words in EXPECTED[name]:
        assert any(
            c["source"]["topic"]["code"] == topic and c["indicator"] == indicator and words in c["summary"]
            for c in clinical
        ), f"{name}: no {indicator} {topic} card saying {words!r}: {[c['summary'] for c in clinical]}"
    for words in EXPECTED_ALSO.get(name, []):
        (held,) = [c for c in clinical if c["indicator"] == "critical"]
        assert words in also_noted(held), f"{name}: held card does not list {words!r}: {held['detail']}"


def test_withhold_cards_offer_to_delete_the_draft_order(capsys: pytest.CaptureFixture[str]) -> None:
    response = json.loads(replay(REQUESTS / "clinical-neutropenia-hold.json", capsys))
    (hold,) = [c for c in response["cards"] if c["source"]["topic"]["code"] == "lab-hold"]
    actions = [a for s in hold["suggestions"] for a in s["actions"]]
    assert actions == [
        {
            "type": "delete",
            "description": "Cancel this tarlatamab order",
            "resourceId": "MedicationRequest/tarla-order-c2d1",
        }
    ]


def test_stale_labs_suggest_the_missing_panels(capsys: pytest.CaptureFixture[str]) -> None:
    response = json.loads(replay(REQUESTS / "clinical-stale-labs.json", capsys))
    (card,) = [c for c in response["cards"] if c["source"]["topic"]["code"] == "labs-missing"]
    codes = [a["resource"]["code"]["coding"][0]["code"] for s in card["suggestions"] for a in s["actions"]]
    assert codes == ["57021-8", "24325-3"]  # CBC with differential, hepatic function panel (protocol orderables)
    assert "last result 2026-11-16" in card["detail"]


def test_fixture_files_are_current() -> None:
    """The files on disk hold the scenarios as built here (regenerate after changing a scenario)."""
    for name, build in SCENARIOS.items():
        on_disk = json.loads((REQUESTS / f"{name}.json").read_text(encoding="utf-8"))
        assert on_disk == build(), f"{name}.json is out of date: run python tests/test_fixtures_clinical.py"


if __name__ == "__main__":
    regenerate()


# --- more scenarios through HTTP: every clinical card renders, valid, untruncated -----------------------
def post(client: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    http = client.post("/cds-services/tarlatamab-order-sign", json=body)
    assert http.status_code == 200, http.data
    response = http.get_json()
    assert_valid_response(response)
    cards = [c for c in response["cards"] if c["source"]["topic"]["code"] in CLINICAL_TOPICS]
    for card in cards:
        assert "…" not in card["summary"], f"summary truncated: {card['summary']}"
        assert "{" not in card["summary"] and "{" not in card["detail"].split("**Data used**")[0]
    return cards


def summaries(cards: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"], c["summary"]) for c in cards]


def has(cards: list[dict[str, Any]], topic: str, indicator: str, words: str) -> bool:
    return any(t == topic and i == indicator and words in s for t, i, s in summaries(cards))


def held_card(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """The one critical card of a held order: no other card of the order, and one suggestion (delete)."""
    (card,) = cards
    assert card["indicator"] == "critical"
    (suggestion,) = card["suggestions"]
    assert [a["type"] for a in suggestion["actions"]] == ["delete"]
    return card


def reasons(card: dict[str, Any]) -> str:
    """The reasons part of a held card's detail (before "Also noted")."""
    return card["detail"].split("**Also noted")[0]


def also_noted(card: dict[str, Any]) -> str:
    detail = card["detail"]
    return detail.split("**Also noted", 1)[1] if "**Also noted" in detail else ""


def test_discontinuation_scenario(client: Any) -> None:
    conditions = [
        crs_condition(4, "2026-06-01T10:00:00Z", abatement="2026-06-04T10:00:00Z"),
        crs_condition(3, "2026-09-01T10:00:00Z", abatement="2026-09-03T10:00:00Z"),
        crs_condition(3, "2026-10-01T10:00:00Z", abatement="2026-10-03T10:00:00Z"),
    ]
    observations = [
        *panel("2026-11-20T07:30:00Z", "lab", alt=1000, bilirubin=3.0, platelets=40, hemoglobin=7.5),
        grade_observation("icans-grade", 4, "2026-07-01T10:00:00Z"),
        grade_observation("icans-grade", 0, "2026-07-04T10:00:00Z"),
        grade_observation("ice-score", 2, "2026-10-10T10:00:00Z"),
        grade_observation("ice-score", 10, "2026-10-12T10:00:00Z"),
        grade_observation("neurotox-grade", 3, "2026-11-01T10:00:00Z"),
        grade_observation("neurotox-grade", 0, "2026-11-03T10:00:00Z"),
    ]
    cards = post(client, maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-0000000000a1", observations, conditions))
    # One critical card for the held order (issue 9), led by a permanent discontinuation, every reason in it.
    card = held_card(cards)
    assert has(cards, "crs", "critical", "Permanently discontinue tarlatamab: Grade 4 CRS on 2026-06-01")
    assert "(+6 more reasons)" in card["summary"]
    listed = reasons(card)
    assert "second Grade 3 CRS (2026-09-01, 2026-10-01)" in listed
    assert "Grade 4 ICANS on 2026-07-01" in listed
    assert "recurrent Grade 3 neurologic toxicity (2026-10-10, 2026-11-01)" in listed
    assert "Grade 4 hepatotoxicity (ALT 25.0 × ULN)" in listed
    assert "ALT 25.0 × ULN with bilirubin 2.5 × ULN" in listed
    assert "platelets 40 ×10⁹/L" in listed
    assert "hemoglobin 7.5 g/dL" in also_noted(card)  # a warning, not a hold: listed as also noted
    assert "Grade 3 hepatotoxicity" not in card["detail"]
    assert "clearance" not in card["detail"]


def test_population_scenario(client: Any) -> None:
    observations = [
        *panel("2026-11-20T07:30:00Z", "lab"),
        lab("egfr", 25, "2026-11-20T07:30:00Z", oid="egfr-1"),
        grade_observation("ice-score", 6, "2026-11-20T12:00:00Z"),
        {**hcg_urine(False, "2026-11-01T08:00:00Z"), "id": "hcg-old"},  # 20 days old: does not confirm status
        {**breastfeeding("2026-11-01T08:00:00Z"), "id": "bf-1"},
    ]
    pneumonia = condition("http://hl7.org/fhir/sid/icd-10-cm", "J18.9", "Pneumonia", "2026-11-18", cid="cond-pneu")
    body = hook_request(
        drafts=[tarlatamab_order(PLANNED, 1, oid="tarla-order-teen")],
        patient_resource=patient(gender="female", birth_date="2009-02-01", name="Berg"),
        observations=observations,
        conditions=[pneumonia],
        hook_instance="5b0f8a4e-0c1d-4e55-9a1e-0000000000a2",
    )
    # Grade 2 ICANS (ICE 6) holds the order: one critical card, the population problems listed in it
    # (issue 9); without the ICANS each problem is its own card with its own suggestion.
    neuro = held_card(post(client, body))
    assert neuro["source"]["topic"]["code"] == "neurotoxicity" and "Grade 2 ICANS" in neuro["summary"]
    assert "dexamethasone 10 mg IV" in neuro["detail"]
    noted = also_noted(neuro)
    for words in ("Confirm pregnancy status before C1D1", "breastfeeding recorded 2026-11-01", "17 years old",
                  "small cell lung cancer diagnosis and prior platinum chemotherapy", "eGFR 25 mL/min/1.73 m²",
                  "Pneumonia (J18.9)"):  # fmt: skip
        assert words in noted, (words, noted)
    assert "contraception" not in neuro["detail"]  # plan advice for a dose that must not be given

    body["prefetch"]["observations"]["entry"] = [
        e for e in body["prefetch"]["observations"]["entry"] if "ice-score" not in json.dumps(e["resource"]["code"])
    ]
    cards = post(client, body)
    assert has(cards, "pregnancy", "warning", "Confirm pregnancy status before C1D1")
    assert has(cards, "lactation", "warning", "breastfeeding recorded 2026-11-01")
    assert has(cards, "eligibility", "warning", "patient is 17 years old")
    assert has(cards, "eligibility", "info", "small cell lung cancer diagnosis and prior platinum chemotherapy")
    assert has(cards, "organ-function", "info", "eGFR 25 mL/min/1.73 m²")
    assert has(cards, "infection", "warning", "Pneumonia (J18.9)")
    assert not [c for c in cards if c["source"]["topic"]["code"] == "neurotoxicity"]
    (hcg,) = [c for c in cards if has([c], "pregnancy", "warning", "Confirm")]
    assert hcg["suggestions"][0]["actions"][0]["resource"]["code"]["coding"][0]["code"] == "2106-3"


def test_neurotoxicity_not_improved_and_unknown_resolution(client: Any) -> None:
    observations = [*panel("2026-11-20T07:30:00Z", "lab"), grade_observation("ice-score", 1, "2026-11-13T08:00:00Z")]
    cards = post(client, maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-0000000000a3", observations))
    # One held card: the permanent discontinuation leads, the withhold is listed with it (issue 9).
    card = held_card(cards)
    assert has(cards, "neurotoxicity", "critical", "Grade 3 ICANS not improved within 7 days")
    assert "Withhold tarlatamab: Grade 3 ICANS since 2026-11-13" in reasons(card)

    icans = condition(
        "http://hl7.org/fhir/sid/icd-10-cm", "G92.03", "ICANS grade 3", "2026-11-12T08:00:00Z",
        clinical_status="resolved", cid="cond-icans-nodate",
    )  # fmt: skip
    cards = post(
        client,
        maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-0000000000a4", panel("2026-11-20T07:30:00Z", "lab"), [icans]),
    )
    assert has(cards, "neurotoxicity", "critical", "neurology clearance: Grade 3 ICANS of 2026-11-12, resolution date unknown")


def test_unusable_data_is_reported_never_read_as_normal(client: Any) -> None:
    observations = [
        *panel("2026-11-20T07:30:00Z", "lab", anc={"value": 0.3, "unit": "cells"}),
        grade_observation("ice-score", 11, "2026-11-20T10:00:00Z", oid="ice-bad"),
    ]
    cards = post(client, maintenance_request("5b0f8a4e-0c1d-4e55-9a1e-0000000000a5", observations))
    assert has(cards, "labs-missing", "warning", ": ANC")
    assert has(cards, "data-quality", "warning", "recorded data not interpretable")
    (quality,) = [c for c in cards if c["source"]["topic"]["code"] == "data-quality"]
    assert "Observation/lab-anc" in quality["detail"] and "Observation/ice-bad" in quality["detail"]
    assert not [c for c in cards if c["source"]["topic"]["code"] == "lab-hold"]
