"""Data the service could not obtain or interpret always shows as a data-quality card (protocol section 10)."""

from __future__ import annotations

from typing import Any

import pytest
from card_validator import assert_valid_response
from conftest import NOW
from fhir_builders import administration, hook_request, normal_labs, tarlatamab_order

from cds_service.facts import DataIssue, PatientFacts
from cds_service.protocol import Protocol
from cds_service.rules import EvaluationContext
from cds_service.rules.data_quality import check_data_quality

ORDER_SIGN = "/cds-services/tarlatamab-order-sign"
OPERATION_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "timeout", "diagnostics": "upstream timeout"}],
}


def _facts(issues: tuple[DataIssue, ...] = (), unavailable: frozenset[str] = frozenset()) -> PatientFacts:
    return PatientFacts(
        patient_id="p",
        evaluation_time=NOW,
        birth_date=None,
        gender=None,
        administrations=(),
        draft_orders=(),
        companion_orders=(),
        labs={},
        toxicity_points=(),
        episodes=(),
        pregnancy=(),
        breastfeeding=(),
        sclc_diagnoses=(),
        platinum_history=(),
        active_infections=(),
        issues=issues,
        unavailable=unavailable,
    )


CTX = EvaluationContext(hook="order-sign", now=NOW)


def test_no_issue_no_data_quality_finding(protocol: Protocol) -> None:
    assert check_data_quality(_facts(), protocol, CTX) == []


def test_unavailable_and_unusable_data_make_one_finding_each(protocol: Protocol) -> None:
    issues = (
        DataIssue("unavailable", "observations", "EHR could not retrieve the labs"),
        DataIssue("unusable", "observations", "ANC unit 'cells' unknown", reference="Observation/o1", affects="ANC"),
        DataIssue("unusable", "patient", "birth date '1961' is partial", affects="age"),
    )
    findings = check_data_quality(_facts(issues, frozenset({"observations"})), protocol, CTX)
    by_rule = {f.rule_id: f for f in findings}
    assert set(by_rule) == {"data-quality.unavailable", "data-quality.unusable"}
    assert by_rule["data-quality.unusable"].values["count"] == 2
    assert by_rule["data-quality.unusable"].values["affected"] == "ANC, age"
    assert [e.reference for e in by_rule["data-quality.unusable"].evidence] == ["Observation/o1", None]


def test_unavailable_history_is_critical_dose_history_finding(protocol: Protocol) -> None:
    issues = (DataIssue("unavailable", "administrations", "EHR could not retrieve the history"),)
    findings = check_data_quality(_facts(issues, frozenset({"administrations"})), protocol, CTX)
    # One card per problem (issue 9, section 12 "once per request"): the critical dose-history card carries the
    # history's issue; no second, generic "unavailable" card repeats it.
    assert [f.rule_id for f in findings] == ["data-quality.dose-history"]
    assert [e.value for e in findings[0].evidence] == ["EHR could not retrieve the history"]
    assert protocol.rule("data-quality.dose-history").indicator == "critical"
    # Boundary: another dataset's issue still gets its own card beside it.
    other = (*issues, DataIssue("unavailable", "observations", "EHR could not retrieve the labs"))
    findings = check_data_quality(_facts(other, frozenset({"administrations", "observations"})), protocol, CTX)
    assert [f.rule_id for f in findings] == ["data-quality.dose-history", "data-quality.unavailable"]


def _cards(response: Any, topic: str) -> list[dict[str, Any]]:
    return [c for c in response.json["cards"] if c["source"]["topic"]["code"] == topic]


@pytest.mark.parametrize(
    ("key", "expect_rule_indicator"),
    [("observations", "warning"), ("administrations", "critical")],
)
def test_operation_outcome_prefetch_gives_a_visible_card(client: Any, key: str, expect_rule_indicator: str) -> None:
    body = hook_request(
        drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 10)],
        administrations=[administration("2026-11-07T09:00:00Z", 10), administration("2026-10-24T09:00:00Z", 10)],
        observations=normal_labs("2026-11-20T07:30:00Z"),
    )
    body["prefetch"][key] = OPERATION_OUTCOME
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    assert_valid_response(response.json)
    cards = _cards(response, "data-quality")
    assert cards, "a failed prefetch must never pass silently"
    assert any(c["indicator"] == expect_rule_indicator for c in cards)
    assert all(c["detail"] for c in cards)


def test_malformed_prefetch_value_is_reported_not_a_500(client: Any) -> None:
    body = hook_request(drafts=[tarlatamab_order("2026-11-21T10:00:00Z", 1)])
    body["prefetch"]["conditions"] = ["not", "a", "bundle"]
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    cards = _cards(response, "data-quality")
    assert any("conditions" in c["detail"] or "diagnoses" in c["detail"] for c in cards)
