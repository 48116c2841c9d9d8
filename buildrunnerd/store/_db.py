"""The connection: opening, migrations, transactions, events after commit, error translation.

One aiosqlite connection (its own thread) serves the whole daemon, through aiosqlite's public
API only. A transaction is a sequence of awaited statements between ``BEGIN IMMEDIATE`` and
``COMMIT`` (or ``ROLLBACK`` on any error), under an asyncio lock that also serializes reads, so
a reader never sees half of a transaction and two transactions never interleave on the one
connection. Each statement is one hop to the connection's thread, so the hot paths keep their
statement counts small (multi-row INSERTs and ``executemany``). Events written in a transaction
are handed to ``on_event`` only after COMMIT succeeded, in id order, never for one that rolled
back.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeAlias, TypeVar, cast

import aiosqlite
import anyio
import msgspec
import structlog

from buildrunnerd import protocol
from buildrunnerd.errors import NotFoundError, StoreError
from buildrunnerd.store._migrations import LATEST_VERSION, migrate
from buildrunnerd.store._records import EventData, JsonData, format_ts

__all__ = [
    "EVENT_COLUMNS", "Database", "EventCallback", "Reader", "Row", "SqlParams", "SqlValue",
    "StatementCounts", "Txn", "decode_object", "decode_strings", "encode_json",
    "event_from_row", "not_found", "translate_error",
]

EventCallback = Callable[[protocol.Event], None]
T = TypeVar("T")
#: A value SQLite keeps as it is (a bool is stored as 0 or 1).
SqlValue: TypeAlias = str | int | float | bytes | None
#: The parameters of one statement, in the order of its ``?``.
SqlParams: TypeAlias = Sequence[SqlValue]
#: One row a query returns. Its cells are whatever its columns hold, which only the query
#: knows: the record builders read them by position (``_run_from_row`` and the like).
Row: TypeAlias = Sequence[Any]

_log = structlog.get_logger("buildrunnerd.store")
_json_encoder = msgspec.json.Encoder()
_object_decoder = msgspec.json.Decoder(dict[str, Any])
_strings_decoder = msgspec.json.Decoder(list[str])

# Six parameters a row; SQLite allows 32766 parameters per statement.
_EVENTS_PER_INSERT = 1000
EVENT_COLUMNS = "id, ts, run_id, type, data, batch_id, task_id"


def encode_json(value: JsonData | msgspec.Struct) -> str:
    """JSON text for a column (raises ``TypeError`` for values JSON cannot hold)."""
    try:
        return _json_encoder.encode(value).decode()
    except (msgspec.EncodeError, TypeError) as exc:
        raise TypeError(f"cannot store {value!r} as JSON: {exc}") from exc


def decode_object(text: str | bytes) -> dict[str, Any]:
    """The value of a JSON column that holds an object (event data, run options)."""
    return _object_decoder.decode(text)


def decode_strings(text: str | bytes) -> list[str]:
    """The value of a JSON column that holds a list of strings (ids, files, criteria)."""
    return _strings_decoder.decode(text)


def event_from_row(row: Row) -> protocol.Event:
    """A ``protocol.Event`` from a row selected with ``EVENT_COLUMNS``."""
    return protocol.Event(
        id=row[0], ts=row[1], run_id=row[2], type=row[3], data=decode_object(row[4]),
        batch_id=row[5], task_id=row[6],
    )


class Reader:
    """Queries on the connection, inside the store's lock (between transactions, or inside
    the open one for :class:`Txn`)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def fetchall(self, sql: str, params: SqlParams = ()) -> list[Row]:
        """Rows of a query (one hop)."""
        return list(await self.conn.execute_fetchall(sql, params))


