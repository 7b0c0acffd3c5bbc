"""CRS (the clinical specification 6.2) and neurologic toxicity including ICANS (7.1, 7.2)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import NOW
from fhir_builders import (
    administration,
    crs_condition,
    grade_observation,
    icans_condition,
)
from support_facts import order_sign_facts

from cds_service.facts import DraftOrder, PatientFacts
from cds_service.findings import Finding
from cds_service.protocol import Protocol
from cds_service.rules import EvaluationContext
from cds_service.rules.toxicity import check_crs, check_neurotoxicity

CTX = EvaluationContext("order-sign", NOW)


def facts_for(
    protocol: Protocol,
    observations: list[dict[str, Any]] = (),  # type: ignore[assignment]
    conditions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    administrations: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> tuple[PatientFacts, DraftOrder]:
    return order_sign_facts(protocol, observations=observations, conditions=conditions, administrations=administrations)


def crs(protocol: Protocol, **kw: Any) -> list[Finding]:
    facts, order = facts_for(protocol, **kw)
    return check_crs(facts, order, protocol, CTX)


def neuro(protocol: Protocol, **kw: Any) -> list[Finding]:
    facts, order = facts_for(protocol, **kw)
    return check_neurotoxicity(facts, order, protocol, CTX)


def ids(findings: list[Finding]) -> list[str]:
    return [f.rule_id for f in findings]


# --- CRS ---------------------------------------------------------------------------------------------
CRS_CASES = [
    ("Grade 1 active (Condition)", {"conditions": [crs_condition(1, "2026-11-20T02:00:00Z")]},
     ["crs.active", "crs.electrolytes"]),
    ("Grade 2 active (observation)", {"observations": [grade_observation("crs-grade", 2, "2026-11-20T02:00:00Z")]},
     ["crs.active", "crs.electrolytes"]),
    ("Grade 1 resolved (abatement)",
     {"conditions": [crs_condition(1, "2026-11-10T02:00:00Z", abatement="2026-11-11T02:00:00Z")]}, []),
    ("Grade 2 resolved (grade 0 recorded)",
     {"observations": [grade_observation("crs-grade", 2, "2026-11-10T02:00:00Z"),
                       grade_observation("crs-grade", 0, "2026-11-11T02:00:00Z")]}, []),
    ("first Grade 3, resolved (restart is the dose rule's)",
     {"conditions": [crs_condition(3, "2026-11-10T02:00:00Z", abatement="2026-11-12T02:00:00Z")]}, []),
    ("Grade 3 active", {"conditions": [crs_condition(3, "2026-11-20T02:00:00Z")]},
     ["crs.active", "crs.electrolytes"]),
    ("Grade 4 long resolved", {"conditions": [crs_condition(4, "2026-03-01T02:00:00Z", abatement="2026-03-05")]},
     ["crs.grade4"]),
    ("Grade 4 recorded by observation, then 0",
     {"observations": [grade_observation("crs-grade", 4, "2026-10-01T02:00:00Z"),
                       grade_observation("crs-grade", 0, "2026-10-04T02:00:00Z")]}, ["crs.grade4"]),
    ("Grade 5 code", {"conditions": [crs_condition(5, "2026-10-01T02:00:00Z", abatement="2026-10-02")]},
     ["crs.grade4"]),
    ("second Grade 3 (two Conditions)",
     {"conditions": [crs_condition(3, "2026-09-01T02:00:00Z", abatement="2026-09-03"),
                     crs_condition(3, "2026-10-01T02:00:00Z", abatement="2026-10-03")]}, ["crs.grade3-recurrent"]),
    ("second Grade 3 (observations separated by 0)",
     {"observations": [grade_observation("crs-grade", 3, "2026-09-01T02:00:00Z"),
                       grade_observation("crs-grade", 0, "2026-09-03T02:00:00Z"),
                       grade_observation("crs-grade", 3, "2026-10-01T02:00:00Z"),
                       grade_observation("crs-grade", 0, "2026-10-03T02:00:00Z")]}, ["crs.grade3-recurrent"]),
    ("Grade 3 recorded twice in one episode (no 0 between) is not recurrent",
     {"observations": [grade_observation("crs-grade", 3, "2026-10-01T02:00:00Z"),
                       grade_observation("crs-grade", 3, "2026-10-01T14:00:00Z"),
                       grade_observation("crs-grade", 0, "2026-10-03T02:00:00Z")]}, []),
    ("Grade 3 Condition and its observations are one episode",
     {"conditions": [crs_condition(3, "2026-10-01T01:00:00Z", abatement="2026-10-03T06:00:00Z")],
      "observations": [grade_observation("crs-grade", 3, "2026-10-01T02:00:00Z"),
                       grade_observation("crs-grade", 0, "2026-10-03T02:00:00Z")]}, []),
    ("unspecified grade active counts as Grade 3", {"conditions": [crs_condition(None, "2026-11-20T02:00:00Z")]},
     ["crs.active", "crs.electrolytes"]),
    ("Grade 2 active after a Grade 4", {"conditions": [crs_condition(4, "2026-06-01", abatement="2026-06-04"),
                                                       crs_condition(2, "2026-11-20T02:00:00Z")]},
     ["crs.active", "crs.electrolytes", "crs.grade4"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "expected"), CRS_CASES, ids=[c[0] for c in CRS_CASES])
def test_crs_actions(protocol: Protocol, name: str, data: dict, expected: list[str]) -> None:
    assert ids(crs(protocol, **data)) == expected


def test_crs_findings_carry_deletion_and_evidence(protocol: Protocol) -> None:
    cond = crs_condition(None, "2026-11-20T02:00:00Z", cid="crs-1")
    active, electrolytes = crs(protocol, conditions=[cond])
    assert active.values == {"grade": "3 (grade not specified)", "onset_date": "2026-11-20"}
    assert [(s.kind, s.order_id) for s in active.suggestions] == [("delete-order", "tarla-order-1")]
    assert electrolytes.suggestions == ()
    assert active.evidence[0].reference == "Condition/crs-1"


def test_recurrent_grade3_dates(protocol: Protocol) -> None:
    conditions = [
        crs_condition(3, "2026-09-01T02:00:00Z", abatement="2026-09-03"),
        crs_condition(3, "2026-10-01T02:00:00Z", abatement="2026-10-03"),
    ]
    (finding,) = crs(protocol, conditions=conditions)
    assert (finding.values["first_date"], finding.values["second_date"]) == ("2026-09-01", "2026-10-01")
    assert finding.suggestions[0].kind == "delete-order"


# --- neurologic toxicity -----------------------------------------------------------------------------
def ice(score: int, when: str) -> dict[str, Any]:
    return grade_observation("ice-score", score, when)


NEURO_CASES = [
    # ICE boundaries (7.1): 7-9 Grade 1, 3-6 Grade 2, 0-2 Grade 3.
    ("ICE 7 (Grade 1) active", {"observations": [ice(7, "2026-11-20T10:00:00Z")]}, ["neurotox.grade1-2-active"]),
    ("ICE 6 (Grade 2) active", {"observations": [ice(6, "2026-11-20T10:00:00Z")]}, ["neurotox.grade1-2-active"]),
    ("ICE 3 (Grade 2) active", {"observations": [ice(3, "2026-11-20T10:00:00Z")]}, ["neurotox.grade1-2-active"]),
    ("ICE 2 (Grade 3) active", {"observations": [ice(2, "2026-11-20T10:00:00Z")]}, ["neurotox.grade3-active"]),
    ("ICE 10 only", {"observations": [ice(10, "2026-11-20T10:00:00Z")]}, []),
    ("Grade 1-2 resolved", {"observations": [ice(5, "2026-11-10T10:00:00Z"), ice(10, "2026-11-11T10:00:00Z")]}, []),
    ("neurotox-grade 2 active", {"observations": [grade_observation("neurotox-grade", 2, "2026-11-20T10:00:00Z")]},
     ["neurotox.grade1-2-active"]),
    ("ICANS Condition Grade 1 active", {"conditions": [icans_condition(1, "2026-11-20T10:00:00Z")]},
     ["neurotox.grade1-2-active"]),
    # Grade 3 active: 7 days exactly is not yet "not improved within 7 days"; a minute more is.
    ("Grade 3 active, onset exactly 7 days ago",
     {"observations": [grade_observation("icans-grade", 3, "2026-11-14T09:00:00Z")]}, ["neurotox.grade3-active"]),
    ("Grade 3 active, onset 7 days and 1 minute ago",
     {"observations": [grade_observation("icans-grade", 3, "2026-11-14T08:59:00Z")]},
     ["neurotox.grade3-active", "neurotox.grade3-not-improved"]),
    # 13.5: only grade <= 1 (or a resolution) is evidence of improvement; Grade 2 on day 3 is not.
    ("Grade 3 active, only down to 2 on day 3, onset 9 days ago",
     {"observations": [ice(1, "2026-11-12T09:00:00Z"), ice(5, "2026-11-15T09:00:00Z")]},
     ["neurotox.grade3-active", "neurotox.grade3-not-improved"]),
    ("Grade 3 active, down to 1 on day 3, onset 9 days ago",
     {"observations": [ice(1, "2026-11-12T09:00:00Z"), ice(8, "2026-11-15T09:00:00Z")]},
     ["neurotox.grade3-active"]),
    ("first Grade 3 resolved within 7 days",
     {"observations": [ice(2, "2026-11-10T10:00:00Z"), ice(10, "2026-11-13T10:00:00Z")]},
     ["neurotox.grade3-clearance"]),
    ("first Grade 3 improved on day 6, resolved on day 10",
     {"observations": [ice(2, "2026-11-01T10:00:00Z"), ice(8, "2026-11-07T10:00:00Z"),
                       ice(10, "2026-11-11T10:00:00Z")]}, ["neurotox.grade3-clearance"]),
    ("Grade 3 resolved only after 8 days",
     {"observations": [ice(2, "2026-11-01T10:00:00Z"), ice(10, "2026-11-09T10:00:00Z")]},
     ["neurotox.grade3-not-improved"]),
    ("Grade 3 Condition abated after 10 days",
     {"conditions": [icans_condition(3, "2026-10-01T10:00:00Z", abatement="2026-10-11T10:00:00Z")]},
     ["neurotox.grade3-not-improved"]),
    ("recurrent Grade 3",
     {"observations": [ice(2, "2026-10-01T10:00:00Z"), ice(10, "2026-10-03T10:00:00Z"),
                       ice(1, "2026-11-01T10:00:00Z"), ice(10, "2026-11-03T10:00:00Z")]},
     ["neurotox.grade3-recurrent"]),
    ("recurrent Grade 3 across ICANS and other neurologic toxicity",
     {"observations": [ice(2, "2026-10-01T10:00:00Z"), ice(10, "2026-10-03T10:00:00Z"),
                       grade_observation("neurotox-grade", 3, "2026-11-01T10:00:00Z"),
                       grade_observation("neurotox-grade", 0, "2026-11-03T10:00:00Z")]},
     ["neurotox.grade3-recurrent"]),
    ("one event recorded as ICANS and as neurotox-grade is not a recurrence",
     {"observations": [ice(2, "2026-11-10T10:00:00Z"), ice(10, "2026-11-12T10:00:00Z"),
                       grade_observation("neurotox-grade", 3, "2026-11-10T11:00:00Z"),
                       grade_observation("neurotox-grade", 0, "2026-11-12T11:00:00Z")]},
     ["neurotox.grade3-clearance"]),
    ("Grade 4 any time", {"conditions": [icans_condition(4, "2026-05-01T10:00:00Z", abatement="2026-05-09")]},
     ["neurotox.grade4"]),
    ("Grade 4 by icans-grade", {"observations": [grade_observation("icans-grade", 4, "2026-11-20T10:00:00Z")]},
     ["neurotox.grade4"]),
    ("unspecified ICANS active counts as Grade 3", {"conditions": [icans_condition(None, "2026-11-20T10:00:00Z")]},
     ["neurotox.grade3-active"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "expected"), NEURO_CASES, ids=[c[0] for c in NEURO_CASES])
def test_neurotoxicity_actions(protocol: Protocol, name: str, data: dict, expected: list[str]) -> None:
    assert ids(neuro(protocol, **data)) == expected


def test_grade1_2_active_suggests_dexamethasone_and_deletion(protocol: Protocol) -> None:
    (finding,) = neuro(protocol, observations=[ice(6, "2026-11-20T10:00:00Z")])
    assert [s.kind for s in finding.suggestions] == ["delete-order", "create-dexamethasone-neurotox"]
    assert finding.values["toxicity"] == "ICANS" and finding.values["grade"] == "2"


def test_not_improved_and_clearance_values(protocol: Protocol) -> None:
    (late,) = neuro(protocol, observations=[ice(2, "2026-11-01T10:00:00Z"), ice(10, "2026-11-09T10:00:00Z")])
    assert late.values["improvement"] == "first improvement on 2026-11-09, 8 days after onset"
    (clear,) = neuro(protocol, observations=[ice(2, "2026-11-10T10:00:00Z"), ice(10, "2026-11-13T10:00:00Z")])
    assert clear.values["improved_date"] == "2026-11-13" and "variant" not in clear.values


def test_clearance_not_asked_again_once_dosing_resumed(protocol: Protocol) -> None:
    observations = [ice(2, "2026-10-10T10:00:00Z"), ice(10, "2026-10-13T10:00:00Z")]
    resumed = [administration("2026-10-01T09:00:00Z", 1), administration("2026-10-20T09:00:00Z", 1)]
    assert neuro(protocol, observations=observations, administrations=resumed) == []
    before_only = [administration("2026-10-01T09:00:00Z", 1)]
    assert ids(neuro(protocol, observations=observations, administrations=before_only)) == ["neurotox.grade3-clearance"]


def test_resolved_without_abatement_resolves_at_recorded_date_else_onset(protocol: Protocol) -> None:
    # Section 12: a Condition recorded resolved without abatement[x] resolved at recordedDate, else its onset.
    cond = icans_condition(3, "2026-11-10T10:00:00Z", clinical_status="resolved")
    (finding,) = neuro(protocol, conditions=[cond])
    assert finding.rule_id == "neurotox.grade3-clearance"
    assert finding.values["improved_date"] == "2026-11-10"
    late = icans_condition(3, "2026-11-01T10:00:00Z", clinical_status="resolved")
    late["recordedDate"] = "2026-11-12"  # recorded resolved 11 days after onset: not improved within 7 days
    assert [f.rule_id for f in neuro(protocol, conditions=[late])] == ["neurotox.grade3-not-improved"]
