"""The store never acknowledges a write it may lose, shows its health in /healthz, and recovers by itself.

SQLite file or folder removed or made read-only while the service runs: feedback 503 and /healthz 503, and
200 again once the file is back, without a restart. NUL in feedback text is a 400; NUL in an audit row never
costs other rows theirs. Audit rows survive a worker's SIGTERM (flushed) and SIGKILL (spooled, recovered by
the next worker, counted in /healthz from the store, so every worker shows the same figures).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fhir_builders as fb
import pytest
import requests
from conftest import NOW, postgres_url
from support_server_process import start_server
from support_store import audit_entry

from cds_service.app import create_app
from cds_service.settings import Settings
from cds_service.store import AUDIT_RECOVERED, AuditSpool, AuditWriter, Store, recover_spools

SIGN = "/cds-services/tarlatamab-order-sign"


def feedback_body(card: str, comment: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-21T09:05:31Z"}
    if comment is not None:
        item["overrideReason"] = {"userComment": comment}
    return {"feedback": [item]}



@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Any]:
    app = create_app(Settings(data_dir=tmp_path / "data", now=NOW))
    app.config["TESTING"] = True
    yield app
    app.extensions["cds_audit_writer"].close()
    app.extensions["cds_store"].dispose()


def stored_cards(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("select card_uuid from cds_feedback")}


# --- SQLite file or folder removed, or read-only -------------------------------------------------------
def test_a_removed_sqlite_file_is_503_and_healthz_503_then_recovers_when_restored(
    sqlite_app: Any, tmp_path: Path
) -> None:
    client = sqlite_app.test_client()
    db = tmp_path / "data" / "cds-service.sqlite3"
    before = str(uuid.uuid4())
    assert client.post(SIGN + "/feedback", json=feedback_body(before)).status_code == 200
    backup = tmp_path / "backup.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as source, contextlib.closing(sqlite3.connect(backup)) as target:
        source.backup(target)

    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")
    during = str(uuid.uuid4())
    refused = client.post(SIGN + "/feedback", json=feedback_body(during))
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["store"] == "unavailable"

    shutil.copy(backup, db)  # the operator restores the file: no restart
    after = str(uuid.uuid4())
    assert client.post(SIGN + "/feedback", json=feedback_body(after)).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.post(SIGN + "/feedback", json=feedback_body(during)).status_code == 200  # the EHR retries
    assert {before, during, after} <= stored_cards(db)


def test_a_removed_data_folder_is_503_until_it_is_back(sqlite_app: Any, tmp_path: Path) -> None:
    client = sqlite_app.test_client()
    data = tmp_path / "data"
    first = str(uuid.uuid4())
    assert client.post(SIGN + "/feedback", json=feedback_body(first)).status_code == 200
    data.rename(tmp_path / "moved")  # as good as removed for the service (the path is gone)
    assert client.post(SIGN + "/feedback", json=feedback_body(str(uuid.uuid4()))).status_code == 503
    assert client.get("/healthz").status_code == 503
    assert not data.exists()  # the service did not create an empty folder (a missing mount stays visible)
    (tmp_path / "moved").rename(data)
    second = str(uuid.uuid4())
    assert client.post(SIGN + "/feedback", json=feedback_body(second)).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert {first, second} <= stored_cards(data / "cds-service.sqlite3")


def _make_immutable(paths: list[Path], on: bool) -> bool:
    flag = "+i" if on else "-i"
    try:
        for path in paths:
            subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def test_a_read_only_sqlite_file_is_503_and_recovers_when_writable_again(sqlite_app: Any, tmp_path: Path) -> None:
    client = sqlite_app.test_client()
    db = tmp_path / "data" / "cds-service.sqlite3"
    assert client.post(SIGN + "/feedback", json=feedback_body(str(uuid.uuid4()))).status_code == 200
    files = [p for p in (db, Path(f"{db}-wal")) if p.exists()]
    if os.geteuid() != 0:
        for path in files:
            path.chmod(0o444)
    elif not _make_immutable(files, True):
        pytest.skip("running as root without chattr: a file cannot be made read-only")
    try:
        probe_failed = False
        try:
            with open(db, "ab"):
                pass
        except OSError:
            probe_failed = True
        assert probe_failed, "the file is still writable"
        assert client.post(SIGN + "/feedback", json=feedback_body(str(uuid.uuid4()))).status_code == 503
        assert client.get("/healthz").status_code == 503
    finally:
        if os.geteuid() != 0:
            for path in files:
                path.chmod(0o644)
        else:
            _make_immutable(files, False)
    fixed = str(uuid.uuid4())
    assert client.post(SIGN + "/feedback", json=feedback_body(fixed)).status_code == 200  # no restart
    assert client.get("/healthz").status_code == 200
    assert fixed in stored_cards(db)


@pytest.mark.e2e
def test_real_server_acknowledges_no_write_it_loses_when_the_folder_goes(tmp_path: Path) -> None:
    """Feedback posted continuously while the data folder is moved away and back: every 200 is in the file."""
    data = tmp_path / "data"
    server = start_server(data, tmp_path / "server.log", workers=2)
    acknowledged: list[str] = []
    refused = 0
    stop = threading.Event()

    def post_loop() -> None:
        nonlocal refused
        with requests.Session() as session:
            while not stop.is_set():
                card = str(uuid.uuid4())
                try:
                    r = session.post(server.base_url + SIGN + "/feedback", json=feedback_body(card), timeout=5)
                except requests.RequestException:
                    continue
                if r.status_code == 200:
                    acknowledged.append(card)
                elif r.status_code == 503:
                    refused += 1

    try:
        thread = threading.Thread(target=post_loop, daemon=True)
        thread.start()
        time.sleep(1.0)
        data.rename(tmp_path / "away")
        time.sleep(1.0)
        health = requests.get(server.base_url + "/healthz", timeout=5)
        assert health.status_code == 503
        (tmp_path / "away").rename(data)
        time.sleep(1.0)
        stop.set()
        thread.join(10)
        assert requests.get(server.base_url + "/healthz", timeout=5).status_code == 200
    finally:
        stop.set()
        server.stop()
    assert refused > 0 and len(acknowledged) > 10
    missing = set(acknowledged) - stored_cards(data / "cds-service.sqlite3")
    assert missing == set()


# --- bad text ---------------------------------------------------------------------------------------------
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL: CDS_TEST_DATABASE_URL is not set and the local server does not answer")
    return url


def test_nul_in_feedback_text_is_a_400_not_a_503(tmp_path: Path, database_url: str) -> None:
    app = create_app(Settings(data_dir=tmp_path, database_url=database_url, now=NOW))
    try:
        client = app.test_client()
        for body in (
            feedback_body(str(uuid.uuid4()), comment="dose\x00checked"),
            feedback_body("card\x00" + str(uuid.uuid4())),
        ):
            response = client.post(SIGN + "/feedback", json=body)
            assert response.status_code == 400
            assert "NUL" in response.get_json()["issue"][0]["diagnostics"]
        assert client.post(SIGN + "/feedback", json=feedback_body(str(uuid.uuid4()), "fine")).status_code == 200
    finally:
        app.extensions["cds_audit_writer"].close()
        app.extensions["cds_store"].dispose()


def test_nul_in_one_audit_row_does_not_cost_the_others_theirs(database_url: str) -> None:
    store = Store(database_url)
    store.create_schema()
    try:
        entries = [audit_entry() for _ in range(20)]
        entries[3] = audit_entry(hook_instance="bad\x00" + str(uuid.uuid4()))
        entries[7] = audit_entry(patient_id="p\x00q", issuer="https://ehr\x00.example")
        assert store.write_audit(entries) == 0
        logged = {r["hook_instance"] for r in store.audit_log()}
        expected = {e.hook_instance.replace("\x00", "\ufffd") for e in entries}
        assert expected <= logged
    finally:
        store.dispose()


def test_a_row_the_database_refuses_is_written_alone_and_counted(database_url: str) -> None:
    store = Store(database_url)
    store.create_schema()
    writer = AuditWriter(store, linger=0)
    try:
        good = [audit_entry() for _ in range(9)]
        bad = audit_entry(status=None)  # NOT NULL column: refused by the database for its content
        for entry in [*good[:4], bad, *good[4:]]:
            writer.submit(entry)
        assert writer.flush(10)
        logged = {r["hook_instance"] for r in store.audit_log()}
        assert {e.hook_instance for e in good} <= logged
        assert bad.hook_instance not in logged
        assert store.counters()["audit_lost_entries"] >= 1
    finally:
        writer.close()
        store.dispose()


# --- audit spool: SIGKILL -------------------------------------------------------------------------------
def test_a_dead_writers_spool_is_written_once_and_counted(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    store.create_schema()
    spool_dir = tmp_path / "spool"
    spool = AuditSpool(spool_dir)
    entries = [audit_entry() for _ in range(5)]
    seqs = [spool.append(e) for e in entries]
    store.write_audit(entries[:2])
    spool.done(seqs[1])  # the first two were written before the "kill"
    with open(spool.path, "ab") as handle:
        handle.write(b'{"seq": 6, "entr')  # a line cut short by the kill
    assert recover_spools(spool_dir, store) == (0, 0)  # the live writer still holds its lock
    spool.close(remove=False)  # the process dies: its lock goes
    assert recover_spools(spool_dir, store) == (3, 1)
    hooks = [r["hook_instance"] for r in store.audit_log()]
    assert sorted(hooks) == sorted(e.hook_instance for e in entries)  # each once
    assert store.counters()[AUDIT_RECOVERED] == 3
    assert list(spool_dir.iterdir()) == []
    store.dispose()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(p) for p in handle.read().split()]


def _hook_call(base_url: str) -> str:
    body = fb.hook_request("order-sign", drafts=[fb.tarlatamab_order("2026-11-22T09:00:00Z")])
    assert requests.post(base_url + SIGN, json=body, timeout=10).status_code == 200
    return body["hookInstance"]


def _wait_for_workers(pid: int, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = _children(pid)
        if len(workers) == count:
            return workers
        time.sleep(0.1)
    raise AssertionError(f"gunicorn did not have {count} workers in {timeout} s")


@pytest.mark.e2e
def test_audit_rows_survive_a_workers_sigkill_and_the_recovery_is_counted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # a long linger: the rows are certainly still queued (not written) when the worker is killed
    server = start_server(data, tmp_path / "server.log", {"CDS_AUDIT_LINGER_SECONDS": "30"}, workers=1)
    try:
        hooks = [_hook_call(server.base_url) for _ in range(8)]
        (worker,) = _wait_for_workers(server.process.pid, 1)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = _children(server.process.pid)
            if workers and workers != [worker]:
                break
            time.sleep(0.1)
        # the new worker recovered the spool when it started; /healthz counts it from the store
        deadline = time.monotonic() + 30
        audit: dict[str, int] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                audit = requests.get(server.base_url + "/healthz", timeout=5).json()["audit"]
                if audit["recoveredEntries"] >= 8:
                    break
            time.sleep(0.2)
        assert audit["recoveredEntries"] == 8 and audit["lostEntries"] == 0
    finally:
        server.stop()
    store = Store(f"sqlite:///{data / 'cds-service.sqlite3'}")
    logged = [r["hook_instance"] for r in store.audit_log()]
    store.dispose()
    assert sorted(h for h in logged if h in hooks) == sorted(hooks)  # every row once


@pytest.mark.e2e
def test_audit_rows_are_written_when_the_server_is_stopped_with_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, tmp_path / "server.log", {"CDS_AUDIT_LINGER_SECONDS": "30"}, workers=2)
    try:
        hooks = [_hook_call(server.base_url) for _ in range(10)]
    finally:
        server.stop()  # SIGTERM to the master: graceful, the workers flush their queues
    store = Store(f"sqlite:///{data / 'cds-service.sqlite3'}")
    logged = {r["hook_instance"] for r in store.audit_log()}
    store.dispose()
    assert set(hooks) <= logged
    assert not any((data / "audit-spool").glob("*.jsonl"))  # nothing left pending


def test_healthz_counters_are_the_stores_not_the_workers(tmp_path: Path) -> None:
    """Two workers (two apps on one database): a failure counted by one shows in the other's /healthz."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    a = create_app(Settings(data_dir=tmp_path / "a", database_url=url, now=NOW))
    b = create_app(Settings(data_dir=tmp_path / "b", database_url=url, now=NOW))
    try:
        store_a = a.extensions["cds_store"]
        original = store_a.write_audit

        def broken(entries: Any) -> int:
            raise RuntimeError("disk full")

        store_a.write_audit = broken
        body = fb.hook_request("order-sign", drafts=[fb.tarlatamab_order("2026-11-22T09:00:00Z")])
        assert a.test_client().post(SIGN, json=body).status_code == 200
        assert a.extensions["cds_audit_writer"].flush(10)
        store_a.write_audit = original
        assert b.test_client().get("/healthz").get_json()["audit"]["failedWrites"] == 1
        assert a.test_client().get("/healthz").get_json()["audit"]["failedWrites"] == 1
    finally:
        for app in (a, b):
            app.extensions["cds_audit_writer"].close()
            app.extensions["cds_store"].dispose()


@pytest.mark.e2e
@pytest.mark.postgres
def test_gevent_workers_on_postgresql_store_feedback_and_audit(tmp_path: Path) -> None:
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL: CDS_TEST_DATABASE_URL is not set and the local server does not answer")
    sqlalchemy_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    server = start_server(tmp_path / "data", tmp_path / "server.log", {"CDS_DATABASE_URL": sqlalchemy_url}, workers=2)
    try:
        card = str(uuid.uuid4())
        answer = requests.post(server.base_url + SIGN + "/feedback", json=feedback_body(card), timeout=10)
        assert answer.status_code == 200
        hooks = [_hook_call(server.base_url) for _ in range(4)]
        health = requests.get(server.base_url + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["store"] == "ok"
    finally:
        server.stop()
    store = Store(sqlalchemy_url)
    try:
        assert any(r["card_uuid"] == card for r in store.feedback())
        assert set(hooks) <= {r["hook_instance"] for r in store.audit_log()}
    finally:
        store.dispose()
    assert "Traceback" not in server.log_text()