class Txn(Reader):
    """One open write transaction: statements, plus events buffered until just before COMMIT
    (inserted together, one multi-row INSERT)."""

    def __init__(self, conn: aiosqlite.Connection, now: datetime) -> None:
        super().__init__(conn)
        self.now = now
        self.ts = format_ts(now)
        self._pending: list[tuple[str, str, str, str | None, str | None]] = []
        #: The stored events, in id order; filled by :meth:`flush_events`.
        self.events: list[protocol.Event] = []

    async def execute(self, sql: str, params: SqlParams = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        cursor = await self.conn.execute(sql, params)
        return int(cursor.rowcount)

    async def insert(self, sql: str, params: SqlParams = ()) -> int:
        """Run one INSERT; return the new row's id."""
        cursor = await self.conn.execute(sql, params)
        return int(cursor.lastrowid or 0)

    async def executemany(self, sql: str, rows: Iterable[SqlParams]) -> int:
        """Run one statement for every row of parameters (one hop); return the rows changed."""
        batch = list(rows)
        if not batch:
            return 0
        cursor = await self.conn.executemany(sql, batch)
        return int(cursor.rowcount)

    def add_event(
        self, run_id: str, type_: str, data: EventData | None = None, *,
        batch_id: str | None = None, task_id: str | None = None,
    ) -> None:
        """Queue an event; it is inserted before COMMIT and lands in :attr:`events`.
        Raises ``TypeError`` at once for data JSON cannot hold."""
        self._pending.append((run_id, type_, encode_json(data or {}), batch_id, task_id))

    async def flush_events(self) -> None:
        """Insert the queued events, in order, and record them in :attr:`events`."""
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), _EVENTS_PER_INSERT):
            chunk = pending[start:start + _EVENTS_PER_INSERT]
            params: list[SqlValue] = []
            for run_id, type_, text, batch_id, task_id in chunk:
                params.extend((self.ts, run_id, type_, text, batch_id, task_id))
            last_id = await self.insert(
                "INSERT INTO events (ts, run_id, type, data, batch_id, task_id) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                params,
            )
            # AUTOINCREMENT ids of the rows of one INSERT are consecutive (we hold the write
            # lock), so the last id gives them all.
            first_id = last_id - len(chunk) + 1
            self.events.extend(
                protocol.Event(
                    id=first_id + i, ts=self.ts, run_id=run_id, type=type_,
                    data=decode_object(text), batch_id=batch_id, task_id=task_id,
                )
                for i, (run_id, type_, text, batch_id, task_id) in enumerate(chunk)
            )


@dataclass(slots=True)
class StatementCounts:
    """What the connection executed while :meth:`Database.count_statements` was open.

    ``statements`` counts every SQL statement run (the hops to the connection's thread);
    ``vm_steps`` counts SQLite's virtual-machine instructions, which grow with the rows a
    statement visits (a full scan of a table is one step or more per row), so both are
    measures of the database's work that no machine load changes.
    """

    statements: int = 0
    vm_steps: int = 0

    def _statement(self, _sql: str) -> None:
        self.statements += 1

    def _step(self) -> int:
        self.vm_steps += 1
        return 0  # go on (non-zero would interrupt the statement)


