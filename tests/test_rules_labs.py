"""Pre-dose laboratory checks (the clinical specification 8.1-8.3): required results, holds, units, windows."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import NOW
from fhir_builders import administration, crs_condition, lab, normal_labs
from support_facts import order_sign_facts

from cds_service.facts import DraftOrder, PatientFacts
from cds_service.findings import Finding
from cds_service.protocol import Protocol
from cds_service.rules import EvaluationContext
from cds_service.rules.labs import check_lab_holds, check_required_labs

DRAWN = "2026-11-20T07:30:00Z"  # the day before the planned administration (2026-11-21)


# A patient on treatment: C1D1 given on 2026-11-07 (liver discontinuations count from the first dose, 13.6).
C1D1_GIVEN = [administration("2026-11-07T09:00:00Z", 1, aid="c1d1")]


def facts_for(
    protocol: Protocol,
    observations: list[dict[str, Any]],
    conditions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    planned: str = "2026-11-21T10:00:00Z",
    administrations: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> tuple[PatientFacts, DraftOrder]:
    return order_sign_facts(
        protocol, observations=observations, conditions=conditions, planned=planned, administrations=administrations
    )


def holds(
    protocol: Protocol, observations: list[dict[str, Any]], administrations: list[dict[str, Any]] = C1D1_GIVEN
) -> list[Finding]:
    facts, order = facts_for(protocol, observations, administrations=administrations)
    return check_lab_holds(facts, order, protocol, EvaluationContext("order-sign", NOW))


def required(protocol: Protocol, observations: list[dict[str, Any]], **kw: Any) -> list[Finding]:
    facts, order = facts_for(protocol, observations, **kw)
    return check_required_labs(facts, order, protocol, EvaluationContext("order-sign", NOW))


def with_result(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A normal full panel drawn earlier that day, and `result` (newer) replacing one analyte."""
    return [*normal_labs("2026-11-20T06:00:00Z"), result]


# --- 8.1 required results ----------------------------------------------------------------------------
def test_complete_recent_panel_needs_nothing(protocol: Protocol) -> None:
    assert required(protocol, normal_labs(DRAWN)) == []


@pytest.mark.parametrize(
    ("drawn", "missing"),
    [
        ("2026-11-18T07:30:00Z", False),  # 3 days before the planned date: inside the window
        ("2026-11-18T00:00:00Z", False),
        ("2026-11-17T23:59:00Z", True),  # 4 days before: stale
        ("2026-11-17T07:30:00Z", True),
        ("2026-11-21T08:59:00Z", False),  # the morning of the dose, before now
        ("2026-11-21T09:30:00Z", True),  # after the evaluation time: not a result yet
    ],
)
def test_window_of_three_days_before_the_planned_date(protocol: Protocol, drawn: str, missing: bool) -> None:
    findings = required(protocol, normal_labs(drawn))
    assert [f.rule_id for f in findings] == (["labs.missing"] if missing else [])


def test_stale_result_is_named_with_its_date(protocol: Protocol) -> None:
    observations = [*normal_labs(DRAWN)[1:], lab("anc", 3.4, "2026-11-16T08:00:00Z")]
    (finding,) = required(protocol, observations)
    assert finding.values["missing"] == "ANC"
    assert "last result 2026-11-16" in str(finding.values["missing_detail"])
    assert [s.params["orderable"] for s in finding.suggestions] == ["cbc_panel"]
    assert all(s.kind == "create-lab" and s.order_id == "tarla-order-1" for s in finding.suggestions)


def test_planned_date_in_the_future_needs_new_labs(protocol: Protocol) -> None:
    # Planned for 2026-11-25: results of 2026-11-20 are 5 days older than the planned administration.
    (finding,) = required(protocol, normal_labs(DRAWN), planned="2026-11-25T10:00:00Z")
    assert finding.values["planned_date"] == "2026-11-25"
    assert finding.values["missing"] == "ANC, hemoglobin, platelets, ALT, AST, total bilirubin"
    assert sorted(s.params["orderable"] for s in finding.suggestions) == ["cbc_panel", "hepatic_panel"]


