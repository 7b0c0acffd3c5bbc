"""`cds-service compare`: change impact of a candidate protocol by replay of the governance corpus.

Expectations come from the engine, never from card wording: a candidate changes one threshold in a copy of
the protocol; the comparison must report exactly the cards an independent replay finds different, and only
cards of rules that read that threshold.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import governance_example
import pytest
import yaml

from cds_service.cli import main
from cds_service.engine import Engine
from cds_service.errors import ServiceError
from cds_service.governance.compare import HOOK_TO_SERVICE, compare_requests, request_files
from cds_service.settings import REPO_ROOT, Settings, parse_now

NOW = "2026-11-21T09:00:00Z"
CORPUS_DIRS = [REPO_ROOT / "fixtures" / "requests", REPO_ROOT / "fixtures" / "corpus"]
PROTOCOL = REPO_ROOT / "protocol" / "tarlatamab.yaml"

# Rules that may make no card of their own, with the reason. Under the card set of one order (decided
# 2026-12-01) these are shown inside another rule's card; on a protocol where they still make their own card
# the corpus exercises them. An entry for a rule the protocol does not define is ignored.
_PLAN = "shown inside the order's monitoring plan card (monitoring.schedule / monitoring.escalated)"
EXEMPT: dict[str, str] = {
    "administration.infusion": _PLAN,
    "premedication.ordered": _PLAN,
    "hydration.ordered": _PLAN,
    "pregnancy.contraception": _PLAN,
    "crs.electrolytes": "part of the CRS card while CRS is active (protocol decision 13.8)",
    "labs.electrolytes-missing": "part of the CRS card while CRS is active (protocol decision 13.8)",
}


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path / "data"))
    for name in ("CDS_NOW", "CDS_PROTOCOL_FILE", "CDS_CARDS_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def corpus() -> list[tuple[Path, str, dict[str, Any]]]:
    out = []
    for path in request_files(CORPUS_DIRS):
        body = json.loads(path.read_text(encoding="utf-8"))
        out.append((path, HOOK_TO_SERVICE[body["hook"]], body))
    return out


@pytest.fixture(scope="module")
def current_engine() -> Engine:
    return Engine(Settings(audit_enabled=False, now=parse_now(NOW)))


def write_candidate(tmp_path: Path, change: Callable[[dict[str, Any]], None], bump: bool = True) -> Path:
    data = yaml.safe_load(PROTOCOL.read_text(encoding="utf-8"))
    change(data)
    if bump:
        data["protocol"]["version"] = "2099.1.0-candidate"
    path = tmp_path / "candidate.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def setter(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node = data
        for key in keys[:-1]:
            node = node[key]
        assert keys[-1] in node, f"protocol has no {'.'.join(keys)}"
        node[keys[-1]] = value

    return change


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- an independent oracle: the cards of each request under each engine, as plain JSON ---------------
def _strip(value: Any, version: str) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, version) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_strip(v, version) for v in value]
    if isinstance(value, str):
        return value.replace(version, "{version}")
    return value


def cards_by_rule(engine: Engine, service_id: str, body: dict[str, Any]) -> Counter[tuple[str, str]]:
    try:
        outcome = engine.handle(service_id, copy.deepcopy(body), now=parse_now(NOW))
    except ServiceError as exc:
        return Counter({("<error>", str(exc.status)): 1})
    return Counter(
        (record.rule_id, json.dumps(_strip(card, engine.protocol.version), sort_keys=True))
        for record, card in zip(outcome.cards, outcome.body["cards"], strict=True)
    )


def oracle(
    corpus: list[tuple[Path, str, dict[str, Any]]], current: Engine, candidate: Engine
) -> tuple[set[str], int, set[str]]:
    """(rule ids of differing cards, number of differing cards, files with a difference)."""
    rules: set[str] = set()
    count = 0
    files: set[str] = set()
    for path, service_id, body in corpus:
        before = cards_by_rule(current, service_id, body)
        after = cards_by_rule(candidate, service_id, body)
        gone, new = before - after, after - before
        if gone or new:
            files.add(str(path))
        rules |= {rule for rule, _ in (gone + new)}
        count += sum(gone.values()) + sum(new.values())
    return rules, count, files


# --- every rule is exercised by the corpus ------------------------------------------------------------------
def test_every_rule_fires_in_at_least_one_corpus_request(
    corpus: list[tuple[Path, str, dict[str, Any]]], current_engine: Engine
) -> None:
    fired: set[str] = set()
    for _, service_id, body in corpus:
        outcome = current_engine.handle(service_id, copy.deepcopy(body), now=parse_now(NOW))
        fired |= {record.rule_id for record in outcome.cards}
    rules = set(current_engine.protocol.rules)
    missing = rules - fired - set(EXEMPT)
    assert not missing, f"no corpus request makes a card of: {sorted(missing)}"


def test_corpus_requests_are_realistic_r4_shapes(corpus: list[tuple[Path, str, dict[str, Any]]]) -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p, _, _ in corpus)
    assert '"55513007701"' in text  # 11-digit NDC without dashes
    assert '"hasMember"' in text  # panel Observations
    assert '"medicationReference"' in text and '"contained"' in text  # contained Medication
    assert "-05:00" in text and "+01:00" in text  # time-zone offsets
    assert '"OperationOutcome"' in text  # a prefetch the EHR could not fill


# --- identical candidates -----------------------------------------------------------------------------------
def test_an_identical_candidate_reports_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = tmp_path / "same.yaml"
    same.write_bytes(PROTOCOL.read_bytes())
    code, out, err = run(capsys, "--protocol", str(same), "--now", NOW, *map(str, CORPUS_DIRS))
    assert code == 0, err
    assert err == ""
    assert "No change" in out
    code, out, _ = run(capsys, "--protocol", str(same), "--now", NOW, "--json", *map(str, CORPUS_DIRS))
    report = json.loads(out)
    assert code == 0
    assert report["changed"] is False and report["changedRequests"] == 0 and report["byRule"] == {}
    assert report["requests"] == len(request_files(CORPUS_DIRS))
    assert all(r["changes"] == [] for r in report["results"])


def test_a_new_version_number_alone_is_no_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    candidate = write_candidate(tmp_path, lambda data: None, bump=True)
    code, out, err = run(capsys, "--protocol", str(candidate), "--now", NOW, "--json", *map(str, CORPUS_DIRS))
    assert code == 0, err
    report = json.loads(out)
    assert report["candidate"]["protocolVersion"] == "2099.1.0-candidate"
    assert report["changed"] is False


# --- one threshold per protocol section ---------------------------------------------------------------------
# (section, the change, rules that read that value: the only rules whose cards may change)
SECTION_CHANGES = [
    ("dose", setter("schedule", "max_gap_days", "after_step_up", value=6),
     {"dose.step-up-repeated", "dose.restart-after-delay", "dose.step-up-skipped", "premedication.dexamethasone-missing",
      "premedication.dexamethasone-dose", "hydration.saline-missing", "hydration.saline-volume", "monitoring.schedule",
      "monitoring.escalated", "administration.infusion", "summary.patient-view", "pregnancy.status-unknown",
      "pregnancy.contraception", "eligibility.indication", "dose.restart-after-crs-grade3",
      "premedication.dexamethasone-route", "hydration.saline-route", "hydration.saline-strength"}),
    ("schedule", setter("schedule", "too_early_tolerance_days", value=5), {"schedule.too-early", "summary.patient-view"}),
    ("premedication", setter("premedication", "dexamethasone_mg", value=12),
     {"premedication.dexamethasone-missing", "premedication.dexamethasone-dose", "premedication.dexamethasone-route",
      "premedication.ordered", "monitoring.schedule", "monitoring.escalated", "summary.patient-view"}),
    ("hydration", setter("premedication", "saline_volume_ml", value=750),
     {"hydration.saline-missing", "hydration.saline-volume", "hydration.saline-route", "hydration.saline-strength",
      "hydration.ordered", "monitoring.schedule", "monitoring.escalated", "summary.patient-view"}),
    ("administration", setter("administration", "infusion_rate_ml_per_h", value=200),
     {"administration.infusion", "administration.rate-conflict", "monitoring.schedule", "monitoring.escalated"}),
    ("monitoring", setter("monitoring", "extended", "hours_min", value=20),
     {"monitoring.schedule", "monitoring.escalated", "summary.patient-view"}),
    ("labs", setter("labs", "thresholds", "hemoglobin_below", value=7.0), {"lab-hold.hemoglobin"}),
    ("labs-window", setter("labs", "window_days", value=7),
     {"labs.missing", "labs.electrolytes-missing", "lab-hold.anc", "lab-hold.platelets", "lab-hold.hemoglobin",
      "lab-hold.hepatotoxicity-grade3", "lab-hold.hepatotoxicity-grade4", "lab-hold.hys-law", "organ-function.renal",
      "organ-function.hepatic", "summary.patient-view", "monitoring.schedule", "administration.infusion"}),
    ("neurotoxicity", setter("toxicity", "neurotox_grade3_improvement_days", value=10),
     {"neurotox.grade3-not-improved", "neurotox.grade3-active", "neurotox.grade3-clearance", "monitoring.schedule",
      "monitoring.escalated", "administration.infusion", "summary.patient-view"}),
    ("crs", setter("conditions", "crs_icd10cm", "D89.833", value=2),
     {"crs.active", "crs.grade3-recurrent", "crs.grade4", "crs.electrolytes", "dose.restart-after-crs-grade3",
      "premedication.dexamethasone-missing", "hydration.saline-missing", "monitoring.schedule", "monitoring.escalated",
      "administration.infusion", "labs.electrolytes-missing", "summary.patient-view"}),
    ("monitoring-escalation", setter("monitoring", "escalation_min_grade", value=3),
     {"monitoring.escalated", "monitoring.schedule", "summary.patient-view"}),
    ("populations-age", setter("populations", "adult_age_years", value=16), {"eligibility.age"}),
    ("populations-pregnancy", setter("populations", "pregnancy_check_age_max", value=35),
     {"pregnancy.status-unknown", "pregnancy.contraception", "pregnancy.pregnant", "monitoring.schedule",
      "monitoring.escalated"}),
]  # fmt: skip


@pytest.mark.parametrize(("section", "change", "readers"), SECTION_CHANGES, ids=[s for s, _, _ in SECTION_CHANGES])
def test_a_changed_threshold_changes_exactly_the_cards_of_the_rules_that_read_it(
    section: str,
    change: Callable[[dict[str, Any]], None],
    readers: set[str],
    tmp_path: Path,
    corpus: list[tuple[Path, str, dict[str, Any]]],
    current_engine: Engine,
) -> None:
    candidate_file = write_candidate(tmp_path, change)
    candidate = Engine(Settings(audit_enabled=False, protocol_file=candidate_file, now=parse_now(NOW)))
    expected_rules, expected_count, expected_files = oracle(corpus, current_engine, candidate)
    assert expected_rules, f"{section}: the corpus has no request this threshold matters to"

    comparison = compare_requests([p for p, _, _ in corpus], current_engine, candidate, parse_now(NOW))
    changes = [c for r in comparison.results for c in r.changes]
    reported_rules = {c.rule_id for c in changes}
    assert reported_rules == expected_rules
    assert reported_rules <= readers, f"{section}: cards of rules that do not read it changed"
    reported_count = sum(2 if c.kind == "changes" else 1 for c in changes)
    assert reported_count == expected_count
    assert {r.file for r in comparison.results if r.changed} == expected_files
    assert comparison.changed
    tallies = comparison.by_rule()
    assert set(tallies) == reported_rules
    assert sum(t.appears + t.disappears + t.changes for t in tallies.values()) == len(changes)


# --- the command line -----------------------------------------------------------------------------------------
def test_the_worked_example_reports_the_c1d1_c1d8_monitoring_cards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corpus: list[tuple[Path, str, dict[str, Any]]],
    current_engine: Engine,
) -> None:  # fmt: skip
    example = governance_example.write_candidate(tmp_path / "candidate.yaml")
    code, out, err = run(capsys, "--protocol", str(example), "--now", NOW, "--json", *map(str, CORPUS_DIRS))
    assert code == 1, err
    report = json.loads(out)
    candidate = Engine(Settings(audit_enabled=False, protocol_file=example, now=parse_now(NOW)))
    expected_rules, _, expected_files = oracle(corpus, current_engine, candidate)
    assert set(report["byRule"]) == expected_rules
    changed = {r["file"] for r in report["results"] if r["changed"]}
    assert {str(Path(f).resolve()) for f in changed} == {str(Path(f).resolve()) for f in expected_files}
    assert expected_rules <= {"monitoring.schedule", "monitoring.escalated", "summary.patient-view"}
    # Exactly the C1D1 and C1D8 orders: every changed request plans one of them (the card names the position).
    for result in report["results"]:
        if result["changed"]:
            assert all(c["change"] == "changes" for c in result["changes"])


def test_the_documented_example_is_current() -> None:
    """docs/examples holds the candidate as generated from the protocol file, and docs/governance.md quotes what
    the command prints today (`python tests/governance_example.py` rewrites both)."""
    protocol_text = PROTOCOL.read_text(encoding="utf-8")
    assert governance_example.EXAMPLE.read_text(encoding="utf-8") == governance_example.candidate_text(protocol_text), (
        "docs/examples/candidate-monitoring-c1d1-c1d8.yaml is stale: run python tests/governance_example.py"
    )
    code, output = governance_example.example_output()
    assert code == 1
    guide = governance_example.GUIDE.read_text(encoding="utf-8")
    assert governance_example.guide_block(guide) == governance_example.render_block(output), (
        "the output quoted in docs/governance.md is stale: run python tests/governance_example.py"
    )


def test_plain_text_lists_changed_requests_and_a_summary_by_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = write_candidate(tmp_path, setter("labs", "thresholds", "hemoglobin_below", value=7.0))
    code, out, _ = run(capsys, "--protocol", str(candidate), "--now", NOW, *map(str, CORPUS_DIRS))
    assert code == 1
    assert "lab-hold-hemoglobin.json" in out
    assert "- lab-hold.hemoglobin disappears" in out
    assert "By rule:" in out and "1 of " in out


def test_candidate_card_wording_is_compared_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corpus: list[tuple[Path, str, dict[str, Any]]],
    current_engine: Engine,
) -> None:  # fmt: skip
    cards = tmp_path / "cards"
    cards.mkdir()
    for path in (REPO_ROOT / "cards").glob("*.yaml"):
        (cards / path.name).write_bytes(path.read_bytes())
    common = yaml.safe_load((cards / "common.yaml").read_text(encoding="utf-8"))
    common["suggestion_labels"]["delete-order"] = "Withdraw this tarlatamab order"
    (cards / "common.yaml").write_text(yaml.safe_dump(common, sort_keys=False), encoding="utf-8")
    candidate_engine = Engine(Settings(audit_enabled=False, cards_dir=cards, now=parse_now(NOW)))
    expected_rules, _, _ = oracle(corpus, current_engine, candidate_engine)

    code, out, err = run(
        capsys, "--protocol", str(PROTOCOL), "--cards", str(cards), "--now", NOW, "--json", *map(str, CORPUS_DIRS)
    )
    assert code == 1, err
    report = json.loads(out)
    changes = [c for r in report["results"] for c in r["changes"]]
    assert {c["rule"] for c in changes} == expected_rules
    assert all(c["change"] == "changes" and c["fields"] == ["suggestions"] for c in changes)
    # exactly the cards that offer to delete the order
    deleting = 0
    for _, service_id, body in corpus:
        outcome = current_engine.handle(service_id, copy.deepcopy(body), now=parse_now(NOW))
        deleting += sum(
            1 for card in outcome.body["cards"]
            if any(a["type"] == "delete" for s in card.get("suggestions", []) for a in s["actions"])
        )  # fmt: skip
    assert deleting and len(changes) == deleting


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing-candidate", "no such file"),
        ("bad-yaml", "not valid YAML"),
        ("refused-dose", "doses.step_up_mg must be 1"),
        ("removed-key", "missing key"),
        ("bad-request", "not valid JSON"),
        ("no-hook", "no service answers hook"),
        ("missing-path", "no such file or directory"),
        ("empty-dir", "no request files"),
        ("bad-cards", "no such folder"),
    ],
)
def test_errors_exit_2_with_one_line(
    setup: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_bytes(PROTOCOL.read_bytes())
    request = REPO_ROOT / "fixtures" / "requests" / "schedule-c1d1.json"
    extra: list[str] = []
    if setup == "missing-candidate":
        candidate = tmp_path / "nope.yaml"
    elif setup == "bad-yaml":
        candidate.write_text("protocol: [unclosed\n", encoding="utf-8")
    elif setup == "refused-dose":
        candidate = write_candidate(tmp_path, setter("doses", "step_up_mg", value=2))
    elif setup == "removed-key":
        candidate = write_candidate(tmp_path, lambda d: d["monitoring"]["extended"].pop("hours_min"))
    elif setup == "bad-request":
        request = tmp_path / "bad.json"
        request.write_text("{not json", encoding="utf-8")
    elif setup == "no-hook":
        request = tmp_path / "nohook.json"
        request.write_text(json.dumps({"hook": "encounter-start"}), encoding="utf-8")
    elif setup == "missing-path":
        request = tmp_path / "absent"
    elif setup == "empty-dir":
        request = tmp_path / "empty"
        request.mkdir()
    elif setup == "bad-cards":
        extra = ["--cards", str(tmp_path / "no-cards")]
    code, out, err = run(capsys, "--protocol", str(candidate), *extra, "--now", NOW, str(request))
    assert code == 2
    assert out == ""
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err


# --- card identity ------------------------------------------------------------------------------------------
def _card(summary: str, order: str | None, indicator: str = "critical") -> dict[str, Any]:
    card: dict[str, Any] = {"uuid": f"uuid-{summary}", "summary": summary, "indicator": indicator, "detail": "d",
                            "source": {"topic": {"code": "lab-hold"}}}  # fmt: skip
    if order is not None:
        card["suggestions"] = [
            {"label": "Cancel", "uuid": f"s-{summary}", "actions": [{"type": "delete", "resourceId": f"MedicationRequest/{order}"}]}
        ]  # fmt: skip
    return card


def test_cards_are_matched_by_rule_and_order_not_by_uuid_or_position() -> None:
    from cds_service.governance.compare import card_views, diff_cards

    drafts = frozenset({"order-a", "order-b"})
    before = card_views(
        [_card("A held", "order-a"), _card("B held", "order-b"), _card("advice", None, "info")],
        ["lab-hold.anc", "lab-hold.anc", "crs.electrolytes"],
        drafts,
        "1.0",
    )
    # The candidate no longer holds order A; order B's card moved up and got new uuids; the advice is unchanged.
    after_cards = [_card("B held", "order-b"), _card("advice", None, "info")]
    for card in after_cards:
        card["uuid"] = "new-" + card["uuid"]
    after = card_views(after_cards, ["lab-hold.anc", "crs.electrolytes"], drafts, "1.1")
    changes = diff_cards(before, after)
    assert [(c.kind, c.rule_id, c.order) for c in changes] == [("disappears", "lab-hold.anc", "order-a")]


def test_the_version_quoted_in_a_detail_is_no_change_but_other_numbers_are() -> None:
    from cds_service.governance.compare import card_views, diff_cards

    def views(detail: str, version: str) -> Any:
        card = {**_card("x", None), "detail": detail}
        return card_views([card], ["crs.active"], frozenset(), version)

    assert (
        diff_cards(
            views("rule (version 2026.11.3): 22 h", "2026.11.3"), views("rule (version 2026.12.0): 22 h", "2026.12.0")
        )
        == ()
    )
    (change,) = diff_cards(views("version 2026.11.3: 22 h", "2026.11.3"), views("version 2026.11: 20 h", "2026.11"))
    assert change.fields == ("detail",)


def test_requests_answered_with_an_error_are_compared_by_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A malformed hook request (no `context`) is a 400 under both protocols. (A tarlatamab draft the service
    # cannot fully read, e.g. one without an id, is answered with cards: section 12.)
    body = json.loads((REPO_ROOT / "fixtures" / "requests" / "schedule-c1d1.json").read_text(encoding="utf-8"))
    del body["context"]
    request = tmp_path / "no-context.json"
    request.write_text(json.dumps(body), encoding="utf-8")
    same = tmp_path / "same.yaml"
    same.write_bytes(PROTOCOL.read_bytes())
    code, out, err = run(capsys, "--protocol", str(same), "--now", NOW, "--json", str(request))
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    assert result["status"] == {"current": 400, "candidate": 400} and result["changed"] is False
