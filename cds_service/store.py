"""Persistent store (SQLAlchemy Core): card feedback, the audit log of responses, and JWT replay ids.

SQLite in the local data folder by default; any SQLAlchemy URL through CDS_DATABASE_URL (PostgreSQL for
several instances). Nothing here holds an access token, a JWT or a clinical value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import (
    BigInteger,
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
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

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


# Counters shared by every worker and instance (the /healthz audit figures): name -> value.
counters_table = Table(
    "cds_counters",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Counter names
AUDIT_FAILED = "audit_failed_writes"  # entries whose write failed (database down): logged, counted, lost
AUDIT_DROPPED = "audit_dropped_entries"  # entries refused because the worker's queue was full
AUDIT_RECOVERED = "audit_recovered_entries"  # entries of a killed worker written from its spool afterwards
AUDIT_LOST = "audit_lost_entries"  # entries of a killed worker that its spool could not give back
COUNTERS = (AUDIT_FAILED, AUDIT_DROPPED, AUDIT_RECOVERED, AUDIT_LOST)

_FEEDBACK_KEY = ["service_id", "card_uuid", "outcome", "outcome_timestamp"]

def _clip(value: str | None, limit: int) -> str | None:
    value = clean_text(value)
    return value if value is None or len(value) <= limit else value[:limit]


def clean_text(value: str | None) -> str | None:
    """Text fit for every database: NUL (which PostgreSQL text refuses) becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


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
            # FULL: a commit is on disk (WAL fsynced) before the service acknowledges what it wrote.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=5)


