"""Dose check and too-early check (the clinical specification 2.2; 6.2 Grade 3 CRS re-initiation, dose side)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from card_validator import assert_valid_response
from conftest import NOW
from fhir_builders import (
    dexamethasone_order,
    hook_request,
    normal_labs,
    saline_order,
    sclc_condition,
    tarlatamab_order,
)
from test_schedule import TO_C1D8, TO_C1D15, TO_C2D1, TO_C4D1, episode, history, make_facts, on

from cds_service.findings import Finding
from cds_service.protocol import Protocol
from cds_service.rules import EvaluationContext
from cds_service.rules.dose import check_dose, check_too_early

CTX = EvaluationContext(hook="order-sign", now=NOW)
ORDER_SIGN = "/cds-services/tarlatamab-order-sign"
ORDER_SELECT = "/cds-services/tarlatamab-order-select"
MY_TOPICS = {"dose", "schedule", "administration", "premedication", "hydration", "monitoring"}


def order(dose: float | None, unit: str = "mg", **kw: Any) -> dict[str, Any]:
    return tarlatamab_order("2026-11-21T10:00:00Z", dose, unit, oid="tarla-order-1", **kw)


def dose_findings(
    protocol: Protocol, doses: tuple[tuple[int, float], ...], draft: dict[str, Any], episodes: tuple = ()
) -> list[Finding]:
    facts = make_facts(protocol, history(*doses), drafts=[draft], episodes=episodes)
    (draft_order,) = facts.draft_orders
    return check_dose(facts, draft_order, protocol, CTX)


RESTART_C2D1 = tuple((d + 30, mg) for d, mg in TO_C2D1)  # C2D1 given 37 days ago: gap 37 > 28

# (history, ordered dose, unit, episodes) -> (rule id or None, suggested dose)
DOSE_CASES = [
    # Section 2.2 rows
    pytest.param((), 1, "mg", (), None, None, id="no history, 1 mg: compliant"),
    pytest.param((), 10, "mg", (), "dose.step-up-skipped", 1, id="no history, 10 mg: step-up skipped"),
    pytest.param(((14, 1),), 10, "mg", (), None, None, id="C1D1 gap 14, 10 mg"),
    pytest.param(((14, 1),), 1, "mg", (), "dose.step-up-repeated", 10, id="C1D1 gap 14, 1 mg"),
    pytest.param(((15, 1),), 10, "mg", (), "dose.restart-after-delay", 1, id="C1D1 gap 15, 10 mg"),
    pytest.param(((15, 1),), 1, "mg", (), None, None, id="C1D1 gap 15, 1 mg restart"),
    pytest.param(((28, 1), (21, 10)), 10, "mg", (), None, None, id="C1D8 gap 21, 10 mg"),
    pytest.param(((29, 1), (22, 10)), 10, "mg", (), "dose.restart-after-delay", 1, id="C1D8 gap 22, 10 mg"),
    pytest.param(((29, 1), (22, 10)), 1, "mg", (), None, None, id="C1D8 gap 22, 1 mg"),
    pytest.param(((42, 1), (35, 10), (28, 10)), 10, "mg", (), None, None, id="C1D15 gap 28"),
    pytest.param(((43, 1), (36, 10), (29, 10)), 10, "mg", (), "dose.restart-after-delay", 1, id="C1D15 gap 29"),
    pytest.param(RESTART_C2D1, 10, "mg", (), "dose.restart-after-delay", 1, id="C2D1 gap 37"),
    pytest.param(((30, 1), (14, 1)), 10, "mg", (), None, None, id="R1 gap 14, 10 mg (R2)"),
    pytest.param(((30, 1), (14, 1)), 1, "mg", (), "dose.step-up-repeated", 10, id="R1 gap 14, 1 mg"),
    pytest.param(((31, 1), (15, 1)), 10, "mg", (), "dose.restart-after-delay", 1, id="R1 gap 15"),
    pytest.param(((45, 1), (28, 1), (21, 10)), 10, "mg", (), None, None, id="R2 gap 21"),
    pytest.param(((46, 1), (29, 1), (22, 10)), 10, "mg", (), "dose.restart-after-delay", 1, id="R2 gap 22"),
    pytest.param(TO_C4D1, 10, "mg", (), None, None, id="maintenance C4D15"),
    pytest.param(TO_C4D1, 1, "mg", (), "dose.step-up-repeated", 10, id="maintenance, 1 mg"),
    # Section 6.2: first Grade 3 CRS after the last dose
    pytest.param(TO_C2D1, 10, "mg", (episode("crs", 3, 5),), "dose.restart-after-crs-grade3", 1, id="CRS G3, 10 mg"),
    pytest.param(TO_C2D1, 1, "mg", (episode("crs", 3, 5),), None, None, id="CRS G3, 1 mg"),
    pytest.param(TO_C2D1, 10, "mg", (episode("crs", 2, 5),), None, None, id="CRS G2, 10 mg"),
    # Units and amounts
    pytest.param((), 1000, "ug", (), None, None, id="1000 ug = 1 mg at C1D1"),
    pytest.param(TO_C1D8, 10000, "ug", (), None, None, id="10000 ug = 10 mg at C1D15"),
    pytest.param((), 10000, "ug", (), "dose.step-up-skipped", 1, id="10000 ug at C1D1"),
    pytest.param(TO_C1D8, 5, "mg", (), "dose.invalid-amount", 10, id="5 mg"),
    pytest.param(TO_C1D8, 100, "mg", (), "dose.invalid-amount", 10, id="100 mg"),
    pytest.param((), 100, "mg", (), "dose.invalid-amount", 1, id="100 mg at C1D1"),
    pytest.param(TO_C1D8, 0.9, "mg", (), "dose.invalid-amount", 10, id="0.9 mg"),
    pytest.param(TO_C1D8, 10, "U", (), "dose.invalid-amount", 10, id="unit U"),
    pytest.param(TO_C1D8, None, "mg", (), "dose.invalid-amount", 10, id="no dose"),
]


@pytest.mark.parametrize(("doses", "value", "unit", "episodes", "rule_id", "suggested"), DOSE_CASES)
def test_dose_check(
    protocol: Protocol,
    doses: tuple[tuple[int, float], ...],
    value: float | None,
    unit: str,
    episodes: tuple,
    rule_id: str | None,
    suggested: int | None,
) -> None:
    findings = dose_findings(protocol, doses, order(value, unit), episodes)
    if rule_id is None:
        assert findings == []
        return
    (finding,) = findings
    assert finding.rule_id == rule_id
    assert finding.order_id == "tarla-order-1"
    (suggestion,) = finding.suggestions
    assert (suggestion.kind, suggestion.order_id, suggestion.params) == (
        "update-dose",
        "tarla-order-1",
        {"dose_mg": suggested},
    )
    assert suggestion.params["dose_mg"] in (1, 10)
    assert finding.values["expected_mg"] == suggested
    assert any(e.label == "Ordered dose" and e.reference == "MedicationRequest/tarla-order-1" for e in finding.evidence)


@pytest.mark.parametrize(
    ("rule_id", "indicator"),
    [
        ("dose.step-up-skipped", "critical"),
        ("dose.restart-after-delay", "critical"),
        ("dose.restart-after-crs-grade3", "critical"),
        ("dose.step-up-repeated", "warning"),
        ("dose.invalid-amount", "critical"),
        ("schedule.too-early", "warning"),
    ],
)
def test_dose_rule_indicators_match_the_spec(protocol: Protocol, rule_id: str, indicator: str) -> None:
    assert protocol.rule(rule_id).indicator_for("order-sign") == indicator
    assert protocol.rule(rule_id).indicator_for("order-select") == indicator


def test_restart_finding_names_the_gap_and_last_dose(protocol: Protocol) -> None:
    (finding,) = dose_findings(protocol, RESTART_C2D1, order(10))
    values = finding.values
    assert (values["last_position"], values["gap_days"], values["max_gap_days"]) == ("C2D1", 37, 28)
    assert (values["position"], values["ordered"], values["planned_date"]) == (
        "R1 (restart step-up)",
        "10 mg",
        "2026-11-21",
    )
    last = next(e for e in finding.evidence if e.label == "Last tarlatamab dose")
    assert last.date == "2026-10-15" and last.reference == "MedicationAdministration/adm-3"


def test_crs_restart_finding_cites_the_episode(protocol: Protocol) -> None:
    crs = episode("crs", 3, 5)
    (finding,) = dose_findings(protocol, TO_C2D1, order(10), (crs,))
    assert (finding.values["crs_date"], finding.values["crs_state"]) == ("2026-11-16", "resolved")
    assert any(e.reference == crs.references[0] for e in finding.evidence)


def test_invalid_amount_shows_the_mg_equivalent_and_the_problem(protocol: Protocol) -> None:
    (finding,) = dose_findings(protocol, TO_C1D8, order(5000, "ug"))
    assert finding.values["ordered"] == "5000 ug (= 5 mg)"
    (unit_finding,) = dose_findings(protocol, TO_C1D8, order(10, "U"))
    assert "cannot be converted to mg" in str(unit_finding.values["problem"])


def test_no_dose_finding_when_the_history_is_unavailable(protocol: Protocol) -> None:
    facts = make_facts(protocol, drafts=[order(10)], unavailable=frozenset({"administrations"}))
    (draft,) = facts.draft_orders
    assert check_dose(facts, draft, protocol, CTX) == []
    assert check_too_early(facts, draft, protocol, CTX) == []


# --- too early: planned fewer than (interval - 1) days after the last dose ---------------------------
# (history ending `gap` days before the planned date) -> too early?
def shifted(doses: tuple[tuple[int, float], ...], last_gap: int) -> tuple[tuple[int, float], ...]:
    """The same history moved so that its last dose lies `last_gap` days before the planned date."""
    offset = last_gap - doses[-1][0]
    return tuple((d + offset, mg) for d, mg in doses)


TOO_EARLY_CASES = [
    pytest.param(((6, 1),), False, id="C1D1 +6: ok"),
    pytest.param(((5, 1),), True, id="C1D1 +5: too early"),
    pytest.param(((0, 1),), True, id="C1D1 same day"),
    pytest.param(shifted(TO_C1D8, 6), False, id="C1D8 +6: ok"),
    pytest.param(shifted(TO_C1D8, 5), True, id="C1D8 +5: too early"),
    pytest.param(((30, 1), (6, 1)), False, id="R1 +6: ok"),
    pytest.param(((30, 1), (5, 1)), True, id="R1 +5: too early"),
    pytest.param(shifted(TO_C1D15, 13), False, id="C1D15 +13: ok"),
    pytest.param(shifted(TO_C1D15, 12), True, id="C1D15 +12: too early"),
    pytest.param(((45, 1), (27, 1), (13, 10)), False, id="R2 +13: ok"),
    pytest.param(((45, 1), (26, 1), (12, 10)), True, id="R2 +12: too early"),
    pytest.param(shifted(TO_C4D1, 13), False, id="C4D1 +13: ok"),
    pytest.param(shifted(TO_C4D1, 12), True, id="C4D1 +12: too early"),
    pytest.param(shifted(TO_C4D1, 7), True, id="C4D1 +7: weekly is too early in maintenance"),
    pytest.param((), False, id="first dose"),
]


@pytest.mark.parametrize(("doses", "too_early"), TOO_EARLY_CASES)
def test_too_early(protocol: Protocol, doses: tuple[tuple[int, float], ...], too_early: bool) -> None:
    facts = make_facts(protocol, history(*doses), drafts=[order(10)])
    (draft,) = facts.draft_orders
    findings = check_too_early(facts, draft, protocol, CTX)
    assert [f.rule_id for f in findings] == (["schedule.too-early"] if too_early else [])


def test_too_early_values(protocol: Protocol) -> None:
    facts = make_facts(protocol, history(*shifted(TO_C1D15, 10)), drafts=[order(10)])
    (finding,) = check_too_early(facts, facts.draft_orders[0], protocol, CTX)
    assert finding.values["last_position"] == "C1D15"
    assert (finding.values["gap_days"], finding.values["interval_days"]) == (10, 14)
    assert finding.values["earliest_date"] == "2026-11-24"  # 2026-11-11 + 14 - 1
    assert finding.values["due_date"] == "2026-11-25"


# --- through the HTTP endpoint ----------------------------------------------------------------------------
def _request(drafts: list[dict[str, Any]], doses: tuple[tuple[int, float], ...], hook: str = "order-sign") -> dict:
    return hook_request(
        hook,
        drafts=drafts,
        administrations=history(*doses),
        observations=normal_labs(on(1, 7)),
        conditions=[sclc_condition()],
    )


def _post(make_app: Callable[..., Any], path: str, body: dict[str, Any]) -> dict[str, Any]:
    with make_app().test_client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    payload = response.get_json()
    assert_valid_response(payload)
    return payload


def _my_cards(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in payload["cards"] if c["source"]["topic"]["code"] in MY_TOPICS]


def test_step_up_skipped_card_suggests_updating_the_draft_to_1mg(make_app: Callable[..., Any]) -> None:
    premeds = [dexamethasone_order("2026-11-21T09:00:00Z"), saline_order("2026-11-21T11:00:00Z")]
    payload = _post(make_app, ORDER_SIGN, _request([order(10), *premeds], ()))
    dose_cards = [c for c in _my_cards(payload) if c["source"]["topic"]["code"] == "dose"]
    (card,) = dose_cards
    assert card["indicator"] == "critical"
    assert "Change dose to 1 mg" in card["summary"] and "step-up" in card["summary"] and "C1D1" in card["summary"]
    (suggestion,) = card["suggestions"]
    (action,) = suggestion["actions"]
    assert action["type"] == "update"
    resource = action["resource"]
    assert resource["id"] == "tarla-order-1"
    assert resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] == {
        "value": 1,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert card["overrideReasons"]


def test_restart_after_delay_card_through_the_endpoint(make_app: Callable[..., Any]) -> None:
    payload = _post(make_app, ORDER_SIGN, _request([order(10)], RESTART_C2D1))
    by_topic = {c["source"]["topic"]["code"]: c for c in _my_cards(payload)}
    assert by_topic["dose"]["indicator"] == "critical"
    assert "37 days since C2D1" in by_topic["dose"]["summary"]
    assert (
        by_topic["dose"]["suggestions"][0]["actions"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0][
            "doseQuantity"
        ]["value"]
        == 1
    )
    # The dose is R1: premedication and hydration are required and extended monitoring applies.
    assert by_topic["premedication"]["indicator"] == "warning"
    assert by_topic["hydration"]["indicator"] == "warning"
    assert "22-24 h" in by_topic["monitoring"]["summary"]


def test_too_early_card_through_the_endpoint(make_app: Callable[..., Any]) -> None:
    payload = _post(make_app, ORDER_SIGN, _request([order(10)], shifted(TO_C4D1, 9)))
    schedule_cards = [c for c in _my_cards(payload) if c["source"]["topic"]["code"] == "schedule"]
    (card,) = schedule_cards
    assert card["indicator"] == "warning"
    assert "C4D15" in card["summary"] and "9 days after C4D1" in card["summary"]
    assert not [c for c in _my_cards(payload) if c["source"]["topic"]["code"] == "dose"]


def test_compliant_maintenance_order_has_no_dose_or_schedule_card(make_app: Callable[..., Any]) -> None:
    payload = _post(make_app, ORDER_SIGN, _request([order(10000, "ug")], shifted(TO_C4D1, 14)))
    topics = sorted(c["source"]["topic"]["code"] for c in _my_cards(payload))
    # One plan card (issue 9): monitoring and the infusion in one info card.
    assert topics == ["monitoring"]
    (plan,) = _my_cards(payload)
    assert plan["indicator"] == "info" and "250 mL/h" in plan["detail"]
