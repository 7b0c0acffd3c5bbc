"""Scale-out: several service instances share one database and behave as one service.

The service keeps no state of its own apart from the store, so instances behind a load balancer only need the
same `CDS_DATABASE_URL`: card feedback posted to any instance is stored once and visible to all, every
instance's audit entries land in the one audit table, and a JWT id (jti) used at one instance is a replay at
every other. Runs on a shared SQLite file always, and on PostgreSQL when CDS_TEST_DATABASE_URL is set. The
PostgreSQL database outlives the test run: every test uses ids unique to the run and looks only at its own rows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fhir_builders as fb
import pytest
import requests
from conftest import postgres_url
from support_server_process import ServerProcess, start_server

from cds_service.store import Store

SERVICE = "tarlatamab-order-sign"
SIGN = f"/cds-services/{SERVICE}"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
PLANNED = "2026-11-23T09:00:00Z"


@pytest.fixture(params=BACKENDS)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared' / 'cds-service.sqlite3'}"
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL: CDS_TEST_DATABASE_URL is not set and the local server does not answer")
    return url


@pytest.fixture
def instances(make_app: Callable[..., Any], shared_url: str, tmp_path: Path) -> tuple[Any, Any]:
    """Two app instances, each with its own data folder, sharing the one database."""
    a = make_app(data_dir=tmp_path / "instance-a", database_url=shared_url)
    b = make_app(data_dir=tmp_path / "instance-b", database_url=shared_url)
    assert a.extensions["cds_store"] is not b.extensions["cds_store"]
    return a, b


@pytest.fixture
def reader(shared_url: str) -> Iterator[Store]:
    """A third view of the shared database, as an operator's query would see it."""
    store = Store(shared_url)
    yield store
    store.dispose()


def feedback_body(card: str, outcome: str = "overridden", stamp: str = "2026-11-21T09:05:31Z") -> dict[str, Any]:
    item: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": stamp}
    if outcome == "overridden":
        item["overrideReason"] = {
            "reason": {
                "system": "urn:tarlatamab-cds:override-reason",
                "code": "clinician-reviewed",
                "display": "Reviewed",
            }
        }
    else:
        item["acceptedSuggestions"] = [{"id": str(uuid.uuid4())}]
    return {"feedback": [item]}


def order_sign(hook_instance: str) -> dict[str, Any]:
    """A C1D1 order-sign request with its premedication, hydration and pre-dose labs."""
    return fb.hook_request(
        drafts=[
            fb.tarlatamab_order(PLANNED, dose=1),
            fb.dexamethasone_order("2026-11-23T08:00:00Z"),
            fb.saline_order("2026-11-23T10:00:00Z"),
        ],
        observations=fb.normal_labs("2026-11-20T07:30:00Z"),
        conditions=[fb.sclc_condition()],
        medications=[fb.platinum_request("2026-06-01T10:00:00Z")],
        hook_instance=hook_instance,
    )


def rows_for_card(store: Store, card: str) -> list[dict[str, Any]]:
    return [r for r in store.feedback(SERVICE) if r["card_uuid"] == card]


# --- two app instances in one process ------------------------------------------------------------------


def test_feedback_posted_to_one_instance_is_visible_from_the_other(instances: tuple[Any, Any], reader: Store) -> None:
    a, b = instances
    card = str(uuid.uuid4())
    with a.test_client() as client:
        assert client.post(f"{SIGN}/feedback", json=feedback_body(card)).status_code == 200
    rows = rows_for_card(b.extensions["cds_store"], card)
    assert [(r["outcome"], r["override_reason_code"]) for r in rows] == [("overridden", "clinician-reviewed")]

    # The EHR retries the same feedback through the other instance: still stored once.
    with b.test_client() as client:
        assert client.post(f"{SIGN}/feedback", json=feedback_body(card)).status_code == 200
        # A later outcome for the same card, posted to B, is visible from A.
        later = feedback_body(card, "accepted", "2026-11-21T09:07:02Z")
        assert client.post(f"{SIGN}/feedback", json=later).status_code == 200
    rows = rows_for_card(a.extensions["cds_store"], card)
    assert sorted(r["outcome"] for r in rows) == ["accepted", "overridden"]
    assert len(rows_for_card(reader, card)) == 2


