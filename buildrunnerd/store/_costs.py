"""API calls and what they cost: recording, summaries, and retention (prune, vacuum).

Costs are stored as integer nano-dollars, so every total is an exact sum whatever the grouping;
they become USD floats only on the way out. Three places hold usage: the raw ``api_calls`` rows
(pruned with the run's events), the hourly roll-ups ``metrics_hourly`` keyed by (hour, model), and
the per-run totals on ``runs`` (both kept forever), so summaries stay right after pruning.
"""

from __future__ import annotations

from datetime import datetime

from buildrunnerd import protocol
from buildrunnerd.executor._protocol import ApiCall
from buildrunnerd.store._db import Database, Reader, Row, Txn, not_found
from buildrunnerd.store._records import JsonData, format_ts

__all__ = ["COST_GROUPINGS", "CostMethods", "from_nanousd", "record_call", "to_nanousd"]

#: What ``cost_summary(by=...)`` accepts.
COST_GROUPINGS: tuple[str, ...] = ("model", "day", "run")

_NANO = 1_000_000_000
_USAGE_SUMS = (
    "count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
    " coalesce(sum(cache_read_input_tokens), 0), coalesce(sum(cache_creation_input_tokens), 0),"
    " coalesce(sum(cost_nanousd), 0)"
)
_ROLLUP_SUMS = (
    "coalesce(sum(calls), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
    " coalesce(sum(cache_read_input_tokens), 0), coalesce(sum(cache_creation_input_tokens), 0),"
    " coalesce(sum(cost_nanousd), 0)"
)


# Each task of the batch gets nanos / n, and the first (nanos % n) of them one more.
_SPLIT_SQL = (
    "UPDATE tasks SET cost_nanousd = tasks.cost_nanousd + share.nanos FROM ("
    " SELECT id, ? / count(*) OVER () + (row_number() OVER (ORDER BY position)"
    " <= ? % count(*) OVER ()) AS nanos FROM tasks WHERE batch_id = ?) AS share"
    " WHERE tasks.id = share.id"
)


def to_nanousd(cost_usd: float) -> int:
    """USD -> integer nano-dollars (the unit stored)."""
    return round(cost_usd * _NANO)


def from_nanousd(nanos: int) -> float:
    """Integer nano-dollars -> USD."""
    return nanos / _NANO


