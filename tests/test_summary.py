"""The patient-view summary card (the service contract): next dose, monitoring, labs due, holds."""

from __future__ import annotations

from typing import Any

import pytest
from card_validator import assert_valid_response
from fhir_builders import administration, crs_condition, hook_request, normal_labs

PATIENT_VIEW = "/cds-services/tarlatamab-patient-view"


def _summary(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200
    assert_valid_response(response.json)
    cards = response.json["cards"]
    assert len(cards) == 1, "patient-view gives exactly one summary card"
    card = cards[0]
    assert card["source"]["topic"]["code"] == "summary"
    return card


def test_never_treated_patient_gets_no_card(client: Any) -> None:
    response = client.post(PATIENT_VIEW, json=hook_request("patient-view"))
    assert response.json == {"cards": []}


def test_not_done_administrations_do_not_make_a_patient_treated(client: Any) -> None:
    body = hook_request("patient-view", administrations=[administration("2026-11-10T14:00:00Z", 1, status="not-done")])
    assert client.post(PATIENT_VIEW, json=body).json == {"cards": []}


def test_on_schedule_patient_next_dose_and_monitoring(client: Any) -> None:
    # C1D1 10-10, C1D8 10-17, C1D15 10-24, C2D1 11-07 -> C2D15 due 11-21 (today)
    given = [
        administration("2026-10-10T14:00:00Z", 1),
        administration("2026-10-17T14:00:00Z", 10),
        administration("2026-10-24T14:00:00Z", 10),
        administration("2026-11-07T14:00:00Z", 10),
    ]
    card = _summary(
        client, hook_request("patient-view", administrations=given, observations=normal_labs("2026-11-20T07:00:00Z"))
    )
    assert card["indicator"] == "info"
    assert card["summary"] == "Tarlatamab: next dose C2D15 (10 mg) due 2026-11-21"
    assert "6-8 hours" in card["detail"]  # C2D15 observation time
    assert "C2D1 on 2026-11-07" in card["detail"]


def test_overdue_dose_within_the_restart_window_is_due_today(client: Any) -> None:
    # C1D1 on 11-10: C1D8 was due 11-17; 11 days later is still within 14 days -> 10 mg today
    card = _summary(client, hook_request("patient-view", administrations=[administration("2026-11-10T14:00:00Z", 1)]))
    assert "C1D8 (10 mg) due 2026-11-21" in card["summary"]
    assert "overdue" in card["detail"]
    assert "2026-11-17" in card["detail"]


def test_long_gap_summary_announces_the_restart(client: Any) -> None:
    given = [administration("2026-09-01T14:00:00Z", 1), administration("2026-09-08T14:00:00Z", 10)]
    card = _summary(client, hook_request("patient-view", administrations=given))
    assert "R1" in card["summary"] and "(1 mg)" in card["summary"]
    assert "restarts the step-up schedule" in card["detail"]


def test_missing_labs_are_listed_as_due(client: Any) -> None:
    card = _summary(client, hook_request("patient-view", administrations=[administration("2026-11-14T14:00:00Z", 1)]))
    assert "Pre-dose labs" in card["detail"]
    assert "ANC" in card["detail"]


@pytest.mark.parametrize(
    ("conditions", "variant_text"),
    [
        ([crs_condition(2, "2026-11-15T20:00:00Z")], "on hold"),
        ([crs_condition(4, "2026-10-20T20:00:00Z", abatement="2026-10-25T10:00:00Z")], "Permanently discontinue"),
    ],
)
def test_hold_or_discontinuation_makes_the_summary_critical(
    client: Any, conditions: list[dict[str, Any]], variant_text: str
) -> None:
    given = [administration("2026-11-14T14:00:00Z", 1)]
    card = _summary(
        client,
        hook_request(
            "patient-view",
            administrations=given,
            conditions=conditions,
            observations=normal_labs("2026-11-20T07:00:00Z"),
        ),
    )
    assert card["indicator"] == "critical"
    assert variant_text in card["summary"]
    assert "CRS" in card["detail"]
    # The number of reasons in words, never "reason(s)" (issue 9).
    assert "1 reason" in card["summary"] and "(s)" not in card["summary"]


def test_unavailable_history_is_a_warning_not_silence(client: Any) -> None:
    body = hook_request("patient-view")
    body["prefetch"]["administrations"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception"}],
    }
    card = _summary(client, body)
    assert card["indicator"] == "warning"
    assert "unavailable" in card["summary"]


def test_summary_rule_unit_gives_one_finding_with_the_next_dose(protocol: Any) -> None:
    from dataclasses import replace

    from conftest import NOW

    from cds_service.facts.build import build_facts
    from cds_service.rules import EvaluationContext
    from cds_service.rules.summary import patient_summary

    given = [administration("2026-11-14T14:00:00Z", 1)]
    facts = build_facts(
        patient_id="p",
        hook="patient-view",
        resources={"administrations": given, "observations": normal_labs("2026-11-20T07:00:00Z")},
        draft_entries=(),
        selections=(),
        protocol=protocol,
        now=NOW,
    )
    ctx = EvaluationContext(hook="patient-view", now=NOW)
    [finding] = patient_summary(facts, protocol, ctx)
    assert finding.rule_id == "summary.patient-view"
    assert finding.values["position"] == "C1D8"
    assert finding.values["expected_mg"] == 10
    assert finding.values["next_date"] == "2026-11-21"
    assert finding.indicator == "info"
    assert patient_summary(replace(facts, administrations=()), protocol, ctx) == []
