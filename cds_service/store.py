"""Persistent store (SQLAlchemy Core): card feedback, the audit log of responses, and JWT replay ids.

SQLite in the local data folder by default; any SQLAlchemy URL through CDS_DATABASE_URL (PostgreSQL for
several instances). Nothing here holds an access token, a JWT or a clinical value.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

log = logging.getLogger(__name__)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite keeps no zone: it is stored as UTC, read as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

feedback_table = Table(
    "cds_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("service_id", String(100), nullable=False),
    Column("card_uuid", String(100), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("outcome_timestamp", String(40), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),  # JSON array of suggestion uuids
    Column("override_reason_system", String(300), nullable=True),
    Column("override_reason_code", String(100), nullable=True),
    Column("override_reason_display", String(500), nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("issuer", String(500), nullable=True),
    UniqueConstraint("service_id", "card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_item"),
)

audit_table = Table(
    "cds_audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("service_id", String(100), nullable=False),
    Column("hook_instance", String(200), nullable=False),
    Column("patient_id", String(200), nullable=True),
    Column("status", Integer, nullable=False),
    Column("evaluation_ms", Float, nullable=False),
    Column("cards", Text, nullable=False),  # JSON: [{"uuid", "rule", "topic", "indicator"}]
    Column("rule_ids", Text, nullable=False),  # JSON array
    Column("data_origin", Text, nullable=True),  # JSON: prefetch key -> prefetch | null | fetched
    Column("issuer", String(500), nullable=True),
    # The protocol version that answered (added later: NULL on rows written before; see _migrate).
    Column("protocol_version", String(40), nullable=True),
)

# Columns added after the first release: (table, column, SQL type). create_schema adds them when missing.
_ADDED_COLUMNS = (("cds_audit_log", "protocol_version", "VARCHAR(40)"),)

jwt_replay_table = Table(
    "cds_jwt_replay",
    metadata,
    Column("issuer", String(500), primary_key=True),
    Column("jti", String(500), primary_key=True),
    Column("expires_at", UTCDateTime(), nullable=False),
)


_FEEDBACK_KEY = ["service_id", "card_uuid", "outcome", "outcome_timestamp"]

# Column limits the feedback endpoint checks before storing (PostgreSQL rejects longer values).
FEEDBACK_LIMITS = {
    "card": 100,
    "outcomeTimestamp": 40,
    "reason.system": 300,
    "reason.code": 100,
    "reason.display": 500,
}


def _clip(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit]


class StoreUnavailable(Exception):
    """The database could not be written or read."""


@dataclass(frozen=True)
class FeedbackItem:
    card_uuid: str
    outcome: str
    outcome_timestamp: str
    accepted_suggestions: tuple[str, ...] = ()
    override_reason_system: str | None = None
    override_reason_code: str | None = None
    override_reason_display: str | None = None
    user_comment: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    service_id: str
    hook_instance: str
    patient_id: str | None
    status: int
    evaluation_ms: float
    cards: tuple[dict[str, str], ...]
    data_origin: dict[str, str]
    issuer: str | None = None
    protocol_version: str | None = None


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 15, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=5)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.audit_failures = 0

    def create_schema(self) -> None:
        """Create the tables that do not exist. Several workers may start at once: a lost race is retried."""
        for attempt in range(3):
            try:
                metadata.create_all(self.engine)
                self._migrate()
                return
            except SQLAlchemyError as exc:
                if attempt == 2:
                    raise StoreUnavailable(f"schema could not be created ({type(exc).__name__})") from exc
                log.warning("schema creation raced with another process (%s); retrying", type(exc).__name__)
                time.sleep(0.2 * (attempt + 1))

    def _migrate(self) -> None:
        """Add the columns a database created by an earlier version lacks (ALTER TABLE ADD COLUMN)."""
        for table, column, sql_type in _ADDED_COLUMNS:
            if column in {c["name"] for c in inspect(self.engine).get_columns(table)}:
                continue
            try:
                with self.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
                log.info("store: added column %s.%s", table, column)
            except SQLAlchemyError:
                # Another process added it first; anything else is raised by the check below.
                if column not in {c["name"] for c in inspect(self.engine).get_columns(table)}:
                    raise

    def dispose(self) -> None:
        self.engine.dispose()

    # --- feedback -----------------------------------------------------------------------------------
    def save_feedback(self, service_id: str, items: Iterable[FeedbackItem], issuer: str | None = None) -> int:
        """Store every item in one transaction (a repeated item is stored once); returns how many were new.

        Raises StoreUnavailable when the items could not all be stored; then none of them is acknowledged.
        """
        batch = list(items)
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    return sum(self._insert_feedback(conn, service_id, item, issuer) for item in batch)
            except IntegrityError as exc:
                # A concurrent writer stored one of the items between our check and our insert (databases
                # without INSERT .. ON CONFLICT): the transaction was rolled back, so run it again.
                if attempt == 2:
                    raise StoreUnavailable(type(exc).__name__) from exc
            except SQLAlchemyError as exc:
                raise StoreUnavailable(type(exc).__name__) from exc
        raise AssertionError("unreachable")

    def _insert_feedback(self, conn: Connection, service_id: str, item: FeedbackItem, issuer: str | None) -> int:
        values = {
            "received_at": datetime.now(UTC),
            "service_id": service_id,
            "card_uuid": item.card_uuid,
            "outcome": item.outcome,
            "outcome_timestamp": item.outcome_timestamp,
            "accepted_suggestions": orjson.dumps(list(item.accepted_suggestions)).decode()
            if item.accepted_suggestions
            else None,
            "override_reason_system": item.override_reason_system,
            "override_reason_code": item.override_reason_code,
            "override_reason_display": item.override_reason_display,
            "user_comment": item.user_comment,
            "issuer": _clip(issuer, 500),
        }
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            ins = sqlite_insert if dialect == "sqlite" else postgresql_insert
            stmt = ins(feedback_table).values(**values).on_conflict_do_nothing(index_elements=_FEEDBACK_KEY)
            if conn.dialect.insert_returning:
                # rowcount is not reliable with RETURNING (psycopg reports -1): a returned id means "inserted".
                return 1 if conn.execute(stmt.returning(feedback_table.c.id)).first() is not None else 0
            return 1 if conn.execute(stmt).rowcount == 1 else 0
        exists = conn.execute(
            select(feedback_table.c.id).where(*(feedback_table.c[k] == values[k] for k in _FEEDBACK_KEY))
        ).first()
        if exists:
            return 0
        conn.execute(insert(feedback_table).values(**values))
        return 1

    def feedback(self, service_id: str | None = None) -> list[dict[str, Any]]:
        query = select(feedback_table).order_by(feedback_table.c.id)
        if service_id:
            query = query.where(feedback_table.c.service_id == service_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # --- audit --------------------------------------------------------------------------------------
    def write_audit(self, entries: list[AuditEntry]) -> None:
        if not entries:
            return
        rows = [
            {
                "at": e.at,
                "service_id": _clip(e.service_id, 100),
                "hook_instance": _clip(e.hook_instance, 200),
                "patient_id": _clip(e.patient_id, 200),
                "status": e.status,
                "evaluation_ms": round(e.evaluation_ms, 3),
                "cards": orjson.dumps(list(e.cards)).decode(),
                "rule_ids": orjson.dumps(sorted({c["rule"] for c in e.cards})).decode(),
                "data_origin": orjson.dumps(e.data_origin).decode() if e.data_origin else None,
                "issuer": _clip(e.issuer, 500),
                "protocol_version": _clip(e.protocol_version, 40),
            }
            for e in entries
        ]
        with self.engine.begin() as conn:
            conn.execute(insert(audit_table), rows)

    def audit_log(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(select(audit_table).order_by(audit_table.c.id))]

    # --- JWT replay protection ------------------------------------------------------------------------
    def remember_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime | None = None) -> bool:
        """Record a JWT id; False when it was seen before (a replay). Expired ids are purged."""
        now = now or datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(jwt_replay_table).where(jwt_replay_table.c.expires_at < now))
                conn.execute(insert(jwt_replay_table).values(issuer=issuer, jti=jti, expires_at=expires_at))
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return True


class AuditWriter:
    """Writes audit entries from a background thread, so the response never waits for the database.

    A failed write is logged and counted (`failures`); the clinical answer has already been sent.
    """

    def __init__(self, store: Store, max_queue: int = 10000, batch: int = 200, linger: float = 0.25) -> None:
        self.store = store
        # After the first entry of a batch, wait up to `linger` seconds for more: under load the rows then go
        # in batches (a row costs ~0.2 ms of worker CPU alone, ~0.02 ms in a batch of 200: measured).
        self._linger = linger
        self.failures = 0
        self.dropped = 0
        self._queue: queue.Queue[AuditEntry | None] = queue.Queue(maxsize=max_queue)
        self._batch = batch
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def submit(self, entry: AuditEntry) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1
            log.error("audit queue full: entry for hookInstance %s dropped", entry.hook_instance)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every submitted entry has been written (or has failed); False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True)
        waiter.start()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is None or not self._thread.is_alive():
            return
        self.flush(timeout)
        self._stopping = True
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        self._thread.join(timeout)

    def _ensure_thread(self) -> None:
        # Started lazily: a thread created before gunicorn forks its workers would not survive the fork.
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            stop = entry is None and self._stopping
            batch = [entry] if entry is not None else []
            deadline = time.monotonic() + (self._linger if entry is not None else 0.0)
            while len(batch) < self._batch:
                try:
                    remaining = deadline - time.monotonic()
                    more = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is not None:
                    batch.append(more)
                else:
                    self._queue.task_done()
                    stop = stop or self._stopping
                    deadline = 0.0  # closing: write now
            try:
                if batch:
                    self.store.write_audit(batch)
            except Exception as exc:  # the database is down or full: count, log, carry on
                self.failures += len(batch)
                self.store.audit_failures += len(batch)
                log.error("audit write of %d entries failed (%s)", len(batch), type(exc).__name__)
            finally:
                for _ in batch:
                    self._queue.task_done()
                if entry is None:
                    self._queue.task_done()
            if stop:
                return