class CostMethods(Database):
    """API-call recording, cost summaries and retention; see :class:`Store` for the contract."""

    async def record_api_call(
        self, run_id: str, batch_id: str | None, call: ApiCall
    ) -> protocol.Event:
        """Store a billed call in ONE transaction: its row, an ``api.call`` event
        ``{model, tokens {...}, cost_usd, request_id, ...}``, the hourly roll-up, and the cost
        added to the run and, split evenly (to the nano-dollar), to the batch's tasks."""

        async def record(txn: Txn) -> None:
            await record_call(txn, run_id, batch_id, call)

        _, events = await self._write(f"recording an API call of run {run_id}", record)
        return events[0]

    async def run_cost_usd(self, run_id: str) -> float:
        """What the run has spent so far, in USD (NotFoundError for an unknown run)."""
        rows = await self._fetchall(
            f"reading the cost of run {run_id}",
            "SELECT cost_nanousd FROM runs WHERE id = ?", (run_id,),
        )
        if not rows:
            raise not_found("run", run_id)
        return from_nanousd(int(rows[0][0]))

    async def cost_summary(
        self, *, run_id: str | None = None, by: str = "model"
    ) -> protocol.CostSummary:
        """Spend and tokens grouped ``by`` model, day (UTC, ``YYYY-MM-DD``) or run, for one run
        or all. Totals are exact sums of the recorded usage. Without ``run_id`` the model and
        day views read the hourly roll-ups and the run view the per-run totals, so they stay
        complete after :meth:`prune`; with ``run_id`` the model and day views read the run's
        call rows (gone once pruned; the run's totals remain)."""
        if by not in COST_GROUPINGS:
            raise ValueError(f"cost_summary(by={by!r}): use one of {', '.join(COST_GROUPINGS)}")
        if by == "run":
            where = "WHERE id = ?" if run_id is not None else "WHERE calls > 0"
            sql = (
                "SELECT id, calls, input_tokens, output_tokens, cache_read_input_tokens,"
                f" cache_creation_input_tokens, cost_nanousd FROM runs {where}"
                " ORDER BY created_at, id"
            )
            params: tuple[str, ...] = (run_id,) if run_id is not None else ()
        elif run_id is not None:
            key = "model" if by == "model" else "substr(ts, 1, 10)"
            sql = (
                f"SELECT {key} AS k, {_USAGE_SUMS} FROM api_calls WHERE run_id = ?"
                " GROUP BY k ORDER BY k"
            )
            params = (run_id,)
        else:
            key = "model" if by == "model" else "substr(hour, 1, 10)"
            sql = f"SELECT {key} AS k, {_ROLLUP_SUMS} FROM metrics_hourly GROUP BY k ORDER BY k"
            params = ()

        async def query(db: Reader) -> tuple[list[Row], list[str]] | None:
            if run_id is not None and not await db.fetchall(
                "SELECT 1 FROM runs WHERE id = ?", (run_id,)
            ):
                return None
            scope = ("WHERE run_id = ? AND backend != ''" if run_id is not None
                     else "WHERE backend != ''")
            backends = [str(r[0]) for r in await db.fetchall(
                f"SELECT DISTINCT backend FROM api_calls {scope} ORDER BY backend",
                (run_id,) if run_id is not None else ())]
            return await db.fetchall(sql, params), backends

        found = await self._read(f"summarizing costs by {by}", query)
        if found is None:
            raise not_found("run", run_id or "")
        rows, backends = found
        cost_rows = [
            protocol.CostRow(
                key=str(r[0]), calls=int(r[1]), input_tokens=int(r[2]),
                output_tokens=int(r[3]), cache_read_input_tokens=int(r[4]),
                cache_creation_input_tokens=int(r[5]), cost_usd=from_nanousd(int(r[6])),
            )
            for r in rows
        ]
        return protocol.CostSummary(
            by=by,
            total_usd=from_nanousd(sum(int(r[6]) for r in rows)),
            calls=sum(r.calls for r in cost_rows),
            input_tokens=sum(r.input_tokens for r in cost_rows),
            output_tokens=sum(r.output_tokens for r in cost_rows),
            cache_read_input_tokens=sum(r.cache_read_input_tokens for r in cost_rows),
            cache_creation_input_tokens=sum(r.cache_creation_input_tokens for r in cost_rows),
            rows=cost_rows,
            run_id=run_id,
            backends=backends,
            api_equivalent="claude-code" in backends,
        )

    async def prune(
        self, *, older_than: datetime, api_calls_older_than: datetime | None = None
    ) -> dict[str, int]:
        """Delete events older than ``older_than`` and API-call rows older than
        ``api_calls_older_than`` (default: ``older_than``), and conversation checkpoints
        saved before ``older_than``, of FINISHED runs only; hourly roll-ups and per-run totals
        are kept. Returns ``{"events": n, "api_calls": m, "checkpoints": k}``."""
        events_cutoff = format_ts(older_than)
        calls_cutoff = format_ts(api_calls_older_than or older_than)
        finished = ", ".join(f"'{s}'" for s in sorted(protocol.TERMINAL_RUN_STATES))

        async def delete(txn: Txn) -> dict[str, int]:
            events = await txn.execute(
                "DELETE FROM events WHERE ts < ? AND run_id IN"
                f" (SELECT id FROM runs WHERE state IN ({finished}))",
                (events_cutoff,),
            )
            calls = await txn.execute(
                "DELETE FROM api_calls WHERE ts < ? AND run_id IN"
                f" (SELECT id FROM runs WHERE state IN ({finished}))",
                (calls_cutoff,),
            )
            # A conversation checkpoint only serves to resume an attempt of a live run; in a
            # finished run it is dead weight (and often the biggest thing in the file).
            checkpoints = await txn.execute(
                "UPDATE attempts SET checkpoint = NULL WHERE checkpoint IS NOT NULL"
                " AND checkpoint_at < ? AND run_id IN"
                f" (SELECT id FROM runs WHERE state IN ({finished}))",
                (events_cutoff,),
            )
            return {"events": events, "api_calls": calls, "checkpoints": checkpoints}

        counts, _ = await self._write("pruning old events and API calls", delete)
        return counts

    async def vacuum(self) -> None:
        """Give the space of deleted rows back to the disk (VACUUM, then truncate the WAL).
        Holds the store for as long as it takes: run it on a schedule, not per request."""

        async def vacuum(db: Reader) -> None:
            await db.fetchall("VACUUM")
            await db.fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
            await db.fetchall("PRAGMA optimize")

        await self._read("vacuuming the database", vacuum)