class Database:
    """The connection and its transaction discipline; :class:`Store` adds the queries."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        *,
        on_event: EventCallback | None,
        clock: Callable[[], datetime],
        schema_version: int,
    ) -> None:
        self._conn = conn
        self._path = path
        self._lock = anyio.Lock()
        self._clock = clock
        self._schema_version = schema_version
        self._closed = False
        self._write_transactions = 0
        #: Called with each stored event after its transaction committed (settable later,
        #: e.g. once the daemon's event bus exists). Must not block; exceptions are logged.
        self.on_event: EventCallback | None = on_event

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        on_event: EventCallback | None = None,
        clock: Callable[[], datetime] | None = None,
        busy_timeout_s: float = 5.0,
        max_size_bytes: int | None = None,
    ) -> Self:
        """Open (creating if needed) the database at ``path`` and migrate it to the latest
        schema. ``clock`` returns the current time (tests pass their own);
        ``max_size_bytes`` caps the file (``PRAGMA max_page_count``), beyond which writes fail
        as with a full disk."""
        path = Path(path)
        try:
            await anyio.to_thread.run_sync(_create_private_file, path)
        except OSError as exc:
            raise StoreError(
                f"cannot create the database {path}: {exc.strerror}; check that the state "
                "directory (BUILDRUNNER_HOME) is writable",
                data={"path": str(path)},
            ) from exc
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
        # the statements inside `_write()`.
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            await conn.execute("PRAGMA foreign_keys = ON")
            # WAL + synchronous=NORMAL: readers never block the writer and a process crash
            # (kill -9) never loses a committed transaction.
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            version = await migrate(conn)
            if version > LATEST_VERSION:
                raise StoreError(
                    f"the database {path} has schema version {version}, newer than this "
                    f"buildrunnerd understands ({LATEST_VERSION}); upgrade buildrunnerd or use "
                    "another BUILDRUNNER_HOME",
                    data={"path": str(path), "version": version},
                )
            if max_size_bytes is not None:
                page_size = int(list(await conn.execute_fetchall("PRAGMA page_size"))[0][0])
                pages = max(1, max_size_bytes // page_size)
                await conn.execute(f"PRAGMA max_page_count = {pages}")
        except sqlite3.Error as exc:
            await conn.close()
            raise translate_error(exc, path, "opening") from exc
        except BaseException:
            await conn.close()
            raise
        return cls(
            conn, path, on_event=on_event, clock=clock or _utcnow, schema_version=version
        )

    @property
    def schema_version(self) -> int:
        """The schema version of the open database (``PRAGMA user_version``)."""
        return self._schema_version

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def close(self) -> None:
        """Close the connection (idempotent); waits for a running transaction to finish."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True):
            async with self._lock:
                self._closed = True
                await self._conn.close()

    @property
    def write_transactions(self) -> int:
        """How many write transactions this store has committed (each a commit, so each a
        WAL append and one turn on the connection's lock): the unit the hot paths count."""
        return self._write_transactions

    @asynccontextmanager
    async def count_statements(self) -> AsyncIterator[StatementCounts]:
        """Count the statements and the SQLite VM steps run inside the block (a diagnostic for
        tests and benchmarks: it costs a Python call per VM step). One counter at a time;
        through aiosqlite's public ``set_trace_callback`` / ``set_progress_handler``."""
        counts = StatementCounts()
        await self._conn.set_trace_callback(counts._statement)
        await self._conn.set_progress_handler(counts._step, 1)
        try:
            yield counts
        finally:
            with anyio.CancelScope(shield=True):
                if not self._closed:
                    # None clears the callback (sqlite3's API); aiosqlite's annotation omits it.
                    await self._conn.set_trace_callback(cast(Callable[..., Any], None))
                    # n < 1 disables the progress handler (sqlite3_progress_handler).
                    await self._conn.set_progress_handler(counts._step, 0)

    def now(self) -> datetime:
        """The store's clock."""
        return self._clock()

    async def _write(
        self, what: str, body: Callable[[Txn], Awaitable[T]]
    ) -> tuple[T, list[protocol.Event]]:
        """Run ``body`` as ONE transaction; return its result and the events it stored.

        Any error rolls everything back (SQLite errors become StoreError saying ``what``
        failed); after the COMMIT the transaction's events go to ``on_event``."""
        async with self._lock:
            self._check_open()
            txn = Txn(self._conn, self._clock())
            try:
                # Shielded: once begun, the transaction runs to its COMMIT or ROLLBACK whatever
                # happens to the caller, and the events of a committed one must be published.
                with anyio.CancelScope(shield=True):
                    result = await _run_transaction(txn, body)
            except sqlite3.Error as exc:
                raise translate_error(exc, self._path, what) from exc
            self._write_transactions += 1
            # Still under the lock, so subscribers see events in id order across writers.
            self._publish(txn.events)
        return result, txn.events

    async def _write_one(self, what: str, sql: str, params: SqlParams = ()) -> int:
        """ONE statement with no events, in autocommit mode (a single statement is atomic by
        itself): two hops fewer than a transaction. Returns the rows it changed."""
        async with self._lock:
            self._check_open()
            try:
                with anyio.CancelScope(shield=True):
                    cursor = await self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise translate_error(exc, self._path, what) from exc
            self._write_transactions += 1
            return int(cursor.rowcount)

    async def _read(self, what: str, body: Callable[[Reader], Awaitable[T]]) -> T:
        """Run ``body`` (queries only) between transactions."""
        async with self._lock:
            self._check_open()
            try:
                return await body(Reader(self._conn))
            except sqlite3.Error as exc:
                raise translate_error(exc, self._path, what) from exc

    async def _fetchall(self, what: str, sql: str, params: SqlParams = ()) -> list[Row]:
        async with self._lock:
            self._check_open()
            try:
                return list(await self._conn.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                raise translate_error(exc, self._path, what) from exc

    def _publish(self, events: Sequence[protocol.Event]) -> None:
        callback = self.on_event
        if callback is None:
            return
        for event in events:
            try:
                callback(event)
            except Exception:
                # The transaction is committed; a subscriber's bug must not turn it into an
                # error for the writer.
                _log.exception("on_event callback failed", event_id=event.id, type=event.type)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(
                f"the database {self._path} is closed (the daemon is shutting down)",
                data={"path": str(self._path)},
            )


def not_found(kind: str, ident: str | int) -> NotFoundError:
    """The NotFoundError for an unknown run, task, batch or attempt, with where to look."""
    hint = {
        "run": "`brctl runs` lists the runs",
        "task": "task ids look like r-3f9a1c2e:T001; `brctl tasks RUN` lists them",
        "batch": "batch ids look like r-3f9a1c2e:B001",
        "attempt": "attempts come from start_attempt()",
    }[kind]
    return NotFoundError(f"{kind} {ident} not found: {hint}", data={"kind": kind, "id": ident})


def translate_error(exc: sqlite3.Error, path: Path, what: str) -> StoreError:
    """A StoreError that says what failed, where, and what to do about it."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    data: dict[str, str] = {"path": str(path), "sqlite_error": name or type(exc).__name__}
    if name == "SQLITE_FULL" or "full" in str(exc):
        message = (
            f"database is full while {what}: free space on {path.parent} (or raise the size "
            f"limit) and retry; nothing of this change was written to {path}"
        )
    elif name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED") or (
        "locked" in str(exc)
    ):
        message = (
            f"database is locked while {what}: another process holds {path}; stop it "
            "(is a second buildrunnerd or a sqlite3 shell open on it?) and retry"
        )
    elif name.startswith("SQLITE_IOERR") or name == "SQLITE_CORRUPT" or "I/O" in str(exc):
        message = (
            f"disk I/O error while {what} on {path}: {exc}; check the disk and its free space, "
            "then restart buildrunnerd"
        )
    elif name.startswith("SQLITE_READONLY"):
        message = f"database {path} is read-only while {what}: make it and its folder writable"
    elif name.startswith("SQLITE_CONSTRAINT"):
        message = f"database constraint failed while {what}: {exc} (in {path})"
    else:
        message = f"database error while {what}: {exc} (in {path})"
    return StoreError(message, data=data)


async def _run_transaction(txn: Txn, body: Callable[[Txn], Awaitable[T]]) -> T:
    # isolation_level=None: the transaction is exactly this, BEGIN to COMMIT.
    conn = txn.conn
    await conn.execute("BEGIN IMMEDIATE")
    try:
        result = await body(txn)
        await txn.flush_events()
        await conn.execute("COMMIT")
    except BaseException:
        txn.events.clear()
        # SQLite rolls back by itself after some errors (SQLITE_FULL can), so only roll back
        # what is still open, and never let a failed rollback hide the original error.
        if conn.in_transaction:
            try:
                await conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                _log.warning("rollback failed", error=str(exc))
        raise
    return result


def _create_private_file(path: Path) -> None:
    # The database holds specs and prompts: readable by the owner only.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def _utcnow() -> datetime:
    return datetime.now(UTC)
