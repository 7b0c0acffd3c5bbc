"""Administration (the clinical specification 3), premedication and hydration (4), monitoring (5)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from card_validator import assert_valid_response
from conftest import NOW
from fhir_builders import dexamethasone_order, hook_request, normal_labs, saline_order, sclc_condition, tarlatamab_order
from test_rules_dose import MY_TOPICS, shifted
from test_schedule import TO_C1D8, TO_C1D15, TO_C2D1, TO_C4D1, episode, history, make_facts, on

from cds_service.findings import Finding
from cds_service.protocol import Protocol, parse_protocol
from cds_service.rules import EvaluationContext
from cds_service.rules.administration import check_administration
from cds_service.rules.monitoring import check_monitoring
from cds_service.rules.premedication import check_hydration, check_premedication

CTX = EvaluationContext(hook="order-sign", now=NOW)
PLANNED = "2026-11-21T10:00:00Z"

# Histories after which the planned dose (2026-11-21) takes each position.
BEFORE = {
    "C1D1": (),
    "C1D8": ((7, 1),),
    "C1D15": TO_C1D8,
    "C2D1": shifted(TO_C1D15, 14),
    "C2D15": shifted(TO_C2D1, 14),
    "C3D1": shifted(((63, 1), (56, 10), (49, 10), (35, 10), (21, 10)), 14),
    "C4D15": shifted(TO_C4D1, 14),
    "C5D1": shifted((*TO_C4D1, (0, 10)), 14),
    "R1": ((60, 1), (53, 10), (46, 10)),  # C1D15 46 days ago: restart
    "R2": ((60, 1), (53, 10), (46, 10), (7, 1)),  # R1 a week ago: R2 = C2D1
}


def facts_at(
    protocol: Protocol,
    position: str,
    tarlatamab: dict[str, Any] | None = None,
    *,
    drafts: list[dict[str, Any]] = (),  # type: ignore[assignment]
    medications: list[dict[str, Any]] = (),  # type: ignore[assignment]
    episodes: tuple = (),
) -> Any:
    draft = tarlatamab or tarlatamab_order(PLANNED, 1 if position in ("C1D1", "R1") else 10)
    return make_facts(
        protocol, history(*BEFORE[position]), drafts=[draft, *drafts], medications=medications, episodes=episodes
    )


def run(rule: Callable[..., list[Finding]], facts: Any, protocol: Protocol) -> list[Finding]:
    return rule(facts, facts.draft_orders[0], protocol, CTX)


@pytest.mark.parametrize(
    ("position", "label"),
    [
        ("C1D1", "C1D1"),
        ("C1D8", "C1D8"),
        ("C1D15", "C1D15"),
        ("C2D1", "C2D1"),
        ("C2D15", "C2D15"),
        ("C3D1", "C3D1"),
        ("C4D15", "C4D15"),
        ("C5D1", "C5D1"),
        ("R1", "R1 (restart step-up)"),
        ("R2", "R2 (restart, C2D1)"),
    ],
)
def test_position_histories(protocol: Protocol, position: str, label: str) -> None:
    """The histories used below put the planned dose at the intended position (guards the other tests)."""
    (finding,) = run(check_administration, facts_at(protocol, position), protocol)
    assert finding.values["position"] == label


# --- section 3: administration --------------------------------------------------------------------------
ADMIN_CASES = [
    pytest.param((250, "mL/h"), (1, "h"), None, id="250 mL/h over 1 h"),
    pytest.param(None, None, None, id="nothing stated"),
    pytest.param((262.5, "mL/h"), (60, "min"), None, id="rate +5%: within tolerance"),
    pytest.param((263, "mL/h"), (60, "min"), "a rate of 263 mL/h", id="rate +5.2%: conflict"),
    pytest.param((237.5, "mL/h"), (63, "min"), None, id="rate -5%, 63 min: within tolerance"),
    pytest.param((500, "mL/h"), (1, "h"), "a rate of 500 mL/h", id="500 mL/h"),
    pytest.param((250, "mL/h"), (30, "min"), "a duration of 30 min", id="30 min"),
    pytest.param((250, "mL/h"), (64, "min"), "a duration of 64 min", id="64 min"),
    pytest.param((125, "mL/h"), (2, "h"), "a rate of 125 mL/h and a duration of 120 min", id="125 mL/h over 2 h"),
    pytest.param((4.2, "mL/min"), (1, "h"), None, id="4.2 mL/min = 252 mL/h"),
    pytest.param((83, "[drp]/min"), (1, "h"), "a rate of 83 [drp]/min (unit not checkable)", id="drops per minute"),
    pytest.param((250, "mL/h"), (1, "d"), "a duration of 1 d (unit not checkable)", id="duration in days"),
]


@pytest.mark.parametrize(("rate", "duration", "stated"), ADMIN_CASES)
def test_administration(
    protocol: Protocol, rate: tuple[float, str] | None, duration: tuple[float, str] | None, stated: str | None
) -> None:
    order = tarlatamab_order(PLANNED, 10, rate=rate, duration=duration)
    findings = run(check_administration, facts_at(protocol, "C2D1", order), protocol)
    (finding,) = findings  # exactly one administration card per order
    if stated is None:
        assert finding.rule_id == "administration.infusion"
    else:
        assert finding.rule_id == "administration.rate-conflict"
        assert finding.values["stated"] == stated
    assert finding.order_id == "tarla-order-1"
    assert all(e.reference == "MedicationRequest/tarla-order-1" for e in finding.evidence)


def test_administration_indicators(protocol: Protocol) -> None:
    assert protocol.rule("administration.infusion").indicator == "info"
    assert protocol.rule("administration.rate-conflict").indicator == "warning"


# --- section 4: premedication and hydration -------------------------------------------------------------
DEXA = dexamethasone_order("2026-11-21T09:00:00Z", 8)
NACL = saline_order("2026-11-21T11:00:00Z", 1000)

PREMED_CASES = [
    # position, drafts, active medications -> (premedication rule, hydration rule)
    *(
        pytest.param(pos, [DEXA, NACL], [], None, None, id=f"{pos}: both ordered")
        for pos in ("C1D1", "C1D8", "R1", "R2")
    ),
    *(
        pytest.param(
            pos, [], [], "premedication.dexamethasone-missing", "hydration.saline-missing", id=f"{pos}: both missing"
        )
        for pos in ("C1D1", "C1D8", "R1", "R2")
    ),
    *(
        pytest.param(
            pos,
            [dexamethasone_order("2026-11-21T09:00:00Z", 4), saline_order("2026-11-21T11:00:00Z", 500)],
            [],
            "premedication.dexamethasone-dose",
            "hydration.saline-volume",
            id=f"{pos}: wrong amounts",
        )
        for pos in ("C1D1", "C1D8", "R1", "R2")
    ),
    pytest.param("C1D15", [], [], None, None, id="C1D15: not required"),
    pytest.param("C2D1", [], [], None, None, id="C2D1: not required"),
    pytest.param("C5D1", [], [], None, None, id="C5D1: not required"),
    pytest.param("C1D8", [DEXA], [], None, "hydration.saline-missing", id="C1D8: saline missing only"),
    pytest.param("C1D8", [NACL], [], "premedication.dexamethasone-missing", None, id="C1D8: dexa missing only"),
    pytest.param(
        "C1D8",
        [],
        [
            dexamethasone_order("2026-11-22T09:00:00Z", oid="dexa-active", status="active"),
            saline_order("2026-11-20T11:00:00Z", oid="nacl-active", status="active"),
        ],
        "premedication.dexamethasone-missing",
        "hydration.saline-missing",
        id="active orders 1 day away do not count (13.1: same local date only)",
    ),
    pytest.param(
        "C1D8",
        [],
        [
            dexamethasone_order("2026-11-21T07:00:00Z", oid="dexa-active", status="active"),
            saline_order("2026-11-21T11:00:00Z", oid="nacl-active", status="active"),
        ],
        None,
        None,
        id="active orders of the same local date count",
    ),
    pytest.param(
        "C1D8",
        [],
        [
            dexamethasone_order("2026-11-23T09:00:00Z", oid="dexa-active", status="active"),
            saline_order("2026-11-19T11:00:00Z", oid="nacl-active", status="active"),
        ],
        "premedication.dexamethasone-missing",
        "hydration.saline-missing",
        id="active orders 2 days away do not count",
    ),
    pytest.param(
        "C1D8",
        [],
        [
            dexamethasone_order("2026-11-21T09:00:00Z", oid="dexa-done", status="completed"),
            saline_order("2026-11-21T11:00:00Z", oid="nacl-stopped", status="stopped"),
        ],
        "premedication.dexamethasone-missing",
        "hydration.saline-missing",
        id="inactive orders do not count",
    ),
    pytest.param(
        "C1D1",
        [dexamethasone_order("2026-11-21T09:00:00Z", 4, oid="d4"), dexamethasone_order("2026-11-21", 8, oid="d8")],
        [],
        None,
        "hydration.saline-missing",
        id="one of two dexamethasone orders is 8 mg",
    ),
]


@pytest.mark.parametrize(("position", "drafts", "medications", "premed_rule", "hydration_rule"), PREMED_CASES)
def test_premedication_and_hydration(
    protocol: Protocol,
    position: str,
    drafts: list[dict[str, Any]],
    medications: list[dict[str, Any]],
    premed_rule: str | None,
    hydration_rule: str | None,
) -> None:
    facts = facts_at(protocol, position, drafts=drafts, medications=medications)
    premed = run(check_premedication, facts, protocol)
    hydration = run(check_hydration, facts, protocol)
    assert [f.rule_id for f in premed] == ([premed_rule] if premed_rule else [])
    assert [f.rule_id for f in hydration] == ([hydration_rule] if hydration_rule else [])
    for finding in (*premed, *hydration):
        assert finding.indicator is None  # the protocol decides: warning at order-sign, info at order-select
        assert finding.order_id == "tarla-order-1"


def test_missing_findings_suggest_creating_the_orders(protocol: Protocol) -> None:
    facts = facts_at(protocol, "C1D1")
    (premed,) = run(check_premedication, facts, protocol)
    (hydration,) = run(check_hydration, facts, protocol)
    assert [(s.kind, s.order_id) for s in premed.suggestions] == [("create-dexamethasone-premed", "tarla-order-1")]
    assert [(s.kind, s.order_id) for s in hydration.suggestions] == [("create-saline", "tarla-order-1")]


def test_wrong_amount_findings_show_the_order(protocol: Protocol) -> None:
    bag = saline_order("2026-11-21T11:00:00Z", oid="nacl-bag")
    bag["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] = {"value": 1, "unit": "bag"}
    facts = facts_at(protocol, "C1D8", drafts=[dexamethasone_order("2026-11-21T09:00:00Z", 4), bag])
    (premed,) = run(check_premedication, facts, protocol)
    (hydration,) = run(check_hydration, facts, protocol)
    assert premed.values["ordered_dose"] == "4 mg"
    assert hydration.rule_id == "hydration.saline-volume"  # a volume that cannot be read is not accepted
    assert str(hydration.values["ordered_volume"]).startswith("1 bag")
    assert any(e.reference == "MedicationRequest/nacl-bag" for e in hydration.evidence)


def test_premedication_positions_are_a_setting(protocol: Protocol) -> None:
    data = copy.deepcopy(protocol.data)
    data["premedication"]["positions"] = ["C1D1", "C1D8", "C1D15", "R1", "R2"]  # seed 001: whole first cycle
    site = parse_protocol(data)
    facts = facts_at(site, "C1D15")
    assert [f.rule_id for f in run(check_premedication, facts, site)] == ["premedication.dexamethasone-missing"]


def test_premedication_indicator_by_hook(protocol: Protocol) -> None:
    for rule_id in (
        "premedication.dexamethasone-missing",
        "premedication.dexamethasone-dose",
        "hydration.saline-missing",
        "hydration.saline-volume",
    ):
        assert protocol.rule(rule_id).indicator_for("order-sign") == "warning"
        assert protocol.rule(rule_id).indicator_for("order-select") == "info"


# --- section 5: monitoring ------------------------------------------------------------------------------
MONITORING_CASES = [
    pytest.param("C1D1", "extended", None, id="C1D1"),
    pytest.param("C1D8", "extended", None, id="C1D8"),
    pytest.param("R1", "extended", None, id="R1"),
    pytest.param("R2", "extended", None, id="R2"),
    pytest.param("C1D15", "observation", "6-8", id="C1D15"),
    pytest.param("C2D1", "observation", "6-8", id="C2D1"),
    pytest.param("C2D15", "observation", "6-8", id="C2D15"),
    pytest.param("C3D1", "observation", "3-4", id="C3D1"),
    pytest.param("C4D15", "observation", "3-4", id="C4D15"),
    pytest.param("C5D1", "observation", "2", id="C5D1"),
]


@pytest.mark.parametrize(("position", "variant", "hours"), MONITORING_CASES)
def test_monitoring_by_position(protocol: Protocol, position: str, variant: str, hours: str | None) -> None:
    (finding,) = run(check_monitoring, facts_at(protocol, position), protocol)
    assert finding.rule_id == "monitoring.schedule"
    assert finding.values["variant"] == variant
    assert finding.values.get("hours") == hours
    assert finding.indicator is None and protocol.rule("monitoring.schedule").indicator == "info"


# (position, episode) -> rule id
ESCALATION_CASES = [
    pytest.param("C3D1", episode("crs", 2, 10), "monitoring.escalated", id="Grade 2 CRS after C2D15 -> C3D1"),
    pytest.param("C3D1", episode("icans", 2, 14), "monitoring.escalated", id="Grade 2 ICANS on the dosing day"),
    pytest.param("C5D1", episode("neurotox", 3, 10), "monitoring.escalated", id="Grade 3 neurotox -> C5D1"),
    pytest.param("C3D1", episode("crs", 1, 10), "monitoring.schedule", id="Grade 1 CRS: no escalation"),
    pytest.param("C3D1", episode("crs", 2, 20), "monitoring.schedule", id="Grade 2 before the last dose"),
    pytest.param("C1D8", episode("crs", 2, 5), "monitoring.schedule", id="C1D8 already extended"),
]


@pytest.mark.parametrize(("position", "toxicity", "rule_id"), ESCALATION_CASES)
def test_monitoring_escalation(protocol: Protocol, position: str, toxicity: Any, rule_id: str) -> None:
    (finding,) = run(check_monitoring, facts_at(protocol, position, episodes=(toxicity,)), protocol)
    assert finding.rule_id == rule_id
    cited = any(e.reference == toxicity.references[0] for e in finding.evidence)
    if rule_id == "monitoring.escalated":
        assert protocol.rule(rule_id).indicator == "warning"
        assert finding.values["grade"] == toxicity.grade
        assert cited
    elif toxicity.grade >= 2 and position == "C1D8":
        assert finding.values["variant"] == "extended" and cited  # the toxicity is mentioned in the evidence
    else:
        assert not cited


def test_monitoring_without_history_advises_extended(protocol: Protocol) -> None:
    facts = make_facts(protocol, drafts=[tarlatamab_order(PLANNED, 10)], unavailable=frozenset({"administrations"}))
    (finding,) = run(check_monitoring, facts, protocol)
    assert (finding.rule_id, finding.values["variant"], finding.values["position"]) == (
        "monitoring.schedule",
        "extended",
        "Position unknown",
    )


# --- through the HTTP endpoint ------------------------------------------------------------------------
def _post(make_app: Callable[..., Any], hook: str, body: dict[str, Any]) -> dict[str, Any]:
    with make_app().test_client() as client:
        response = client.post(f"/cds-services/tarlatamab-{hook}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    payload = response.get_json()
    assert_valid_response(payload)
    return payload


def _mine(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cards = [c for c in payload["cards"] if c["source"]["topic"]["code"] in MY_TOPICS]
    topics = [c["source"]["topic"]["code"] for c in cards]
    assert len(topics) == len(set(topics)), f"one card per topic expected for one order: {topics}"
    return {c["source"]["topic"]["code"]: c for c in cards}


@pytest.mark.parametrize(("hook", "indicator"), [("order-sign", "warning"), ("order-select", "info")])
def test_missing_premedication_card_by_hook(make_app: Callable[..., Any], hook: str, indicator: str) -> None:
    body = hook_request(
        hook,
        drafts=[tarlatamab_order(PLANNED, 10)],
        administrations=history((7, 1)),
        observations=normal_labs(on(1, 7)),
        conditions=[sclc_condition()],
    )
    cards = _mine(_post(make_app, hook, body))
    assert cards["premedication"]["indicator"] == indicator
    assert cards["hydration"]["indicator"] == indicator
    assert "C1D8" in cards["premedication"]["summary"]
    (suggestion,) = cards["premedication"]["suggestions"]
    created = suggestion["actions"][0]["resource"]
    assert created["resourceType"] == "MedicationRequest"
    assert created["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 8
    (saline,) = cards["hydration"]["suggestions"]
    assert saline["actions"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 1000
    # The plan card (monitoring and infusion in one card, issue 9) is shown at order-sign and left out while
    # composing (order-select), where it would only repeat itself.
    if hook == "order-sign":
        assert cards["monitoring"]["indicator"] == "info"
        assert "250 mL/h" in cards["monitoring"]["detail"]
    else:
        assert "monitoring" not in cards
    assert "administration" not in cards


def test_rate_conflict_and_observation_cards_through_the_endpoint(make_app: Callable[..., Any]) -> None:
    body = hook_request(
        drafts=[tarlatamab_order(PLANNED, 10, rate=(500, "mL/h"), duration=(30, "min"))],
        administrations=history(*BEFORE["C3D1"]),
        observations=normal_labs(on(1, 7)),
        conditions=[sclc_condition()],
    )
    cards = _mine(_post(make_app, "order-sign", body))
    assert sorted(cards) == ["administration", "monitoring"]
    assert cards["administration"]["indicator"] == "warning"
    assert "500 mL/h" in cards["administration"]["summary"] and "30 min" in cards["administration"]["summary"]
    # The order's own rate and duration stay an administration problem card; the plan card keeps the hours.
    assert cards["monitoring"]["summary"] == "C3D1 plan: observe 3-4 h after the 60-min tarlatamab infusion"
    assert "Observe the patient for **3-4 hours**" in cards["monitoring"]["detail"]