async def record_call(txn: Txn, run_id: str, batch_id: str | None, call: ApiCall) -> None:
    """One billed call as a step of an open transaction: its row, the hourly roll-up, the cost
    added to the run and split over the batch's tasks, and the ``api.call`` event."""
    nanos = to_nanousd(call.cost_usd)
    data: dict[str, JsonData] = {
        "model": call.model,
        "tokens": {
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "cache_creation_input_tokens": call.cache_creation_input_tokens,
            "cache_read_input_tokens": call.cache_read_input_tokens,
        },
        "cost_usd": from_nanousd(nanos),
        "request_id": call.request_id,
        "latency_ms": call.latency_ms,
        "purpose": call.purpose,
    }
    if call.backend:
        data["backend"] = call.backend
    if call.stop_reason is not None:
        data["stop_reason"] = call.stop_reason
    changed = await txn.execute(
        "UPDATE runs SET cost_nanousd = cost_nanousd + ?, calls = calls + 1,"
        " input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,"
        " cache_read_input_tokens = cache_read_input_tokens + ?,"
        " cache_creation_input_tokens = cache_creation_input_tokens + ?"
        " WHERE id = ?",
        (nanos, call.input_tokens, call.output_tokens, call.cache_read_input_tokens,
         call.cache_creation_input_tokens, run_id),
    )
    if changed == 0:
        raise not_found("run", run_id)
    await txn.execute(
        "INSERT INTO api_calls (ts, run_id, batch_id, model, purpose, input_tokens,"
        " output_tokens, cache_creation_input_tokens, cache_read_input_tokens,"
        " cost_nanousd, latency_ms, request_id, stop_reason, backend)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (txn.ts, run_id, batch_id, call.model, call.purpose, call.input_tokens,
         call.output_tokens, call.cache_creation_input_tokens,
         call.cache_read_input_tokens, nanos, call.latency_ms, call.request_id,
         call.stop_reason, call.backend),
    )
    await txn.execute(
        "INSERT INTO metrics_hourly (hour, model, calls, input_tokens, output_tokens,"
        " cache_creation_input_tokens, cache_read_input_tokens, cost_nanousd)"
        " VALUES (?, ?, 1, ?, ?, ?, ?, ?)"
        " ON CONFLICT (hour, model) DO UPDATE SET calls = calls + 1,"
        " input_tokens = input_tokens + excluded.input_tokens,"
        " output_tokens = output_tokens + excluded.output_tokens,"
        " cache_creation_input_tokens ="
        "   cache_creation_input_tokens + excluded.cache_creation_input_tokens,"
        " cache_read_input_tokens ="
        "   cache_read_input_tokens + excluded.cache_read_input_tokens,"
        " cost_nanousd = cost_nanousd + excluded.cost_nanousd",
        (txn.ts[:13], call.model, call.input_tokens, call.output_tokens,
         call.cache_creation_input_tokens, call.cache_read_input_tokens, nanos),
    )
    if batch_id is not None and nanos:
        # Split evenly; the remainder goes one nano-dollar at a time to the first tasks (by
        # position), so the tasks' costs add up to the call's cost exactly. One statement
        # (a hop to the connection's thread), not a read and then a write per task.
        await txn.execute(_SPLIT_SQL, (nanos, nanos, batch_id))
    txn.add_event(run_id, "api.call", data, batch_id=batch_id)