def test_results_after_a_past_planned_date_count(protocol: Protocol) -> None:
    # The order is for 2026-11-15 (back-entered); results of 2026-11-20 are after it but before now.
    assert required(protocol, normal_labs(DRAWN), planned="2026-11-15T10:00:00Z") == []


def test_unusable_result_does_not_count_and_says_why(protocol: Protocol) -> None:
    observations = [*normal_labs(DRAWN)[:5], lab("bilirubin", 0.6, DRAWN, unit="mg/L/h")]
    (finding,) = required(protocol, observations)
    assert finding.values["missing"] == "total bilirubin"
    assert "not usable" in str(finding.values["missing_detail"])
    assert "cannot be converted" in str(finding.values["missing_detail"])
    assert [s.params["orderable"] for s in finding.suggestions] == ["hepatic_panel"]


def test_nothing_on_record(protocol: Protocol) -> None:
    (finding,) = required(protocol, [])
    assert "no result on record" in str(finding.values["missing_detail"])
    assert len(finding.evidence) == 6


def test_electrolytes_are_an_info_line_of_the_crs_card_not_a_warning(protocol: Protocol) -> None:
    # Section 13.8: during active CRS the electrolytes are part of the CRS card (info), never a labs warning.
    from cds_service.rules.toxicity import check_crs

    active = [crs_condition(2, "2026-11-19T10:00:00Z")]
    assert required(protocol, normal_labs(DRAWN), conditions=active) == []
    electrolytes = [lab("sodium", 138, DRAWN), lab("potassium", 4.1, DRAWN)]
    facts, order = facts_for(protocol, normal_labs(DRAWN) + electrolytes, conditions=active)
    findings = check_crs(facts, order, protocol, EvaluationContext("order-sign", NOW))
    line = next(f for f in findings if f.rule_id == "crs.electrolytes")
    assert line.values["electrolytes"] == "not available: uric acid"
    assert protocol.rule("crs.electrolytes").indicator == "info"
    assert any(e.label == "sodium" and "138" in e.value for e in line.evidence)


