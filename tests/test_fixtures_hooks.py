"""Replay fixtures for the order-select and patient-view hooks (fixtures/requests/{order-select,patient-view}-*).

Each file is replayed through `cds-service replay` and through HTTP: the two answers must be identical and
match the expected outcome. Regenerate the files with: PYTHONPATH=. python tests/test_fixtures_hooks.py
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from typing import Any

import pytest
from card_validator import assert_valid_response
from conftest import FIXTURES
from fhir_builders import (
    administration,
    crs_condition,
    hook_request,
    lab,
    normal_labs,
    patient,
    platinum_administration,
    sclc_condition,
    tarlatamab_order,
)

from cds_service.cli import main

REQUESTS = FIXTURES / "requests"
NOW_ARG = "2026-11-21T09:00:00Z"


def _with_ids(resources: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    for i, resource in enumerate(resources, start=1):
        resource["id"] = f"{prefix}-{i}"
    return resources


def _labs(day: str, prefix: str) -> list[dict[str, Any]]:
    return _with_ids(normal_labs(f"{day}T07:40:00-05:00"), prefix)


def scenarios() -> dict[str, dict[str, Any]]:
    pt = patient(pid="pt-sclc-001", gender="male", birth_date="1958-09-22")
    history_c2d1 = _with_ids(
        [
            administration("2026-10-10T09:30:00-05:00", 1),
            administration("2026-10-17T09:30:00-05:00", 10),
            administration("2026-10-24T09:30:00-05:00", 10),
            administration("2026-11-07T09:30:00-05:00", 10),
        ],
        "tarla-adm",
    )
    platinum = _with_ids([platinum_administration("2026-06-03T10:00:00-05:00")], "carbo-adm")
    sclc = _with_ids([sclc_condition("2026-05-20")], "cond-sclc")
    return {
        # Composing the C1D8 order without premedication yet: premedication/hydration advice is info.
        "order-select-c1d8": hook_request(
            "order-select",
            drafts=[tarlatamab_order("2026-11-21T15:00:00Z", 10, oid="tarla-order-c1d8")],
            patient_resource=pt,
            administrations=[*_with_ids([administration("2026-11-14T09:30:00-05:00", 1)], "tarla-adm"), *platinum],
            observations=_labs("2026-11-20", "lab"),
            conditions=sclc,
            hook_instance="6c1f3a52-0f7e-4a55-9d2b-3c8e5b1f7a01",
        ),
        # On schedule after C2D1: the summary names C2D15 (10 mg) today and its 6-8 h observation.
        "patient-view-on-treatment": hook_request(
            "patient-view",
            patient_resource=pt,
            administrations=[*history_c2d1, *platinum],
            observations=_labs("2026-11-20", "lab"),
            conditions=sclc,
            hook_instance="0b9d7e14-2c3f-4d6a-8e1b-5f4a3c2d1e02",
        ),
        # Active Grade 2 CRS and neutropenia: the summary says tarlatamab is on hold (critical).
        "patient-view-hold": hook_request(
            "patient-view",
            patient_resource=pt,
            administrations=[*history_c2d1, *platinum],
            observations=[
                *_labs("2026-11-20", "lab"),
                lab("anc", 640, "2026-11-20T16:10:00-05:00", unit="/uL", oid="lab-anc-late", ref_high=7700),
            ],
            conditions=[*sclc, crs_condition(2, "2026-11-19T22:00:00-05:00", cid="cond-crs-1")],
            hook_instance="9e2a4b6c-8d0f-4e1a-b3c5-7d9f1a3b5c03",
        ),
    }


EXPECTED = {
    "order-select-c1d8": {
        "service": "tarlatamab-order-select",
        "max_indicator": "info",
        # The plan card (monitoring, infusion) is left out while composing (issue 9); the problems remain.
        "topics": {"premedication", "hydration"},
    },
    "patient-view-on-treatment": {
        "service": "tarlatamab-patient-view",
        "max_indicator": "info",
        "topics": {"summary"},
        "summary": "Tarlatamab: next dose C2D15 (10 mg) due 2026-11-21",
    },
    "patient-view-hold": {
        "service": "tarlatamab-patient-view",
        "max_indicator": "critical",
        "topics": {"summary"},
        "summary_contains": ("on hold", "CRS", "ANC"),
    },
}
RANK = {"info": 0, "warning": 1, "critical": 2}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hook_fixture_replays_like_http(client: Any, name: str) -> None:
    path = REQUESTS / f"{name}.json"
    body = json.loads(path.read_text(encoding="utf-8"))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["replay", "--now", NOW_ARG, str(path)]) == 0
    http = client.post(f"/cds-services/{EXPECTED[name]['service']}", json=body)
    assert http.status_code == 200
    assert out.getvalue().strip().encode() == http.data
    response = http.json
    assert_valid_response(response)
    expected = EXPECTED[name]
    assert {c["source"]["topic"]["code"] for c in response["cards"]} == expected["topics"]
    assert max(RANK[c["indicator"]] for c in response["cards"]) == RANK[expected["max_indicator"]]
    if "summary" in expected:
        assert response["cards"][0]["summary"] == expected["summary"]
    for text in expected.get("summary_contains", ()):
        assert text in response["cards"][0]["summary"] + response["cards"][0]["detail"]


def test_fixture_files_match_their_scenarios() -> None:
    for name, body in scenarios().items():
        committed = json.loads((REQUESTS / f"{name}.json").read_text(encoding="utf-8"))
        assert committed == json.loads(json.dumps(body)), f"{name}.json is stale: regenerate it"


if __name__ == "__main__":
    for fixture_name, request in scenarios().items():
        (REQUESTS / f"{fixture_name}.json").write_text(json.dumps(request, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {fixture_name}.json")
