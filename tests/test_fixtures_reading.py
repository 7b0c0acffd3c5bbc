"""Recorded requests of real-world record shapes (fixtures/requests/sandbox-*.json, reading-*.json).

The sandbox files have the CDS Hooks sandbox's own order shape (draftOrders Bundle without `type`,
`category` and `reasonCode` as objects, a dose written `{"value": N, "unit": ...}` only) with a tarlatamab
medication, which its UI cannot pick; the reading files carry the other shapes of clinical specification section 12
(11-digit NDCs, panel Observations, contained Medications, split infusions, offsets). They double as replay
examples (`cds-service replay FILE`). `python tests/test_fixtures_reading.py` rewrites them.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from card_validator import assert_valid_response, card_rules
from fhir_builders import (
    LOINC,
    NDC,
    UCUM,
    administration,
    dexamethasone_order,
    grade_observation,
    hook_request,
    lab,
    platinum_administration,
    saline_order,
    sclc_condition,
    tarlatamab_order,
)

from cds_service.cli import main

REQUESTS = Path(__file__).resolve().parent.parent / "fixtures" / "requests"
DRAWN = "2026-11-20T07:30:00-05:00"
KIT_1MG = {"coding": [{"system": NDC, "code": "55513005901", "display": "IMDELLTRA 1 MG KIT"}]}


def indication() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sclc = sclc_condition("2025-12-02")
    sclc["id"] = "cond-es-sclc"
    carbo = platinum_administration("2026-02-10T09:00:00Z")
    carbo["id"] = "carboplatin-adm-1"
    return [sclc], [carbo]


def panels(anc: float, **hepatic: float) -> list[dict[str, Any]]:
    """A CBC panel Observation (components) and a hepatic function panel, as many EHRs send them."""
    values = {"alt": 24.0, "ast": 27.0, "bilirubin": 0.6, **hepatic}

    def component(code: str, value: float, unit: str, high: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        }
        if high is not None:
            out["referenceRange"] = [{"high": {"value": high, "unit": unit, "system": UCUM, "code": unit}}]
        return out

    def panel(oid: str, code: str, display: str, components: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "category": {"coding": [{"code": "laboratory"}]},  # an object, as some interfaces send it
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "subject": {"reference": "Patient/pt-sclc-001"},
            "effectiveDateTime": DRAWN,
            "component": components,
        }

    return [
        panel("cbc-1", "57021-8", "CBC W Auto Differential panel - Blood", [
            component("718-7", 12.4, "g/dL"), component("777-3", 198, "10*3/uL"),
            component("751-8", anc, "10*3/uL", 7.7)]),
        panel("hfp-1", "24325-3", "Hepatic function 2000 panel", [
            component("1742-6", values["alt"], "U/L", 40), component("1920-8", values["ast"], "U/L", 40),
            component("1975-2", values["bilirubin"], "mg/dL", 1.2)]),
    ]  # fmt: skip


def sandbox_order(dose: dict[str, Any], medication: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "intent": "order",
        "category": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category", "code": "outpatient"}]
        },
        "reasonCode": {"coding": [{"system": "http://snomed.info/sct", "code": "254632001"}], "text": "ES-SCLC"},
        "medicationCodeableConcept": medication,
        "subject": {"reference": "Patient/pt-sclc-001"},
        "dosageInstruction": [
            {
                "text": "tarlatamab IV once",
                "timing": {"repeat": {"boundsPeriod": {"start": "2026-11-21"}}},
                "doseAndRate": [{"doseQuantity": dose}],
            }
        ],
    }


def sandbox_request(hook: str, order: dict[str, Any], instance: str, observations: list[dict[str, Any]]) -> dict:
    diagnoses, platinum = indication()
    body = hook_request(hook, drafts=[order], administrations=platinum, observations=observations,
                        conditions=diagnoses, hook_instance=instance)  # fmt: skip
    del body["context"]["draftOrders"]["type"]  # the sandbox sends the Bundle without a type
    if hook == "order-select":
        body["context"]["selections"] = ["MedicationRequest/request-123"]
    return body


def sandbox_sign_c1d1_low_anc() -> dict[str, Any]:
    order = sandbox_order({"value": 1, "unit": "MG"}, copy.deepcopy(KIT_1MG))
    return sandbox_request("order-sign", order, "d1c0b1e2-5a6f-4a4e-9d2a-00000000b001", panels(anc=0.3))


def sandbox_select_unreadable_dose() -> dict[str, Any]:
    order = sandbox_order({"value": 1, "unit": "{pill}"}, copy.deepcopy(KIT_1MG))
    return sandbox_request("order-select", order, "d1c0b1e2-5a6f-4a4e-9d2a-00000000b002", panels(anc=3.1))


def split_infusion_c1d8() -> dict[str, Any]:
    diagnoses, platinum = indication()
    contained = [{"resourceType": "Medication", "id": "kit", "code": copy.deepcopy(KIT_1MG)}]
    parts = []
    for aid, when, mg in (("c1d1-a", "2026-11-14T08:30:00-05:00", 0.3), ("c1d1-b", "2026-11-14T10:05:00-05:00", 0.7)):
        part = administration(when, mg, aid=aid)
        del part["medicationCodeableConcept"]
        part["contained"] = copy.deepcopy(contained)
        part["medicationReference"] = {"reference": "#kit"}
        parts.append(part)
    drafts = [
        tarlatamab_order("2026-11-21T09:00:00-05:00", 10, oid="tarla-c1d8"),
        dexamethasone_order("2026-11-21T08:00:00-05:00"),
        saline_order("2026-11-21T10:30:00-05:00"),
    ]
    return hook_request(drafts=drafts, administrations=[*platinum, *parts], observations=panels(anc=3.4),
                        conditions=diagnoses, hook_instance="d1c0b1e2-5a6f-4a4e-9d2a-00000000b003")  # fmt: skip


def crs_after_dose_across_midnight() -> dict[str, Any]:
    """C1D1 at 01:00Z on 2026-11-07; Grade 3 CRS charted 22:00-05:00 on 2026-11-06 (03:00Z, after the dose)."""
    diagnoses, platinum = indication()
    observations = [
        *panels(anc=3.4),
        grade_observation("crs-grade", 3, "2026-11-06T22:00:00-05:00", oid="crs-g3"),
        grade_observation("crs-grade", 0, "2026-11-09T10:00:00-05:00", oid="crs-g0"),
    ]
    drafts = [tarlatamab_order("2026-11-21T09:00:00-05:00", 10, oid="tarla-next")]
    return hook_request(drafts=drafts, administrations=[*platinum, administration("2026-11-07T01:00:00Z", 1, aid="c1d1")],
                        observations=observations, conditions=diagnoses,
                        hook_instance="d1c0b1e2-5a6f-4a4e-9d2a-00000000b004")  # fmt: skip


def liver_grade4_persists() -> dict[str, Any]:
    diagnoses, platinum = indication()
    history = [administration("2026-10-24T09:00:00Z", 1, aid="c1d1"), administration("2026-10-31T09:00:00Z", 10, aid="c1d8"),
               administration("2026-11-07T09:00:00Z", 10, aid="c1d15")]  # fmt: skip
    old = lab("alt", 910, "2026-11-12T08:00:00Z", oid="alt-grade4")
    return hook_request(drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 10, oid="tarla-c2d1")],
                        administrations=[*platinum, *history], observations=[old, *panels(anc=3.4)],
                        conditions=diagnoses, hook_instance="d1c0b1e2-5a6f-4a4e-9d2a-00000000b005")  # fmt: skip


SCENARIOS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "sandbox-order-sign-c1d1-low-anc": ("tarlatamab-order-sign", sandbox_sign_c1d1_low_anc),
    "sandbox-order-select-unreadable-dose": ("tarlatamab-order-select", sandbox_select_unreadable_dose),
    "reading-split-infusion-c1d8": ("tarlatamab-order-sign", split_infusion_c1d8),
    "reading-crs-across-midnight": ("tarlatamab-order-sign", crs_after_dose_across_midnight),
    "reading-liver-grade4-persists": ("tarlatamab-order-sign", liver_grade4_persists),
}

# (rule id, indicator) of the cards each fixture must produce, at least; and rule ids it must not produce.
EXPECTED: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    # a held order: one critical card, no plan card for a dose that must not be given
    "sandbox-order-sign-c1d1-low-anc": ([("lab-hold.anc", "critical")],
                                        ["dose.invalid-amount", "data-quality.draft-order", "labs.missing",
                                         "monitoring.schedule"]),
    "sandbox-order-select-unreadable-dose": ([("dose.invalid-amount", "critical"),
                                              ("data-quality.draft-order", "critical")], ["lab-hold.anc"]),
    "reading-split-infusion-c1d8": ([("monitoring.schedule", "info")],
                                    ["dose.step-up-repeated", "dose.step-up-skipped", "premedication.dexamethasone-missing",
                                     "hydration.saline-missing", "schedule.too-early", "data-quality.dose-history"]),
    "reading-crs-across-midnight": ([("dose.restart-after-crs-grade3", "critical")], []),
    "reading-liver-grade4-persists": ([("lab-hold.hepatotoxicity-grade4", "critical")], ["labs.missing"]),
}  # fmt: skip


def regenerate() -> None:
    REQUESTS.mkdir(parents=True, exist_ok=True)
    for name, (_, build) in SCENARIOS.items():
        (REQUESTS / f"{name}.json").write_text(json.dumps(build(), indent=2) + "\n", encoding="utf-8")


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CDS_NOW", raising=False)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fixture_file_is_the_scenario(name: str) -> None:
    assert json.loads((REQUESTS / f"{name}.json").read_text(encoding="utf-8")) == SCENARIOS[name][1]()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_reading_fixture_replay_and_http_agree_with_the_expected_cards(
    name: str, capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    path = REQUESTS / f"{name}.json"
    service = SCENARIOS[name][0]
    code = main(["replay", "--service", service, "--now", "2026-11-21T09:00:00Z", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    http = client.post(f"/cds-services/{service}", json=json.loads(path.read_text(encoding="utf-8")))
    assert http.status_code == 200
    assert out.strip().encode() == http.data
    response = json.loads(out)
    assert_valid_response(response)
    found = {(rule, c["indicator"]) for c in response["cards"] for rule in card_rules(c)}
    wanted, unwanted = EXPECTED[name]
    assert set(wanted) <= found, f"{name}: {sorted(found)}"
    assert not {r for r, _ in found} & set(unwanted), f"{name}: {sorted(found)}"


if __name__ == "__main__":
    regenerate()
