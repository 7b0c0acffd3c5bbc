"""Schedule positions (the clinical specification 2.1) and the expected next dose (2.2, 6.2 Grade 3 CRS row).

Histories are realistic MedicationAdministration resources (tests/fhir_builders.py) read by
`build_order_facts`; the expected values come from the spec tables, not from program output.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from conftest import NOW
from fhir_builders import administration

from cds_service.facts import PatientFacts, ToxicityEpisode
from cds_service.facts.history import build_administrations, interval_after, max_gap_after, next_numbered
from cds_service.facts.orders import build_order_facts
from cds_service.protocol import Protocol
from cds_service.rules.schedule import expected_dose

TODAY = NOW.date()  # 2026-11-21: the planned administration date of the tests


def on(days_before: int, hour: int = 9) -> str:
    """An ISO date-time `days_before` the planned date (2026-11-21), as an EHR writes it."""
    return f"{(TODAY - timedelta(days=days_before)).isoformat()}T{hour:02d}:30:00Z"


def when(days_before: int, hour: int = 14) -> datetime:
    d = TODAY - timedelta(days=days_before)
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


def history(*doses: tuple[int, float]) -> list[dict[str, Any]]:
    """Administrations from (days before the planned date, mg) pairs, given in any order."""
    return [administration(on(days), dose, aid=f"adm-{i}") for i, (days, dose) in enumerate(doses)]


def episode(kind: str, grade: int, days_before: int, *, active: bool = False) -> ToxicityEpisode:
    onset = when(days_before)
    return ToxicityEpisode(
        kind=kind,  # type: ignore[arg-type]
        grade=grade,
        onset=onset,
        active=active,
        resolved_at=None if active else onset + timedelta(days=2),
        references=(f"Condition/{kind}-{grade}-{days_before}",),
    )


def make_facts(
    protocol: Protocol,
    administrations: Sequence[dict[str, Any]] = (),
    *,
    drafts: Sequence[dict[str, Any]] = (),
    medications: Sequence[dict[str, Any]] = (),
    episodes: Sequence[ToxicityEpisode] = (),
    hook: str = "order-sign",
    selections: Sequence[str] = (),
    unavailable: frozenset[str] = frozenset(),
) -> PatientFacts:
    """PatientFacts as `facts.build.build_facts` assembles them, with the order facts under test."""
    orders = build_order_facts(
        {"administrations": list(administrations), "medications": list(medications)},
        draft_entries=tuple(drafts),
        selections=tuple(selections),
        hook=hook,
        protocol=protocol,
        today=NOW.date(),
    )
    doses, history_issues = build_administrations(list(administrations), tuple(episodes), protocol)
    return PatientFacts(
        patient_id="pt-sclc-001",
        evaluation_time=NOW,
        birth_date=date(1961, 4, 12),
        gender="male",
        administrations=doses,
        draft_orders=orders.draft_orders,
        companion_orders=orders.companion_orders,
        labs={},
        toxicity_points=(),
        episodes=tuple(episodes),
        pregnancy=(),
        breastfeeding=(),
        sclc_diagnoses=(),
        platinum_history=orders.platinum_history,
        active_infections=(),
        issues=(*history_issues, *orders.issues),
        unavailable=unavailable,
    )


# Regular histories, (days before 2026-11-21, mg), oldest first.
C1D1 = ((7, 1),)
TO_C1D8 = ((14, 1), (7, 10))
TO_C1D15 = ((21, 1), (14, 10), (7, 10))
TO_C2D1 = ((35, 1), (28, 10), (21, 10), (7, 10))
TO_C2D15 = ((49, 1), (42, 10), (35, 10), (21, 10), (7, 10))
TO_C4D1 = ((91, 1), (84, 10), (77, 10), (63, 10), (49, 10), (35, 10), (21, 10), (7, 10))


# --- 2.1 positions of the doses given -------------------------------------------------------------------
POSITION_CASES = [
    pytest.param(((0, 1),), ["C1D1"], id="first dose"),
    pytest.param(
        ((56, 1), (49, 10), (42, 10), (28, 10), (14, 10), (0, 10)),
        ["C1D1", "C1D8", "C1D15", "C2D1", "C2D15", "C3D1"],
        id="first sequence",
    ),
    pytest.param(
        (*((d + 54, mg) for d, mg in TO_C4D1), (14, 1), (7, 10), (0, 10)),
        ["C1D1", "C1D8", "C1D15", "C2D1", "C2D15", "C3D1", "C3D15", "C4D1", "R1", "C4D15", "C5D1"],
        id="restart numbering: C4D1 -> R1 -> R2=C4D15 -> C5D1",
    ),
    pytest.param(((27, 1), (7, 1), (0, 10)), ["C1D1", "R1", "C1D8"], id="restart after C1D1 (gap 20)"),
    pytest.param(((21, 1), (7, 1), (0, 10)), ["C1D1", "C1D8", "C1D15"], id="1 mg after gap 14 is no restart"),
    pytest.param(((60, 1), (53, 10), (0, 10)), ["C1D1", "C1D8", "C1D15"], id="10 mg after a delay is no restart"),
    pytest.param(((50, 1), (43, 10), (22, 1)), ["C1D1", "C1D8", "C1D15"], id="1 mg 21 days after C1D8: no restart"),
    pytest.param(((51, 1), (44, 10), (22, 1)), ["C1D1", "C1D8", "R1"], id="1 mg 22 days after C1D8: restart"),
    pytest.param(((30, 1), (15, 1), (0, 1)), ["C1D1", "R1", "R1"], id="restart after R1 (gap 15)"),
    pytest.param(((30, 1), (15, 1), (0, 10)), ["C1D1", "R1", "C1D8"], id="R2 after R1 takes the next number"),
    pytest.param(((70, 1), (63, 10), (56, 10), (28, 1)), ["C1D1", "C1D8", "C1D15", "C2D1"], id="1 mg 28 d after C1D15"),
    pytest.param(((71, 1), (64, 10), (57, 10), (28, 1)), ["C1D1", "C1D8", "C1D15", "R1"], id="1 mg 29 d after C1D15"),
]


@pytest.mark.parametrize(("doses", "labels"), POSITION_CASES)
def test_positions_follow_the_section_2_1_algorithm(
    protocol: Protocol, doses: tuple[tuple[int, float], ...], labels: list[str]
) -> None:
    facts = make_facts(protocol, history(*reversed(doses)))  # given newest first: must be sorted
    assert [a.position.label for a in facts.administrations if a.position] == labels
    assert [a.local_date for a in facts.administrations] == sorted(a.local_date for a in facts.administrations)


def test_restart_doses_carry_their_step_and_reason(protocol: Protocol) -> None:
    doses = (*((d + 54, mg) for d, mg in TO_C4D1), (14, 1), (7, 10), (0, 10))
    adms = make_facts(protocol, history(*doses)).administrations
    r1, r2, after = adms[-3], adms[-2], adms[-1]
    assert (r1.position.restart_step, r1.restart_reason, r1.position.names) == (1, "delay", frozenset({"R1"}))
    assert (r2.position.label, r2.position.restart_step, r2.position.names) == ("C4D15", 2, {"C4D15", "R2"})
    assert r2.position.display == "R2 (restart, C4D15)"
    assert (after.position.label, after.position.restart_step, after.restart_reason) == ("C5D1", None, None)


def test_first_grade3_crs_makes_the_next_1mg_dose_a_restart(protocol: Protocol) -> None:
    # C2D1 given 21 days ago; Grade 3 CRS began that evening; 1 mg 14 days later, then 10 mg.
    doses = ((49, 1), (42, 10), (35, 10), (21, 10), (7, 1), (0, 10))
    crs = episode("crs", 3, 21, active=False)
    adms = make_facts(protocol, history(*doses), episodes=[crs]).administrations
    assert [a.position.label for a in adms] == ["C1D1", "C1D8", "C1D15", "C2D1", "R1", "C2D15"]
    assert adms[4].restart_reason == "crs-grade3"


def test_crs_grade3_before_the_previous_dose_does_not_restart_again(protocol: Protocol) -> None:
    crs = episode("crs", 3, 40)  # after C1D15 (42 days ago), followed by R1 and R2
    adms = make_facts(protocol, history((56, 1), (49, 10), (42, 10), (28, 1), (21, 10), (7, 10)), episodes=[crs])
    assert [a.position.label for a in adms.administrations] == ["C1D1", "C1D8", "C1D15", "R1", "C2D1", "C2D15"]


# --- 2.2 expected dose: one row per spec row, with the gap boundaries ----------------------------------
# (history, planned gap handled by the history's last offset) -> (position label, names, mg, reason, gap,
# max gap, interval)
EXPECTED_CASES = [
    pytest.param((), ("C1D1", 1, "first-dose", None, None, None), id="none -> 1 mg C1D1"),
    pytest.param(((14, 1),), ("C1D8", 10, "continue", 14, 14, 7), id="C1D1 gap 14 -> continue"),
    pytest.param(((15, 1),), ("R1", 1, "restart-delay", 15, 14, 7), id="C1D1 gap 15 -> restart"),
    pytest.param(((28, 1), (21, 10)), ("C1D15", 10, "continue", 21, 21, 7), id="C1D8 gap 21 -> continue"),
    pytest.param(((29, 1), (22, 10)), ("R1", 1, "restart-delay", 22, 21, 7), id="C1D8 gap 22 -> restart"),
    pytest.param(((42, 1), (35, 10), (28, 10)), ("C2D1", 10, "continue", 28, 28, 14), id="C1D15 gap 28"),
    pytest.param(((43, 1), (36, 10), (29, 10)), ("R1", 1, "restart-delay", 29, 28, 14), id="C1D15 gap 29"),
    pytest.param(tuple((d + 21, mg) for d, mg in TO_C2D15), ("C3D1", 10, "continue", 28, 28, 14), id="C2D15 gap 28"),
    pytest.param(tuple((d + 22, mg) for d, mg in TO_C2D15), ("R1", 1, "restart-delay", 29, 28, 14), id="C2D15 gap 29"),
    pytest.param(tuple((d + 21, mg) for d, mg in TO_C4D1), ("C4D15", 10, "continue", 28, 28, 14), id="C4D1 gap 28"),
    pytest.param(((30, 1), (14, 1)), ("C1D8", 10, "continue", 14, 14, 7), id="R1 gap 14 -> R2"),
    pytest.param(((31, 1), (15, 1)), ("R1", 1, "restart-delay", 15, 14, 7), id="R1 gap 15 -> restart"),
    pytest.param(((45, 1), (28, 1), (21, 10)), ("C1D15", 10, "continue", 21, 21, 14), id="R2 gap 21"),
    pytest.param(((46, 1), (29, 1), (22, 10)), ("R1", 1, "restart-delay", 22, 21, 14), id="R2 gap 22"),
    pytest.param(((7, 1),), ("C1D8", 10, "continue", 7, 14, 7), id="C1D1 on schedule"),
    pytest.param(TO_C2D1, ("C2D15", 10, "continue", 7, 28, 14), id="C2D1 one week ago"),
]


@pytest.mark.parametrize(("doses", "expected"), EXPECTED_CASES)
def test_expected_dose_follows_the_section_2_2_table(
    protocol: Protocol, doses: tuple[tuple[int, float], ...], expected: tuple[Any, ...]
) -> None:
    label, mg, reason, gap, max_gap, interval = expected
    result = expected_dose(make_facts(protocol, history(*doses)), TODAY, protocol)
    assert result is not None
    assert (result.position.label, result.dose_mg, result.reason) == (label, mg, reason)
    assert (result.gap_days, result.max_gap_days, result.interval_days) == (gap, max_gap, interval)
    assert result.dose_mg in (1, 10)


def test_after_r1_the_next_dose_is_r2_with_the_next_position_number(protocol: Protocol) -> None:
    doses = (*((d + 50, mg) for d, mg in TO_C4D1), (7, 1))
    result = expected_dose(make_facts(protocol, history(*doses)), TODAY, protocol)
    assert result is not None
    assert (result.position.label, result.position.restart_step, result.dose_mg) == ("C4D15", 2, 10)
    assert result.position.names == {"C4D15", "R2"}
    assert result.last is not None and result.last.position.label == "R1"


CRS_CASES = [
    pytest.param([episode("crs", 3, 5)], ("R1", 1, "restart-crs-grade3"), id="first Grade 3 resolved"),
    pytest.param([episode("crs", 3, 5, active=True)], ("R1", 1, "restart-crs-grade3"), id="first Grade 3 active"),
    pytest.param([episode("crs", 3, 7)], ("R1", 1, "restart-crs-grade3"), id="Grade 3 on the dosing day"),
    pytest.param([episode("crs", 2, 5)], ("C2D15", 10, "continue"), id="Grade 2: continue"),
    pytest.param([episode("icans", 3, 5)], ("C2D15", 10, "continue"), id="Grade 3 ICANS: not a CRS restart"),
    pytest.param([episode("crs", 3, 9)], ("C2D15", 10, "continue"), id="Grade 3 before the last dose"),
    pytest.param(
        [episode("crs", 3, 60), episode("crs", 3, 5)], ("C2D15", 10, "continue"), id="second Grade 3 (discontinue)"
    ),
]


@pytest.mark.parametrize(("episodes", "expected"), CRS_CASES)
def test_first_grade3_crs_after_the_last_dose_reinitiates_at_1mg(
    protocol: Protocol, episodes: list[ToxicityEpisode], expected: tuple[str, int, str]
) -> None:
    result = expected_dose(make_facts(protocol, history(*TO_C2D1), episodes=episodes), TODAY, protocol)
    assert result is not None
    assert (result.position.label, result.dose_mg, result.reason) == expected
    assert (result.crs_episode is not None) == (expected[2] == "restart-crs-grade3")


def test_only_doses_up_to_the_planned_date_count(protocol: Protocol) -> None:
    facts = make_facts(protocol, history((14, 1), (7, 10)))
    earlier = expected_dose(facts, TODAY - timedelta(days=10), protocol)  # between C1D1 and C1D8
    assert earlier is not None and earlier.last is not None
    assert (earlier.position.label, earlier.gap_days, earlier.last.resource_id) == ("C1D8", 4, "adm-0")
    before_all = expected_dose(facts, TODAY - timedelta(days=20), protocol)
    assert before_all is not None and (before_all.position.label, before_all.last) == ("C1D1", None)


def test_a_dose_given_on_the_planned_date_is_the_last_dose(protocol: Protocol) -> None:
    result = expected_dose(make_facts(protocol, history((7, 1), (0, 10))), TODAY, protocol)
    assert result is not None and result.last is not None
    assert (result.last.position.label, result.gap_days, result.position.label) == ("C1D8", 0, "C1D15")


def test_unavailable_history_gives_no_expected_dose(protocol: Protocol) -> None:
    facts = make_facts(protocol, history((7, 1)), unavailable=frozenset({"administrations"}))
    assert expected_dose(facts, TODAY, protocol) is None


@pytest.mark.parametrize(
    ("label", "restart_step", "max_gap", "interval", "following"),
    [
        ("C1D1", None, 14, 7, "C1D8"),
        ("R1", 1, 14, 7, None),
        ("C1D8", None, 21, 7, "C1D15"),
        ("C4D15", 2, 21, 14, "C5D1"),
        ("C1D15", None, 28, 14, "C2D1"),
        ("C2D1", None, 28, 14, "C2D15"),
        ("C9D15", None, 28, 14, "C10D1"),
    ],
)
def test_position_classes_read_the_protocol(
    protocol: Protocol, label: str, restart_step: int | None, max_gap: int, interval: int, following: str | None
) -> None:
    from cds_service.facts import SchedulePosition

    if label == "R1":
        position = SchedulePosition("R1", None, None, 1)
    else:
        cycle, day = (int(x) for x in label[1:].split("D"))
        position = SchedulePosition(label, cycle, day, restart_step)
    assert max_gap_after(position, protocol) == max_gap
    assert interval_after(position, protocol) == interval
    if following is not None:
        assert next_numbered(position, protocol).label == following
