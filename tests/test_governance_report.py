"""`cds-service report`: the alert report from a store filled by the real service (SQLite and PostgreSQL).

The store is filled through the Flask app: the governance corpus under two protocol versions, synthetic
feedback posted to the feedback endpoint (with EHR retries), and requests answered with errors. Every figure
of the report is checked against counts computed here directly from the store with SQL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import postgres_url
from governance_example import write_candidate
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from support_governance import COMMENT_SENTINEL, fill_store

from cds_service.cli import main
from cds_service.governance.report import build_report, percentile, week_of
from cds_service.protocol import load_protocol
from cds_service.settings import REPO_ROOT
from cds_service.store import Store

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
GOVERNANCE_DB = "cds_governance"


def governance_postgres_url() -> str | None:
    """This branch's own database on the test server (created when missing), never the shared one."""
    url = postgres_url()
    if url is None:
        return None
    base = make_url(url)
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("select 1 from pg_database where datname = :n"), {"n": GOVERNANCE_DB}).first()
            if not exists:
                conn.execute(text(f"create database {GOVERNANCE_DB}"))
    finally:
        admin.dispose()
    return base.set(database=GOVERNANCE_DB).render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'report.sqlite3'}"
        return
    url = governance_postgres_url()
    if url is None:
        pytest.skip("CDS_TEST_DATABASE_URL is not set")
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in ("cds_audit_log", "cds_feedback", "cds_jwt_replay"):
            conn.execute(text(f"drop table if exists {table}"))
    engine.dispose()
    yield url


# --- the same figures, straight from the store with SQL -------------------------------------------------------
def _cards_sql(dialect: str) -> str:
    """One row per card of a successful response: rule, indicator, card uuid, service, version, suggestions."""
    if dialect == "sqlite":
        return (
            "select json_extract(c.value, '$.rule') as rule, json_extract(c.value, '$.indicator') as indicator, "
            "json_extract(c.value, '$.uuid') as uuid, a.service_id as service, a.protocol_version as version, "
            "json_extract(c.value, '$.suggestions') as suggestions "
            "from cds_audit_log a, json_each(a.cards) c where a.status = 200"
        )
    return (
        "select c->>'rule' as rule, c->>'indicator' as indicator, c->>'uuid' as uuid, a.service_id as service, "
        "a.protocol_version as version, (c->'suggestions')::text as suggestions "
        "from cds_audit_log a, jsonb_array_elements(a.cards::jsonb) c where a.status = 200"
    )


def _accepted_suggestions_sql(dialect: str) -> str:
    cards = _cards_sql(dialect)
    if dialect == "sqlite":
        return (
            f"select k.rule, json_extract(s.value, '$.action') as action, count(distinct f.service_id || '|' || "
            f"f.card_uuid || '|' || a.value) from cds_feedback f, json_each(f.accepted_suggestions) a, ({cards}) k, "
            "json_each(k.suggestions) s where f.outcome = 'accepted' and k.uuid = f.card_uuid and "
            "k.service = f.service_id and json_extract(s.value, '$.uuid') = a.value group by 1, 2"
        )
    return (
        f"select k.rule, s->>'action' as action, count(distinct f.service_id || '|' || f.card_uuid || '|' || a) "
        f"from cds_feedback f, jsonb_array_elements_text(f.accepted_suggestions::jsonb) a, ({cards}) k, "
        "jsonb_array_elements(k.suggestions::jsonb) s where f.outcome = 'accepted' and k.uuid = f.card_uuid and "
        "k.service = f.service_id and s->>'uuid' = a group by 1, 2"
    )