def _refused_for_content(exc: SQLAlchemyError) -> bool:
    """Whether the database refused the values written (a bad row), not the write itself (an outage)."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.audit_failures = 0
        # SQLite: the identity (device, inode) of the file the connections write to. A file that is removed or
        # replaced while the service runs is detected before a write is acknowledged (no write to a ghost).
        self._sqlite_file = sqlite_file(url)
        self._identity: tuple[int, int] | None = None
        self._identity_lock = threading.Lock()

    def create_schema(self) -> None:
        """Create the tables that do not exist. Several workers may start at once: a lost race is retried.

        `cds-service serve` creates them once in the parent before the workers start, so a first start does not
        race; several instances starting together on one fresh PostgreSQL still might (retried, logged at INFO).
        """
        for attempt in range(3):
            try:
                metadata.create_all(self.engine)
                self._migrate()
                self._identity = self._file_identity()
                return
            except SQLAlchemyError as exc:
                if attempt == 2:
                    raise StoreUnavailable(f"schema could not be created ({type(exc).__name__})") from exc
                log.info("schema creation met another process's (%s); retrying", type(exc).__name__)
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

    # --- durability guard (SQLite file identity) ----------------------------------------------------
    def _file_identity(self) -> tuple[int, int] | None:
        if self._sqlite_file is None:
            return None
        try:
            st = os.stat(self._sqlite_file)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _before_write(self) -> None:
        """Refuse to write when the SQLite file is gone; reopen it when it was put back (restored)."""
        if self._sqlite_file is None:
            return
        current = self._file_identity()
        if current is None:
            self.engine.dispose()  # the pooled connections point at a removed file
            raise StoreUnavailable(f"the SQLite file {self._sqlite_file} is missing (removed, or its folder is)")
        if current != self._identity:
            with self._identity_lock:
                if current != self._identity:
                    log.warning("the SQLite file %s was replaced; reopening it", self._sqlite_file)
                    self.engine.dispose()
                    try:
                        metadata.create_all(self.engine)
                        self._migrate()
                    except SQLAlchemyError as exc:
                        raise StoreUnavailable(f"reopening the SQLite file failed ({type(exc).__name__})") from exc
                    self._identity = current

    def _after_write(self) -> None:
        """After a commit, before acknowledging: the file written is still the file at the path."""
        if self._sqlite_file is not None and self._file_identity() != self._identity:
            self.engine.dispose()
            raise StoreUnavailable(f"the SQLite file {self._sqlite_file} was removed or replaced during a write")

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        # A connection that failed (read-only file, lost server) is not reused: the next write opens a new one,
        # so the service recovers by itself when the store is fixed.
        self.engine.dispose()
        return StoreUnavailable(type(exc).__name__)

    def check_writable(self) -> None:
        """A real write (a counter), as /healthz's store check; raises StoreUnavailable."""
        self.add_counters({"health_checks": 1})

    # --- counters (shared by every worker) -----------------------------------------------------------
    def add_counters(self, increments: dict[str, int]) -> None:
        """Add to named counters in one transaction; raises StoreUnavailable."""
        increments = {k: v for k, v in increments.items() if v}
        if not increments:
            return
        self._before_write()
        try:
            with self.engine.begin() as conn:
                for name, amount in increments.items():
                    done = conn.execute(
                        update(counters_table)
                        .where(counters_table.c.name == name)
                        .values(value=counters_table.c.value + amount)
                    ).rowcount
                    if not done:
                        try:
                            with conn.begin_nested():
                                conn.execute(insert(counters_table).values(name=name, value=amount))
                        except IntegrityError:  # another worker inserted it meanwhile
                            conn.execute(
                                update(counters_table)
                                .where(counters_table.c.name == name)
                                .values(value=counters_table.c.value + amount)
                            )
        except SQLAlchemyError as exc:
            raise self._failed(exc) from exc
        self._after_write()

    def counters(self) -> dict[str, int]:
        try:
            with self.engine.connect() as conn:
                found = {r.name: int(r.value) for r in conn.execute(select(counters_table))}
        except SQLAlchemyError as exc:
            raise self._failed(exc) from exc
        return {name: found.get(name, 0) for name in COUNTERS}

    # --- feedback -----------------------------------------------------------------------------------
    def save_feedback(self, service_id: str, items: Iterable[FeedbackItem], issuer: str | None = None) -> int:
        """Store every item in one transaction (a repeated item is stored once); returns how many were new.

        Raises StoreUnavailable when the items could not all be stored; then none of them is acknowledged.
        """
        batch = list(items)
        for attempt in range(3):
            self._before_write()
            try:
                with self.engine.begin() as conn:
                    new = sum(self._insert_feedback(conn, service_id, item, issuer) for item in batch)
            except IntegrityError as exc:
                # A concurrent writer stored one of the items between our check and our insert (databases
                # without INSERT .. ON CONFLICT): the transaction was rolled back, so run it again.
                if attempt == 2:
                    raise StoreUnavailable(type(exc).__name__) from exc
                continue
            except SQLAlchemyError as exc:
                raise self._failed(exc) from exc
            self._after_write()
            return new
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
    def write_audit(self, entries: list[AuditEntry]) -> int:
        """Write audit entries; returns how many could not be written because of their content.

        One transaction for the batch; if the database refuses it for the content of a row (not an outage),
        the rows are written one by one, so one bad row never costs the others theirs. Raises StoreUnavailable
        when the database cannot be written at all.
        """
        if not entries:
            return 0
        rows = [self._audit_row(e) for e in entries]
        self._before_write()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(audit_table), rows)
        except SQLAlchemyError as exc:
            if not _refused_for_content(exc):
                raise self._failed(exc) from exc
            log.warning("audit batch of %d refused (%s); writing row by row", len(rows), type(exc).__name__)
            return self._write_rows_one_by_one(rows)
        self._after_write()
        return 0

    def _write_rows_one_by_one(self, rows: list[dict[str, Any]]) -> int:
        bad = 0
        for row in rows:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(audit_table), [row])
            except SQLAlchemyError as exc:
                if not _refused_for_content(exc):
                    raise self._failed(exc) from exc
                bad += 1
                log.error("audit row for hookInstance %r refused (%s)", row["hook_instance"], type(exc).__name__)
        self._after_write()
        return bad

    @staticmethod
    def _audit_row(e: AuditEntry) -> dict[str, Any]:
        """The audit table row of an entry: identifiers clipped to their columns, NUL replaced (clean_text)."""
        return {
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

    def audit_log(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(select(audit_table).order_by(audit_table.c.id))]

    # --- JWT replay protection ------------------------------------------------------------------------
    def remember_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime | None = None) -> bool:
        """Record a JWT id; False when it was seen before (a replay). Expired ids are purged."""
        now = now or datetime.now(UTC)
        self._before_write()
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(jwt_replay_table).where(jwt_replay_table.c.expires_at < now))
                row = {"issuer": clean_text(issuer), "jti": clean_text(jti), "expires_at": expires_at}
                conn.execute(insert(jwt_replay_table).values(**row))
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise self._failed(exc) from exc
        self._after_write()
        return True