# --- 8.2 holds and 8.3 units -------------------------------------------------------------------------
# (result, expected rule ids) -- thresholds of spec 8.2, ULN from the result's reference range (ALT/AST 40 U/L,
# bilirubin 1.2 mg/dL as fhir_builders sends them) unless stated.
HOLD_CASES = [
    ("ANC 1.0 x10^9/L", lab("anc", 1.0, DRAWN, unit="10*9/L"), []),
    ("ANC 0.99 x10^9/L", lab("anc", 0.99, DRAWN, unit="10*9/L"), ["lab-hold.anc"]),
    ("ANC 1000 /uL", lab("anc", 1000, DRAWN, unit="/uL"), []),
    ("ANC 990 /uL", lab("anc", 990, DRAWN, unit="/uL"), ["lab-hold.anc"]),
    ("ANC 0.99 10*3/uL", lab("anc", 0.99, DRAWN, unit="10*3/uL"), ["lab-hold.anc"]),
    ("ANC 1.0 K/uL", lab("anc", 1.0, DRAWN, unit="K/uL"), []),
    ("ANC 500 cells/uL", lab("anc", 500, DRAWN, unit="cells/uL"), ["lab-hold.anc"]),
    ("ANC unknown unit", lab("anc", 0.2, DRAWN, unit="cells"), []),  # unusable: never read, labs.missing says so
    ("platelets 50", lab("platelets", 50, DRAWN), []),
    ("platelets 49", lab("platelets", 49, DRAWN), ["lab-hold.platelets"]),
    ("platelets 49000 /uL", lab("platelets", 49000, DRAWN, unit="/uL"), ["lab-hold.platelets"]),
    ("hemoglobin 8.0", lab("hemoglobin", 8.0, DRAWN), []),
    ("hemoglobin 7.9", lab("hemoglobin", 7.9, DRAWN), ["lab-hold.hemoglobin"]),
    ("hemoglobin 80 g/L", lab("hemoglobin", 80, DRAWN, unit="g/L"), []),
    ("hemoglobin 79 g/L", lab("hemoglobin", 79, DRAWN, unit="g/L"), ["lab-hold.hemoglobin"]),
    ("hemoglobin 4.9 mmol/L (7.89 g/dL)", lab("hemoglobin", 4.9, DRAWN, unit="mmol/L"), ["lab-hold.hemoglobin"]),
    ("hemoglobin 5.0 mmol/L (8.06 g/dL)", lab("hemoglobin", 5.0, DRAWN, unit="mmol/L"), []),
    ("ALT 5x ULN exactly", lab("alt", 200, DRAWN), []),
    ("ALT just above 5x", lab("alt", 201, DRAWN), ["lab-hold.hepatotoxicity-grade3"]),
    ("AST just above 5x", lab("ast", 200.5, DRAWN), ["lab-hold.hepatotoxicity-grade3"]),
    ("ALT 20x exactly", lab("alt", 800, DRAWN), ["lab-hold.hepatotoxicity-grade3"]),
    ("ALT above 20x", lab("alt", 801, DRAWN), ["lab-hold.hepatotoxicity-grade4"]),
    ("AST above 20x", lab("ast", 1000, DRAWN), ["lab-hold.hepatotoxicity-grade4"]),
    (
        "ALT 3.4 ukat/L = 204 U/L, default ULN",
        lab("alt", 3.4, DRAWN, unit="ukat/L"),
        ["lab-hold.hepatotoxicity-grade3"],
    ),
    ("ALT 3.3 ukat/L = 198 U/L, default ULN", lab("alt", 3.3, DRAWN, unit="ukat/L"), []),
    ("bilirubin 3x exactly", lab("bilirubin", 3.6, DRAWN), []),
    ("bilirubin just above 3x", lab("bilirubin", 3.61, DRAWN), ["lab-hold.hepatotoxicity-grade3"]),
    ("bilirubin 10x exactly", lab("bilirubin", 12.0, DRAWN), ["lab-hold.hepatotoxicity-grade3"]),
    ("bilirubin above 10x", lab("bilirubin", 12.1, DRAWN), ["lab-hold.hepatotoxicity-grade4"]),
    (
        "bilirubin 61.5 umol/L, ULN 20.5 umol/L = 3x",
        lab("bilirubin", 61.5, DRAWN, unit="umol/L", ref_high=20.5),
        [],
    ),
    (
        "bilirubin 61.6 umol/L, ULN 20.5 umol/L > 3x",
        lab("bilirubin", 61.6, DRAWN, unit="umol/L", ref_high=20.5),
        ["lab-hold.hepatotoxicity-grade3"],
    ),
    (
        "bilirubin 62 umol/L, default ULN 1.2 mg/dL (62/17.1 = 3.63 mg/dL)",
        lab("bilirubin", 62, DRAWN, unit="umol/L", ref_high=None),
        ["lab-hold.hepatotoxicity-grade3"],
    ),
    ("ALT with its own higher ULN", lab("alt", 250, DRAWN, ref_high=56), []),  # 4.46 x ULN
]


@pytest.mark.parametrize(("name", "result", "expected"), HOLD_CASES, ids=[c[0] for c in HOLD_CASES])
def test_hold_thresholds_and_units(protocol: Protocol, name: str, result: dict, expected: list[str]) -> None:
    assert [f.rule_id for f in holds(protocol, with_result(result))] == expected