def test_audit_entries_of_both_instances_land_in_one_table(instances: tuple[Any, Any], reader: Store) -> None:
    a, b = instances
    run = uuid.uuid4().hex
    sent = {"a": [f"{run}-a-{i}" for i in range(3)], "b": [f"{run}-b-{i}" for i in range(3)]}
    for app, key in ((a, "a"), (b, "b")):
        with app.test_client() as client:
            for hook_instance in sent[key]:
                response = client.post(SIGN, json=order_sign(hook_instance))
                assert response.status_code == 200, response.get_data(as_text=True)[:500]
                assert isinstance(response.get_json()["cards"], list)
        assert app.extensions["cds_audit_writer"].flush(10)

    expected = set(sent["a"]) | set(sent["b"])
    for store in (a.extensions["cds_store"], b.extensions["cds_store"], reader):
        rows = [r for r in store.audit_log() if r["hook_instance"].startswith(run)]
        assert {r["hook_instance"] for r in rows} == expected
        assert len(rows) == 6  # each call audited exactly once, by the instance that answered it
        assert all(r["service_id"] == SERVICE and r["status"] == 200 for r in rows)


def test_a_jti_seen_by_one_instance_is_a_replay_at_the_other(instances: tuple[Any, Any]) -> None:
    store_a, store_b = (app.extensions["cds_store"] for app in instances)
    issuer = f"https://ehr-{uuid.uuid4().hex[:8]}.example.org"
    expires = datetime.now(UTC) + timedelta(minutes=5)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert store_a.remember_jti(issuer, first, expires) is True
    assert store_b.remember_jti(issuer, first, expires) is False
    assert store_b.remember_jti(issuer, second, expires) is True
    assert store_a.remember_jti(issuer, second, expires) is False
    # The same jti from another issuer is a different token.
    assert store_b.remember_jti(issuer + "/other", first, expires) is True


def test_concurrent_use_of_one_jti_at_both_instances_accepts_it_once(instances: tuple[Any, Any]) -> None:
    stores = [app.extensions["cds_store"] for app in instances]
    issuer = f"https://ehr-{uuid.uuid4().hex[:8]}.example.org"
    jti = str(uuid.uuid4())
    expires = datetime.now(UTC) + timedelta(minutes=5)
    barrier = threading.Barrier(8)
    results: list[bool] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        barrier.wait(5)
        accepted = stores[i % 2].remember_jti(issuer, jti, expires)
        with lock:
            results.append(accepted)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8
    assert results.count(True) == 1


def test_instances_starting_at_once_on_an_empty_database(tmp_path: Path) -> None:
    """Several instances (or workers) creating the schema of a fresh database at the same moment all succeed."""
    url = f"sqlite:///{tmp_path / 'fresh' / 'cds-service.sqlite3'}"
    stores = [Store(url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def create(store: Store) -> None:
        barrier.wait(5)
        try:
            store.create_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        card = str(uuid.uuid4())
        assert stores[0].save_feedback(SERVICE, []) == 0
        assert stores[1].remember_jti("https://ehr.example.org", card, datetime.now(UTC) + timedelta(minutes=1))
    finally:
        for s in stores:
            s.dispose()


# --- two real server processes behind a (round-robin) load balancer ----------------------------------------


class RoundRobin:
    """The smallest load balancer: each request goes to the next instance."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.servers = servers
        self.calls = 0

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        server = self.servers[self.calls % len(self.servers)]
        self.calls += 1
        return requests.post(server.base_url + path, json=body, timeout=30)


@pytest.mark.e2e
def test_two_server_processes_share_feedback_and_audit(shared_url: str, tmp_path: Path, reader: Store) -> None:
    env = {"CDS_DATABASE_URL": shared_url}
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(start_server(tmp_path / f"data-{name}", tmp_path / f"server-{name}.log", env))
        balancer = RoundRobin(servers)
        run = uuid.uuid4().hex
        hook_instances = [f"{run}-{i}" for i in range(4)]
        for hook_instance in hook_instances:
            response = balancer.post(SIGN, order_sign(hook_instance))
            assert response.status_code == 200, response.text[:500]
            assert isinstance(response.json()["cards"], list)
        card = str(uuid.uuid4())
        for _ in range(2):  # the same feedback through both instances
            assert balancer.post(f"{SIGN}/feedback", feedback_body(card)).status_code == 200
        assert len(rows_for_card(reader, card)) == 1

        deadline = time.monotonic() + 15  # the audit log is written in the background
        seen: set[str] = set()
        while time.monotonic() < deadline:
            seen = {r["hook_instance"] for r in reader.audit_log() if r["hook_instance"].startswith(run)}
            if seen == set(hook_instances):
                break
            time.sleep(0.2)
        assert seen == set(hook_instances)
    finally:
        for server in servers:
            server.stop()
