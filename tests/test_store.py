"""The store (`cds_service.store`): feedback and the audit log, on SQLite and (when CDS_TEST_DATABASE_URL is
set) PostgreSQL; feedback survives a restart; a database outage never costs a clinical answer."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fhir_builders as fb
import orjson
import pytest
from conftest import NOW, postgres_url
from sqlalchemy import inspect
from support_store import audit_entry

from cds_service.app import create_app
from cds_service.settings import Settings
from cds_service.store import AuditEntry, AuditWriter, FeedbackItem, Store, StoreUnavailable

SIGN = "/cds-services/tarlatamab-order-sign"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL: CDS_TEST_DATABASE_URL is not set and the local server does not answer")
    return url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, tmp_path)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    store.create_schema()
    yield store
    store.dispose()


def broken_engine(tmp_path: Path) -> Any:
    from sqlalchemy import create_engine

    return create_engine(f"sqlite:///{tmp_path}/no-such-dir/db.sqlite3")


def item(card: str | None = None, **kw: Any) -> FeedbackItem:
    values: dict[str, Any] = {
        "card_uuid": card or str(uuid.uuid4()),
        "outcome": "accepted",
        "outcome_timestamp": "2026-11-21T09:05:31Z",
        "accepted_suggestions": (str(uuid.uuid4()),),
    }
    values.update(kw)
    return FeedbackItem(**values)


def rows_for(store: Store, cards: set[str]) -> list[dict[str, Any]]:
    return [r for r in store.feedback() if r["card_uuid"] in cards]



# --- schema and configuration ----------------------------------------------------------------------------
def test_default_database_is_sqlite_in_the_data_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.effective_database_url == f"sqlite:///{(tmp_path / 'data' / 'cds-service.sqlite3').resolve()}"
    assert (
        Settings.from_env({"CDS_DATABASE_URL": "postgresql://u@db/x"}).effective_database_url == "postgresql://u@db/x"
    )


def test_schema_is_created_on_start(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "fresh", now=NOW))
    try:
        assert (tmp_path / "fresh" / "cds-service.sqlite3").exists()
        tables = set(inspect(app.extensions["cds_store"].engine).get_table_names())
        assert {"cds_feedback", "cds_audit_log", "cds_jwt_replay"} <= tables
    finally:
        app.extensions["cds_store"].dispose()


def test_schema_creation_is_idempotent(store: Store) -> None:
    store.create_schema()
    Store(store.url).create_schema()


def test_schema_creation_failure_is_store_unavailable(tmp_path: Path) -> None:
    store = Store("sqlite://")
    store.engine = broken_engine(tmp_path)
    with pytest.raises(StoreUnavailable):
        store.create_schema()


# --- feedback --------------------------------------------------------------------------------------------
def test_feedback_round_trip(store: Store) -> None:
    first = item(override_reason_code=None)
    second = item(
        outcome="overridden",
        accepted_suggestions=(),
        override_reason_system="urn:tarlatamab-cds:override-reason",
        override_reason_code="clinician-reviewed",
        override_reason_display="Reviewed",
        user_comment="ok",
    )
    assert store.save_feedback("tarlatamab-order-sign", [first, second], issuer="https://ehr.example.org") == 2
    rows = rows_for(store, {first.card_uuid, second.card_uuid})
    assert [r["outcome"] for r in rows] == ["accepted", "overridden"]
    assert orjson.loads(rows[0]["accepted_suggestions"]) == list(first.accepted_suggestions)
    assert rows[1]["accepted_suggestions"] is None
    assert rows[1]["override_reason_code"] == "clinician-reviewed"
    assert rows[0]["issuer"] == "https://ehr.example.org"
    received = rows[0]["received_at"]
    assert received.tzinfo is not None and abs(datetime.now(UTC) - received) < timedelta(minutes=1)


def test_feedback_is_stored_once(store: Store) -> None:
    one = item()
    assert store.save_feedback("tarlatamab-order-sign", [one]) == 1
    assert store.save_feedback("tarlatamab-order-sign", [one, one]) == 0
    other = item(card=one.card_uuid, outcome_timestamp="2026-11-21T10:00:00Z")
    assert store.save_feedback("tarlatamab-order-sign", [one, other]) == 1
    assert len(rows_for(store, {one.card_uuid})) == 2


def test_concurrent_feedback_loses_nothing(store: Store) -> None:
    """Eight writers save a shared item plus their own: every call succeeds, every item is stored once."""
    shared = item()
    own = [item() for _ in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(own))

    def write(mine: FeedbackItem) -> None:
        try:
            barrier.wait(5)
            store.save_feedback("tarlatamab-order-sign", [shared, mine])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(mine,)) for mine in own]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    cards = {shared.card_uuid} | {m.card_uuid for m in own}
    assert sorted(r["card_uuid"] for r in rows_for(store, cards)) == sorted(cards)


def test_feedback_on_unavailable_database_raises(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ok.sqlite3'}")
    store.engine = broken_engine(tmp_path)
    with pytest.raises(StoreUnavailable):
        store.save_feedback("tarlatamab-order-sign", [item()])


# --- audit -----------------------------------------------------------------------------------------------
def test_audit_round_trip_without_tokens_or_values(store: Store) -> None:
    entry = audit_entry(issuer="https://ehr.example.org")
    store.write_audit([entry])
    row = next(r for r in store.audit_log() if r["hook_instance"] == entry.hook_instance)
    assert row["service_id"] == "tarlatamab-order-sign" and row["patient_id"] == fb.PATIENT_ID
    assert row["status"] == 200 and row["evaluation_ms"] == pytest.approx(12.346)
    assert orjson.loads(row["cards"]) == list(entry.cards)
    assert orjson.loads(row["rule_ids"]) == ["dose.step-up-skipped"]
    assert orjson.loads(row["data_origin"]) == entry.data_origin
    assert row["at"].tzinfo is not None
    assert set(row) == {"id", "at", "service_id", "hook_instance", "patient_id", "status", "evaluation_ms", "cards",
                        "rule_ids", "data_origin", "issuer", "protocol_version"}  # fmt: skip


def test_overlong_identifiers_do_not_break_an_audit_batch(store: Store) -> None:
    long_instance = "h" * 500
    normal = audit_entry()
    store.write_audit([audit_entry(hook_instance=long_instance, patient_id="p" * 500, issuer="i" * 900), normal])
    instances = {r["hook_instance"] for r in store.audit_log()}
    assert normal.hook_instance in instances
    assert long_instance[:200] in instances


def test_audit_writer_writes_in_the_background(store: Store) -> None:
    writer = AuditWriter(store)
    entries = [audit_entry() for _ in range(25)]
    for entry in entries:
        writer.submit(entry)
    assert writer.flush(10)
    logged = {r["hook_instance"] for r in store.audit_log()}
    assert {e.hook_instance for e in entries} <= logged
    assert writer.failures == 0
    writer.close()
    assert writer._thread is not None and not writer._thread.is_alive()


def test_audit_writer_counts_failures_and_carries_on(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    store.create_schema()
    good_engine = store.engine
    store.engine = broken_engine(tmp_path)
    writer = AuditWriter(store)
    writer.submit(audit_entry())
    writer.submit(audit_entry())
    assert writer.flush(10)
    assert writer.failures == 2 and store.audit_failures == 2
    store.engine = good_engine  # the database is back: the writer thread is still working
    later = audit_entry()
    writer.submit(later)
    assert writer.flush(10)
    assert [r["hook_instance"] for r in store.audit_log()] == [later.hook_instance]
    writer.close()


def test_audit_writer_drops_when_the_queue_is_full(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    store.create_schema()
    gate = threading.Event()
    original = store.write_audit

    def blocked(entries: list[AuditEntry]) -> None:
        gate.wait(10)
        original(entries)

    store.write_audit = blocked  # type: ignore[method-assign]
    writer = AuditWriter(store, max_queue=2, batch=1)
    for _ in range(6):
        writer.submit(audit_entry())
    gate.set()
    assert writer.flush(10)
    assert writer.dropped >= 1
    writer.close()


# --- through the app: restart and outage ------------------------------------------------------------------
def feedback_body(card: str) -> dict[str, Any]:
    return {"feedback": [{"card": card, "outcome": "accepted", "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
                          "outcomeTimestamp": "2026-11-21T09:05:31Z"}]}  # fmt: skip


def build_app(tmp_path: Path, database_url: str, **overrides: Any) -> Any:
    app = create_app(Settings(data_dir=tmp_path, database_url=database_url, now=NOW, **overrides))
    app.config["TESTING"] = True
    return app


def shutdown(app: Any) -> None:
    writer = app.extensions.get("cds_audit_writer")
    if writer is not None:
        writer.close()
    app.extensions["cds_store"].dispose()


def test_feedback_survives_a_restart(tmp_path: Path, database_url: str) -> None:
    card = str(uuid.uuid4())
    first = build_app(tmp_path, database_url)
    try:
        assert first.test_client().post(SIGN + "/feedback", json=feedback_body(card)).status_code == 200
    finally:
        shutdown(first)
    second = build_app(tmp_path, database_url)
    try:
        rows = rows_for(second.extensions["cds_store"], {card})
        assert [(r["service_id"], r["outcome"]) for r in rows] == [("tarlatamab-order-sign", "accepted")]
        # the EHR resends after the restart: still stored once
        assert second.test_client().post(SIGN + "/feedback", json=feedback_body(card)).status_code == 200
        assert len(rows_for(second.extensions["cds_store"], {card})) == 1
    finally:
        shutdown(second)


def test_audit_entries_reach_the_database(tmp_path: Path, database_url: str) -> None:
    app = build_app(tmp_path, database_url)
    try:
        body = fb.hook_request("order-sign", drafts=[fb.tarlatamab_order("2026-11-22T09:00:00Z")])
        response = app.test_client().post(SIGN, json=body)
        assert response.status_code == 200
        assert app.extensions["cds_audit_writer"].flush()
        row = next(r for r in app.extensions["cds_store"].audit_log() if r["hook_instance"] == body["hookInstance"])
        cards = response.get_json()["cards"]
        assert [c["uuid"] for c in orjson.loads(row["cards"])] == [c["uuid"] for c in cards]
        assert [c["topic"] for c in orjson.loads(row["cards"])] == [c["source"]["topic"]["code"] for c in cards]
        assert [c["indicator"] for c in orjson.loads(row["cards"])] == [c["indicator"] for c in cards]
    finally:
        shutdown(app)


def test_database_outage_keeps_answers_and_refuses_feedback(tmp_path: Path, database_url: str) -> None:
    app = build_app(tmp_path, database_url)
    store: Store = app.extensions["cds_store"]
    writer: AuditWriter = app.extensions["cds_audit_writer"]
    client = app.test_client()
    acknowledged = str(uuid.uuid4())
    assert client.post(SIGN + "/feedback", json=feedback_body(acknowledged)).status_code == 200
    good_engine = store.engine
    store.engine = broken_engine(tmp_path)  # the database goes away
    try:
        body = fb.hook_request("order-sign", drafts=[fb.tarlatamab_order("2026-11-22T09:00:00Z")])
        response = client.post(SIGN, json=body)
        assert response.status_code == 200  # the clinical answer does not wait for the audit log
        assert "cards" in response.get_json()
        assert writer.flush(10)
        assert writer.failures == 1

        lost = str(uuid.uuid4())
        refused = client.post(SIGN + "/feedback", json=feedback_body(lost))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"]
        assert refused.get_json(force=True)["resourceType"] == "OperationOutcome"
    finally:
        store.engine = good_engine  # the database is back
    assert len(rows_for(store, {acknowledged})) == 1  # nothing acknowledged was lost
    assert rows_for(store, {lost}) == []
    assert client.post(SIGN + "/feedback", json=feedback_body(lost)).status_code == 200  # the EHR retries
    assert len(rows_for(store, {lost})) == 1
    shutdown(app)


def test_audit_disabled_writes_nothing(make_app: Callable[..., Any]) -> None:
    app = make_app(audit_enabled=False)
    assert app.extensions["cds_audit_writer"] is None
    body = fb.hook_request("order-sign", drafts=[fb.tarlatamab_order("2026-11-22T09:00:00Z")])
    assert app.test_client().post(SIGN, json=body).status_code == 200
    assert app.extensions["cds_store"].audit_log() == []