class AuditSpool:
    """A worker's audit entries on disk from submission until written, so a killed worker loses none.

    Append-only JSON lines in `<folder>/audit-<pid>-<random>.jsonl`, held under an exclusive `flock` while the
    worker lives: `{"seq": n, "entry": {...}}` when an entry is queued, `{"done": n}` once every entry up to n
    has been written (or counted as failed). The file is emptied when nothing is pending. A worker that
    starts replays the spools no live process holds (`recover_spools`): entries after the last `done` are
    written to the audit log and counted as recovered; lines that cannot be read are counted as lost.
    Written to the operating system at once (no fsync): an entry survives the process (SIGKILL), not a power cut.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"audit-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._file: IO[bytes] = self.path.open("ab")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = threading.Lock()
        self._seq = 0
        self._done = 0

    def append(self, entry: AuditEntry) -> int:
        with self._lock:
            self._seq += 1
            # orjson writes the dataclass itself (`at` as `datetime.isoformat` writes it): ~40x cheaper per
            # request than `dataclasses.asdict`, which deep-copies the cards.
            self._write({"seq": self._seq, "entry": entry})
            return self._seq

    def done(self, seq: int) -> None:
        with self._lock:
            self._done = max(self._done, seq)
            if self._done >= self._seq:
                self._file.truncate(0)  # nothing pending: start the file afresh (append mode writes at the end)
            else:
                self._write({"done": self._done})

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()

    def close(self, *, remove: bool) -> None:
        with self._lock:
            with contextlib.suppress(OSError):
                self._file.close()
            if remove:
                with contextlib.suppress(OSError):
                    self.path.unlink()


def _entry_from_json(data: dict[str, Any]) -> AuditEntry:
    known = {f.name for f in dataclasses.fields(AuditEntry)}
    values = {k: v for k, v in data.items() if k in known}
    values["at"] = datetime.fromisoformat(values["at"])
    values["cards"] = tuple(values.get("cards") or ())
    return AuditEntry(**values)


def recover_spools(folder: Path, store: Store) -> tuple[int, int]:
    """Write the pending entries of dead workers' spools; returns (recovered, lost) and counts them in the store."""
    recovered = lost = 0
    if not folder.is_dir():
        return 0, 0
    for path in sorted(folder.glob("audit-*.jsonl")):
        try:
            handle = path.open("rb+")
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(handle.fileno()).st_ino != os.stat(path).st_ino:
                    continue  # recovered and removed by another worker meanwhile
            except OSError:
                continue  # a live worker holds it (or it is gone)
            pending: dict[int, AuditEntry] = {}
            done = 0
            bad = 0
            for line in handle.read().splitlines():
                try:
                    record = orjson.loads(line)
                    if "done" in record:
                        done = max(done, int(record["done"]))
                    else:
                        pending[int(record["seq"])] = _entry_from_json(record["entry"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    bad += 1  # a line cut short by the kill
            entries = [e for seq, e in sorted(pending.items()) if seq > done]
            try:
                refused = store.write_audit(entries)
                store.add_counters({AUDIT_RECOVERED: len(entries) - refused, AUDIT_LOST: bad + refused})
            except StoreUnavailable as exc:
                log.error("audit spool %s not recovered yet: store unavailable (%s)", path.name, exc)
                continue
            recovered += len(entries) - refused
            lost += bad + refused
            if entries or bad:
                log.warning("audit spool %s of a stopped worker: %d entries recovered, %d lost", path.name,
                            len(entries) - refused, bad + refused)
            with contextlib.suppress(OSError):
                path.unlink()
    return recovered, lost


class AuditWriter:
    """Writes audit entries from a background thread, so the response never waits for the database.

    A failed write is logged and counted (`failures`, and the store's shared counters); the clinical answer
    has already been sent. With a `spool` folder every queued entry is also on disk until written (see
    AuditSpool), so a worker killed with SIGKILL loses none; SIGTERM writes the queue before exiting (close()).
    """

    def __init__(
        self,
        store: Store,
        max_queue: int = 10000,
        batch: int = 200,
        linger: float = 0.25,
        spool: Path | None = None,
    ) -> None:
        self.store = store
        # After the first entry of a batch, wait up to `linger` seconds for more: under load the rows then go
        # in batches (a row costs ~0.2 ms of worker CPU alone, ~0.02 ms in a batch of 200: measured).
        self._linger = linger
        self.failures = 0
        self.dropped = 0
        self._unsaved_counts: dict[str, int] = {}  # counter increments not yet in the store
        self._queue: queue.Queue[tuple[AuditEntry, int] | None] = queue.Queue(maxsize=max_queue)
        self._batch = batch
        self._thread: threading.Thread | None = None
        self._thread_running = False
        self._thread_pid: int | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._closing = threading.Event()
        self._spool_folder = spool
        self._spool: AuditSpool | None = None
        self._spool_pid: int | None = None

    def _count(self, name: str, amount: int) -> None:
        with self._lock:
            self._unsaved_counts[name] = self._unsaved_counts.get(name, 0) + amount

    def unsaved_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._unsaved_counts)

    def submit(self, entry: AuditEntry) -> None:
        self._ensure_thread()
        seq = 0
        if self._spool is not None:
            try:
                seq = self._spool.append(entry)
            except OSError as exc:
                log.error("audit spool not writable (%s); the entry is only queued", type(exc).__name__)
        try:
            self._queue.put_nowait((entry, seq))
        except queue.Full:
            self.dropped += 1
            self._count(AUDIT_DROPPED, 1)  # (still in the spool: a later recovery may write it after all)
            log.error("audit queue full: entry for hookInstance %r dropped", entry.hook_instance)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every submitted entry has been written (or has failed); False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True)
        waiter.start()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued at once (no lingering), then stop the thread; the spool goes when empty."""
        if self._thread is None or not self._thread.is_alive():
            self._close_spool()
            return
        self._stopping = True
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        self._thread.join(timeout)
        self._close_spool()

    def _close_spool(self) -> None:
        if self._spool is not None and self._spool_pid == os.getpid():
            self._spool.close(remove=self._queue.empty())
            self._spool = None

    def _ensure_thread(self) -> None:
        # Started lazily: a thread created before gunicorn forks its workers would not survive the fork. The
        # flag and pid spare every request a Thread.is_alive() (a lock acquisition, costly under gevent).
        if self._thread_running and self._thread_pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                if self._spool_folder is not None and self._spool_pid != os.getpid():
                    self._open_spool(self._spool_folder)
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread_running = True
                self._thread.start()
            self._thread_pid = os.getpid()

    def _open_spool(self, folder: Path) -> None:
        try:
            recover_spools(folder, self.store)
            self._spool = AuditSpool(folder)
            self._spool_pid = os.getpid()
        except OSError as exc:
            log.error("audit spool folder %s not usable (%s): queued entries are lost if the worker is killed",
                      folder, type(exc).__name__)
            self._spool = None
            self._spool_pid = os.getpid()

    def _run(self) -> None:
        try:
            self._write_loop()
        finally:
            self._thread_running = False

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is None and self._stopping
            batch = [item] if item is not None else []
            if item is not None and not self._stopping and self._linger > 0 and self._queue.qsize() < self._batch - 1:
                # Linger without taking entries one by one: a waiting get() would wake this thread (a GIL hand-off,
                # or a gevent timer) on every request; close() cuts the wait short.
                self._closing.wait(self._linger)
            while len(batch) < self._batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is not None:
                    batch.append(more)
                else:
                    self._queue.task_done()
                    stop = stop or self._stopping
            try:
                if batch:
                    refused = self.store.write_audit([entry for entry, _ in batch])
                    if refused:
                        self._count(AUDIT_LOST, refused)
            except Exception as exc:  # the database is down or full: count, log, carry on
                self.failures += len(batch)
                self.store.audit_failures += len(batch)
                self._count(AUDIT_FAILED, len(batch))
                log.error("audit write of %d entries failed (%s)", len(batch), type(exc).__name__)
            finally:
                if self._spool is not None and batch:
                    with contextlib.suppress(OSError):
                        self._spool.done(max(seq for _, seq in batch))
                self._save_counts()
                for _ in batch:
                    self._queue.task_done()
                if item is None:
                    self._queue.task_done()
            if stop:
                return

    def _save_counts(self) -> None:
        pending = self.unsaved_counts()
        if not pending:
            return
        try:
            self.store.add_counters(pending)
        except Exception:  # still down: kept, added with the next batch
            return
        with self._lock:
            for name, amount in pending.items():
                self._unsaved_counts[name] -= amount
                if not self._unsaved_counts[name]:
                    del self._unsaved_counts[name]