HYS_CASES = [
    ("ALT 3.025x + bilirubin 2.008x", [lab("alt", 121, DRAWN), lab("bilirubin", 2.41, DRAWN)], ["lab-hold.hys-law"]),
    ("AST 3.025x + bilirubin 2.008x", [lab("ast", 121, DRAWN), lab("bilirubin", 2.41, DRAWN)], ["lab-hold.hys-law"]),
    ("ALT 3x exactly + bilirubin 2.5x", [lab("alt", 120, DRAWN), lab("bilirubin", 3.0, DRAWN)], []),
    ("ALT 4x + bilirubin 2x exactly", [lab("alt", 160, DRAWN), lab("bilirubin", 2.4, DRAWN)], []),
    # A discontinuation supersedes the Grade 3 withhold of the same results.
    ("ALT 6x + bilirubin 2.5x", [lab("alt", 240, DRAWN), lab("bilirubin", 3.0, DRAWN)], ["lab-hold.hys-law"]),
    (
        "ALT 25x + bilirubin 2.5x",
        [lab("alt", 1000, DRAWN), lab("bilirubin", 3.0, DRAWN)],
        ["lab-hold.hepatotoxicity-grade4", "lab-hold.hys-law"],
    ),
]


@pytest.mark.parametrize(("name", "results", "expected"), HYS_CASES, ids=[c[0] for c in HYS_CASES])
def test_hys_law(protocol: Protocol, name: str, results: list[dict], expected: list[str]) -> None:
    assert [f.rule_id for f in holds(protocol, [*normal_labs("2026-11-20T06:00:00Z"), *results])] == expected


def test_hold_reads_the_most_recent_result_in_the_window(protocol: Protocol) -> None:
    recovered = [lab("anc", 0.6, "2026-11-19T08:00:00Z"), lab("anc", 1.6, "2026-11-20T08:00:00Z")]
    assert holds(protocol, normal_labs("2026-11-18T08:00:00Z") + recovered) == []
    fell = [lab("anc", 1.6, "2026-11-19T08:00:00Z"), lab("anc", 0.6, "2026-11-20T08:00:00Z")]
    assert [f.rule_id for f in holds(protocol, normal_labs("2026-11-18T08:00:00Z") + fell)] == ["lab-hold.anc"]


def test_stale_low_result_is_not_a_hold_but_missing(protocol: Protocol) -> None:
    observations = [*normal_labs(DRAWN)[1:], lab("anc", 0.4, "2026-11-16T08:00:00Z")]
    assert holds(protocol, observations) == []
    assert [f.rule_id for f in required(protocol, observations)] == ["labs.missing"]


def test_unknown_unit_is_never_read_as_normal(protocol: Protocol) -> None:
    observations = [*normal_labs(DRAWN)[1:], lab("anc", 2.5, DRAWN, unit="cells")]
    assert holds(protocol, observations) == []
    (finding,) = required(protocol, observations)
    assert finding.values["missing"] == "ANC"
    facts, _ = facts_for(protocol, observations)
    assert any(i.kind == "unusable" and i.affects == "ANC" for i in facts.issues)


def test_hold_finding_content(protocol: Protocol) -> None:
    (finding,) = holds(protocol, with_result(lab("anc", 800, DRAWN, unit="/uL", oid="anc-low")))
    assert finding.values == {"value": "0.8 ×10⁹/L (reported 800 /µL)", "date": "2026-11-20"}
    assert finding.evidence[0].reference == "Observation/anc-low"
    assert [(s.kind, s.order_id) for s in finding.suggestions] == [("delete-order", "tarla-order-1")]


def test_hemoglobin_warning_offers_no_deletion(protocol: Protocol) -> None:
    (finding,) = holds(protocol, with_result(lab("hemoglobin", 7.2, DRAWN)))
    assert finding.suggestions == ()


def test_hepatotoxicity_finding_shows_multiples(protocol: Protocol) -> None:
    results = [lab("alt", 248, DRAWN, oid="alt-high"), lab("ast", 201, DRAWN)]
    (finding,) = holds(protocol, [*normal_labs("2026-11-20T06:00:00Z"), *results])
    assert finding.rule_id == "lab-hold.hepatotoxicity-grade3"
    assert finding.values["findings"] == "ALT 6.2 x ULN, AST 5.03 x ULN"
    assert "ULN 40 U/L" in str(finding.values["details"])
    assert finding.suggestions[0].kind == "delete-order"
