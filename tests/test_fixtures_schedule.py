"""Realistic order-sign request files for the schedule (fixtures/requests/schedule-*.json), replayed.

Each file is a complete CDS Hooks order-sign request (all five prefetch keys as searchset Bundles): a male
patient with extensive-stage SCLC, a prior carboplatin administration, normal CBC and hepatic labs drawn the
day before, the tarlatamab history and a draft tarlatamab order planned for 2026-11-21, with the
premedication and hydration drafts where the position needs them.

Regenerate the files after changing the builders below:  PYTHONPATH=. python tests/test_fixtures_schedule.py
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from card_validator import assert_valid_response
from conftest import FIXTURES
from fhir_builders import (
    NORMAL_LABS,
    administration,
    dexamethasone_order,
    hook_request,
    lab,
    patient,
    platinum_administration,
    platinum_request,
    saline_order,
    sclc_condition,
    tarlatamab_order,
)

from cds_service.cli import main

REQUESTS = FIXTURES / "requests"
NOW_ARG = "2026-11-21T09:00:00Z"
PLANNED = "2026-11-21T10:00:00Z"
MY_TOPICS = {"dose", "schedule", "administration", "premedication", "hydration", "monitoring"}
# The leading rule of a card: its anchor on the protocol page (source.url), which every card carries.
RULE_RE = re.compile(r"/protocol#rule-(.+)$")

# Dates of the doses given, per scenario: (ISO date, mg), oldest first. Doses are given at 09:30 local time.
FIRST_CYCLES = [
    ("2026-08-01", 1),  # C1D1
    ("2026-08-08", 10),  # C1D8
    ("2026-08-15", 10),  # C1D15
    ("2026-08-29", 10),  # C2D1
    ("2026-09-12", 10),  # C2D15
    ("2026-09-26", 10),  # C3D1
    ("2026-10-10", 10),  # C3D15
    ("2026-10-24", 10),  # C4D1
    ("2026-11-07", 10),  # C4D15: the planned dose of 2026-11-21 is C5D1
]
HISTORIES: dict[str, list[tuple[str, float]]] = {
    "c1d1": [],
    "c1d8": [("2026-11-14", 1)],
    "c2d15": [("2026-10-10", 1), ("2026-10-17", 10), ("2026-10-24", 10), ("2026-11-07", 10)],
    "c3d1": [("2026-09-26", 1), ("2026-10-03", 10), ("2026-10-10", 10), ("2026-10-24", 10), ("2026-11-07", 10)],
    "c5d1": FIRST_CYCLES,
    "restart-after-delay": [("2026-09-03", 1), ("2026-09-10", 10), ("2026-09-17", 10), ("2026-10-01", 10)],
    "step-up-skipped": [],
}
# Dose ordered and whether the clinician included premedication and hydration.
ORDERS: dict[str, tuple[float, bool]] = {
    "c1d1": (1, True),
    "c1d8": (10, True),
    "c2d15": (10, False),
    "c3d1": (10, False),
    "c5d1": (10, False),
    "restart-after-delay": (10, False),  # the clinician thinks this is C2D15
    "step-up-skipped": (10, True),
}
# Expected cards of this engineer's topics: leading rule id -> indicator. The infusion advice
# (administration.infusion) is a line of the one plan card led by monitoring.schedule (issue 9).
EXPECTED: dict[str, dict[str, str]] = {
    "c1d1": {"monitoring.schedule": "info"},
    "c1d8": {"monitoring.schedule": "info"},
    "c2d15": {"monitoring.schedule": "info"},
    "c3d1": {"monitoring.schedule": "info"},
    "c5d1": {"monitoring.schedule": "info"},
    "restart-after-delay": {
        "dose.restart-after-delay": "critical",
        "premedication.dexamethasone-missing": "warning",
        "hydration.saline-missing": "warning",
        "monitoring.schedule": "info",
    },
    "step-up-skipped": {
        "dose.step-up-skipped": "critical",
        "monitoring.schedule": "info",
    },
}
# The monitoring card's summary names the position and its monitoring (spec section 5).
MONITORING: dict[str, str] = {
    "c1d1": "C1D1 plan: monitor 22-24 h",
    "c1d8": "C1D8 plan: monitor 22-24 h",
    "c2d15": "C2D15 plan: observe 6-8 h",
    "c3d1": "C3D1 plan: observe 3-4 h",
    "c5d1": "C5D1 plan: observe 2 h",
    "restart-after-delay": "R1 (restart step-up) plan: monitor 22-24 h",
    "step-up-skipped": "C1D1 plan: monitor 22-24 h",
}


def build_request(name: str) -> dict[str, Any]:
    """The order-sign request of scenario `name`, deterministic (fixed ids and hookInstance)."""
    doses = [
        administration(f"{day}T09:30:00+01:00", mg, aid=f"tarla-adm-{i + 1:02d}")
        for i, (day, mg) in enumerate(HISTORIES[name])
    ]
    carboplatin = platinum_administration("2026-05-12T10:00:00+01:00")
    carboplatin["id"] = "carboplatin-adm-01"
    carboplatin_order = platinum_request("2026-05-11T15:00:00+01:00")
    carboplatin_order["id"] = "carboplatin-req-01"
    labs = [
        lab(analyte, value, "2026-11-20T07:45:00+01:00", oid=f"lab-{analyte}-20261120")
        for analyte, value in NORMAL_LABS.items()
    ]
    sclc = sclc_condition("2025-12-02")
    sclc["id"] = "sclc-01"
    dose, premedicated = ORDERS[name]
    drafts = [tarlatamab_order(PLANNED, dose, oid="tarla-order-1")]
    if premedicated:
        drafts += [
            dexamethasone_order("2026-11-21T09:00:00Z", 8, oid="dexa-order-1"),
            saline_order("2026-11-21T11:00:00Z", 1000, oid="nacl-order-1"),
        ]
    return hook_request(
        "order-sign",
        drafts=drafts,
        patient_resource=patient(),
        medications=[carboplatin_order],
        administrations=[carboplatin, *doses],
        observations=labs,
        conditions=[sclc],
        hook_instance=str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:tarlatamab-cds:fixture:schedule-{name}")),
    )


def fixture_path(name: str) -> Path:
    return REQUESTS / f"schedule-{name}.json"


def write_fixtures() -> None:
    REQUESTS.mkdir(parents=True, exist_ok=True)
    for name in HISTORIES:
        fixture_path(name).write_bytes(orjson.dumps(build_request(name), option=orjson.OPT_INDENT_2) + b"\n")


def rule_cards(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """This engineer's cards by rule id (the rule line of the detail names it)."""
    out: dict[str, dict[str, Any]] = {}
    for card in body["cards"]:
        if card["source"]["topic"]["code"] not in MY_TOPICS:
            continue
        match = RULE_RE.search(card["source"]["url"])
        assert match, card["source"]
        assert match[1] not in out, f"two cards of {match[1]} for one order"
        out[match[1]] = card
    return out


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_fixture_file_is_the_generated_request(name: str) -> None:
    assert orjson.loads(fixture_path(name).read_bytes()) == build_request(name)


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_replay_and_http_agree_and_give_the_expected_cards(
    name: str,
    make_app: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
    cli_env: None,
) -> None:
    path = fixture_path(name)
    assert main(["replay", "--now", NOW_ARG, str(path)]) == 0
    replayed = orjson.loads(capsys.readouterr().out)

    with make_app().test_client() as client:
        response = client.post(
            "/cds-services/tarlatamab-order-sign", data=path.read_bytes(), content_type="application/json"
        )
    assert response.status_code == 200
    served = response.get_json()

    assert replayed == served
    assert_valid_response(served)
    cards = rule_cards(served)
    assert {rule: card["indicator"] for rule, card in cards.items()} == EXPECTED[name]
    assert cards["monitoring.schedule"]["summary"].startswith(MONITORING[name])
    assert "administration.infusion" in cards["monitoring.schedule"]["detail"]  # the infusion is in the plan


def test_restart_fixture_suggests_the_1mg_step_up(make_app: Callable[..., Any]) -> None:
    with make_app().test_client() as client:
        response = client.post("/cds-services/tarlatamab-order-sign", json=build_request("restart-after-delay"))
    card = rule_cards(response.get_json())["dose.restart-after-delay"]
    assert "51 days since C2D1" in card["summary"]
    action = card["suggestions"][0]["actions"][0]
    assert action["type"] == "update"
    assert action["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 1


if __name__ == "__main__":
    write_fixtures()