def sql_figures(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    dialect = engine.dialect.name
    cards = _cards_sql(dialect)
    with engine.connect() as conn:

        def rows(sql: str) -> list[Any]:
            return list(conn.execute(text(sql)))

        figures = {
            "requests": conn.execute(text("select count(*) from cds_audit_log")).scalar_one(),
            "cards": conn.execute(text(f"select count(*) from ({cards}) k")).scalar_one(),
            "by_rule_indicator": {
                (r[0], r[1]): r[2] for r in rows(f"select rule, indicator, count(*) from ({cards}) k group by 1, 2")
            },
            "by_version_rule": {
                (r[0], r[1]): r[2] for r in rows(f"select version, rule, count(*) from ({cards}) k group by 1, 2")
            },
            "requests_by_version": dict(rows("select protocol_version, count(*) from cds_audit_log group by 1")),
            "errors": {
                (r[0], r[1]): r[2]
                for r in rows(
                    "select service_id, status, count(*) from cds_audit_log where status <> 200 group by 1, 2"
                )
            },
            "outcome_by_rule": {
                (r[0], r[1]): r[2]
                for r in rows(
                    f"select k.rule, f.outcome, count(distinct f.service_id || '|' || f.card_uuid) from cds_feedback f "
                    f"join ({cards}) k on k.uuid = f.card_uuid and k.service = f.service_id group by 1, 2"
                )
            },
            "reasons": {
                (r[0], r[1]): r[2]
                for r in rows(
                    f"select k.rule, coalesce(f.override_reason_code, '(no reason given)'), count(*) from cds_feedback f "
                    f"join ({cards}) k on k.uuid = f.card_uuid and k.service = f.service_id "
                    "where f.outcome = 'overridden' group by 1, 2"
                )
            },
            "suggestions_accepted": {(r[0], r[1]): r[2] for r in rows(_accepted_suggestions_sql(dialect))},
            "feedback_rows": conn.execute(text("select count(*) from cds_feedback")).scalar_one(),
            "times": {},
            "at": [r[0] for r in rows("select at from cds_audit_log")],
        }
        for service, ms in rows("select service_id, evaluation_ms from cds_audit_log where status = 200"):
            figures["times"].setdefault(service, []).append(float(ms))
    engine.dispose()
    return figures


# --- tests ------------------------------------------------------------------------------------------------------
def test_report_figures_match_the_store(
    database_url: str, make_app: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    candidate = write_candidate(tmp_path / "candidate.yaml")
    filled = fill_store(make_app, database_url, candidate)
    sql = sql_figures(database_url)
    assert sql["requests"] == filled.responses + sum(filled.errors.values())
    assert sql["cards"] == filled.cards
    assert sql["feedback_rows"] == filled.feedback_items  # the retries were stored once

    store = Store(database_url)
    report = build_report(store.engine, since=None, generated_at=datetime.now(UTC))
    store.dispose()

    assert report.total_requests == sql["requests"]
    assert report.total_cards == sql["cards"]
    assert dict(report.cards_by_rule_indicator) == sql["by_rule_indicator"]
    assert dict(report.cards_by_version_rule) == sql["by_version_rule"]
    assert dict(report.requests_by_version) == sql["requests_by_version"]
    current = load_protocol(REPO_ROOT / "protocol" / "tarlatamab.yaml").version
    assert set(report.requests_by_version) == {current, load_protocol(candidate).version}
    assert dict(report.errors_by_service_status) == sql["errors"]
    assert sorted(status for _, status in report.errors_by_service_status.elements()) == sorted(
        Counter(filled.errors).elements()
    )
    for rule, fb in report.feedback_by_rule.items():
        assert fb.shown == sum(n for (r, _), n in sql["by_rule_indicator"].items() if r == rule)
        assert fb.accepted == sql["outcome_by_rule"].get((rule, "accepted"), 0), rule
        assert fb.overridden == sql["outcome_by_rule"].get((rule, "overridden"), 0), rule
    assert sum(fb.accepted + fb.overridden for fb in report.feedback_by_rule.values()) > 0
    assert {(rule, code): n for (rule, code, _), n in report.override_reasons.items()} == sql["reasons"]
    assert dict(report.suggestions_accepted) == sql["suggestions_accepted"]
    assert report.suggestions_accepted, "some suggestions were accepted"
    for service, values in sql["times"].items():
        assert report.timing[service].requests == len(values)
        assert report.timing[service].p50_ms == pytest.approx(percentile(values, 50))
        assert report.timing[service].p99_ms == pytest.approx(percentile(values, 99))
    stamps = [datetime.fromisoformat(at) if isinstance(at, str) else at for at in sql["at"]]  # SQLite: text
    weeks = {week_of(at if at.tzinfo else at.replace(tzinfo=UTC)) for at in stamps}
    assert set(report.weeks) == weeks
    assert sum(report.cards_by_week_indicator.values()) == sql["cards"]

    # The command reads the store of the CDS_* settings and writes the page.
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    out = tmp_path / "report.html"
    assert main(["report", "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.count("<svg") >= 5
    for rule, _indicator in sql["by_rule_indicator"]:
        assert f"<td>{rule}</td>" in page, rule
    for (_, status), _ in sql["errors"].items():
        assert f'<td class="n">{status}</td>' in page
    # Self-contained, and nothing about patients, users or tokens.
    assert "<script" not in page and "<link" not in page and "src=" not in page and "@import" not in page
    assert "url(" not in page
    for patient_id in filled.patient_ids:
        assert patient_id not in page
    for hook_instance in filled.hook_instances:
        assert hook_instance not in page
    assert COMMENT_SENTINEL not in page
    assert "Practitioner/" not in page and "Bearer" not in page


def test_since_leaves_out_earlier_rows(make_app: Callable[..., Any], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'since.sqlite3'}"
    fill_store(make_app, url, write_candidate(tmp_path / "candidate.yaml"))
    engine = create_engine(url)
    with engine.begin() as conn:  # move a third of the rows five weeks back, as if written then
        conn.execute(text("update cds_audit_log set at = datetime(at, '-35 days') where id % 3 = 0"))
        older = conn.execute(text("select count(*) from cds_audit_log where id % 3 = 0")).scalar_one()
        total = conn.execute(text("select count(*) from cds_audit_log")).scalar_one()
    engine.dispose()
    store = Store(url)
    everything = build_report(store.engine, since=None, generated_at=datetime.now(UTC))
    recent = build_report(store.engine, since=datetime.now(UTC) - timedelta(days=7), generated_at=datetime.now(UTC))
    store.dispose()
    assert everything.total_requests == total
    assert recent.total_requests == total - older
    assert len(everything.weeks) == 2 and len(recent.weeks) == 1
    assert recent.unmatched_feedback > 0  # feedback on the cards of the rows left out


def test_an_old_database_gets_the_protocol_version_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store created before the column existed: the service and the report add it; old rows read as unrecorded."""
    path = tmp_path / "old.sqlite3"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text(
            "create table cds_audit_log (id integer primary key autoincrement, at datetime not null, "
            "service_id varchar(100) not null, hook_instance varchar(200) not null, patient_id varchar(200), "
            "status integer not null, evaluation_ms float not null, cards text not null, rule_ids text not null, "
            "data_origin text, issuer varchar(500))"
        ))  # fmt: skip
        conn.execute(text(
            "insert into cds_audit_log (at, service_id, hook_instance, patient_id, status, evaluation_ms, cards, "
            "rule_ids) values ('2026-11-02 10:00:00', 'tarlatamab-order-sign', 'h-1', 'p-1', 200, 4.5, "
            "'[{\"uuid\": \"u-1\", \"rule\": \"monitoring.schedule\", \"topic\": \"monitoring\", \"indicator\": \"info\"}]', "
            "'[\"monitoring.schedule\"]')"
        ))  # fmt: skip
    engine.dispose()
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{path}")
    out = tmp_path / "old.html"
    assert main(["report", "--out", str(out)]) == 0
    store = Store(f"sqlite:///{path}")
    (row,) = store.audit_log()
    assert "protocol_version" in row and row["protocol_version"] is None
    report = build_report(store.engine, since=None, generated_at=datetime.now(UTC))
    store.create_schema()  # a second start finds the column and changes nothing
    store.dispose()
    assert dict(report.requests_by_version) == {"unrecorded": 1}
    assert "unrecorded" in out.read_text(encoding="utf-8")


def test_report_errors_exit_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path / 'ok.sqlite3'}")
    assert main(["report", "--since", "last tuesday", "--out", str(tmp_path / "r.html")]) == 2
    assert "--since" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "no-such-dir" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and len(err.strip().splitlines()) == 1


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(make_app: Callable[..., Any], tmp_path: Path, monkeypatch: Any) -> None:
    url = f"sqlite:///{tmp_path / 'chromium.sqlite3'}"
    fill_store(make_app, url, write_candidate(tmp_path / "candidate.yaml"), rounds=2)
    engine = create_engine(url)
    with engine.begin() as conn:  # spread the rows over four weeks, so that the weekly charts have columns
        conn.execute(text("update cds_audit_log set at = datetime(at, '-' || (7 * (id % 4)) || ' days')"))
    engine.dispose()
    monkeypatch.setenv("CDS_DATABASE_URL", url)
    page = tmp_path / "report.html"
    assert main(["report", "--out", str(page)]) == 0
    chromium = _chromium()
    assert chromium is not None
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000"]  # fmt: skip
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    # Chromium parsed the charts as SVG elements with drawn bars, and the tables.
    assert dom.count("<svg") >= 5 and dom.count("<rect") > 20 and "<table>" in dom
    assert dom.count("2026-") >= 4  # the week columns
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
    if os.environ.get("CDS_UPDATE_REPORT_SCREENSHOT"):
        (REPO_ROOT / "docs" / "report-screenshot.png").write_bytes(data)


def test_the_audit_records_errors_before_and_during_evaluation_and_the_protocol_version(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    engine = app.extensions["cds_engine"]
    url = "/cds-services/tarlatamab-order-sign"
    with app.test_client() as client:
        assert client.post(url, data=b"not json", content_type="text/plain").status_code == 415
        body = {"hook": "order-sign", "hookInstance": "d2b0a3c4-0000-4000-8000-0000000000aa", "context": {}}

        def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(engine, "handle", broken)
        assert client.post(url, json=body).status_code == 500
    assert app.extensions["cds_audit_writer"].flush()
    rows = app.extensions["cds_store"].audit_log()
    assert [(r["hook_instance"], r["status"]) for r in rows] == [("", 415), (body["hookInstance"], 500)]
    assert {r["protocol_version"] for r in rows} == {engine.protocol.version}


def test_audited_cards_name_their_suggestions_for_the_feedback_join(make_app: Callable[..., Any]) -> None:
    app = make_app()
    body = json.loads((REPO_ROOT / "fixtures" / "requests" / "clinical-neutropenia-hold.json").read_text())
    with app.test_client() as client:
        cards = client.post("/cds-services/tarlatamab-order-sign", json=body).get_json()["cards"]
    assert app.extensions["cds_audit_writer"].flush()
    (row,) = app.extensions["cds_store"].audit_log()
    audited = {c["uuid"]: c for c in json.loads(row["cards"])}
    assert set(audited) == {c["uuid"] for c in cards}
    for card in cards:
        offered = [s["uuid"] for s in card.get("suggestions", [])]
        assert [s["uuid"] for s in audited[card["uuid"]]["suggestions"]] == offered
    actions = {s["action"] for c in audited.values() for s in c["suggestions"]}
    assert "delete MedicationRequest" in actions  # the hold offers to cancel the draft
    assert row["protocol_version"] == app.extensions["cds_engine"].protocol.version
