"""Attempts: one per try at a batch, with the agent's conversation checkpoint for resuming,
and the writes of one turn of the agent (its call, events and checkpoint) as one transaction."""

from __future__ import annotations

from collections.abc import Sequence

from buildrunnerd import protocol
from buildrunnerd.errors import InvalidStateError
from buildrunnerd.executor._protocol import ApiCall
from buildrunnerd.store._costs import record_call
from buildrunnerd.store._db import Database, Row, Txn, not_found
from buildrunnerd.store._records import (
    ATTEMPT_OUTCOMES,
    AttemptEnd,
    AttemptRecord,
    NewEvent,
    format_ts,
)
from buildrunnerd.store._reports import decode_report, encode_report

__all__ = ["AttemptMethods", "end_attempt", "open_attempt"]

_ATTEMPT_COLUMNS = (
    "id, batch_id, run_id, number, worktree, model, started_at, finished_at, outcome, reason,"
    " verification, commit_sha, checkpoint IS NOT NULL"
)


class AttemptMethods(Database):
    """Attempt bookkeeping; see :class:`Store` for the contract."""

    async def start_attempt(
        self, batch_id: str, *, worktree: str | None, model: str | None
    ) -> AttemptRecord:
        """Open the next attempt of a batch (number = the batch's attempts + 1, which it
        increments). No event: the daemon stores ``batch.dispatched`` itself."""

        async def start(txn: Txn) -> AttemptRecord:
            return await open_attempt(txn, batch_id, worktree=worktree, model=model)

        attempt, _ = await self._write(f"starting an attempt of batch {batch_id}", start)
        return attempt

    async def finish_attempt(
        self, attempt_id: int, *, outcome: str, reason: str | None = None,
        verification: protocol.VerificationReport | None = None, commit: str | None = None,
    ) -> None:
        """Close an attempt with ``outcome`` (succeeded|failed|interrupted|conflict|cancelled).
        An attempt finishes once: finishing it again raises InvalidStateError."""
        _check_outcome(attempt_id, outcome)
        changed = await self._write_one(
            f"finishing attempt {attempt_id}", _FINISH_SQL,
            (outcome, reason, encode_report(verification), commit, format_ts(self.now()),
             attempt_id),
        )
        if changed:
            return
        rows = await self._fetchall(f"reading attempt {attempt_id}",
                                    "SELECT outcome FROM attempts WHERE id = ?", (attempt_id,))
        if not rows:
            raise not_found("attempt", attempt_id)
        raise InvalidStateError(
            f"attempt {attempt_id} already finished ({rows[0][0]}); start a new attempt",
            data={"state": rows[0][0], "allowed": []},
        )

    async def get_attempt(self, attempt_id: int) -> AttemptRecord:
        """One attempt (NotFoundError if there is none)."""
        rows = await self._fetchall(
            f"reading attempt {attempt_id}",
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE id = ?", (attempt_id,),
        )
        if not rows:
            raise not_found("attempt", attempt_id)
        return _attempt_from_row(rows[0])

    async def list_attempts(self, batch_id: str) -> list[AttemptRecord]:
        """A batch's attempts, oldest first."""
        rows = await self._fetchall(
            f"listing the attempts of batch {batch_id}",
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE batch_id = ? ORDER BY id",
            (batch_id,),
        )
        return [_attempt_from_row(r) for r in rows]

    async def unfinished_attempts(self) -> list[AttemptRecord]:
        """Attempts without an outcome (in flight when the daemon stopped), oldest first."""
        rows = await self._fetchall(
            "listing unfinished attempts",
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE outcome IS NULL ORDER BY id",
        )
        return [_attempt_from_row(r) for r in rows]

    async def save_checkpoint(self, attempt_id: int, state: bytes) -> None:
        """Keep the agent's conversation after a turn (replaces the previous checkpoint)."""

        changed = await self._write_one(
            f"checkpointing attempt {attempt_id}",
            _CHECKPOINT_SQL, (bytes(state), format_ts(self.now()), attempt_id),
        )
        if changed == 0:
            raise not_found("attempt", attempt_id)

    async def record_turn(
        self, attempt_id: int, run_id: str, batch_id: str, *, call: ApiCall | None = None,
        events: Sequence[NewEvent] = (), checkpoint: bytes | None = None,
        earlier: Sequence[NewEvent] = (),
    ) -> list[protocol.Event]:
        """Store what one turn of the agent produced in ONE transaction: the ``earlier``
        events (what happened during the turn and waited for its write: streamed text, file
        changes), the billed ``call`` (as :meth:`record_api_call`: its row, costs and
        ``api.call`` event), then ``events`` in order, then the conversation ``checkpoint``
        (as :meth:`save_checkpoint`). Returns the stored events in that order.

        One commit instead of one per part: a crash keeps the whole turn or none of it, so a
        resumed attempt never finds a checkpoint without the events and the cost of the turn
        it holds, nor a billed turn its checkpoint does not know."""

        async def record(txn: Txn) -> None:
            for e in earlier:
                txn.add_event(e.run_id, e.type, e.data, batch_id=e.batch_id, task_id=e.task_id)
            if call is not None:
                await record_call(txn, run_id, batch_id, call)
            for e in events:
                txn.add_event(e.run_id, e.type, e.data, batch_id=e.batch_id, task_id=e.task_id)
            if checkpoint is not None:
                changed = await txn.execute(
                    _CHECKPOINT_SQL, (bytes(checkpoint), txn.ts, attempt_id))
                if changed == 0:
                    raise not_found("attempt", attempt_id)

        _, stored = await self._write(f"recording a turn of attempt {attempt_id}", record)
        return stored

    async def load_checkpoint(self, attempt_id: int) -> bytes | None:
        """The attempt's last checkpoint, or None if it has none."""
        rows = await self._fetchall(
            f"loading the checkpoint of attempt {attempt_id}",
            "SELECT checkpoint FROM attempts WHERE id = ?", (attempt_id,),
        )
        if not rows:
            raise not_found("attempt", attempt_id)
        return None if rows[0][0] is None else bytes(rows[0][0])


_CHECKPOINT_SQL = "UPDATE attempts SET checkpoint = ?, checkpoint_at = ? WHERE id = ?"
_FINISH_SQL = (
    "UPDATE attempts SET outcome = ?, reason = ?, verification = ?, commit_sha = ?,"
    " finished_at = ? WHERE id = ? AND outcome IS NULL"
)


def _check_outcome(attempt_id: int, outcome: str) -> None:
    if outcome not in ATTEMPT_OUTCOMES:
        raise InvalidStateError(
            f"attempt {attempt_id}: unknown outcome {outcome!r}; use one of "
            f"{', '.join(ATTEMPT_OUTCOMES)}",
            data={"state": outcome, "allowed": list(ATTEMPT_OUTCOMES)},
        )


async def open_attempt(
    txn: Txn, batch_id: str, *, worktree: str | None, model: str | None
) -> AttemptRecord:
    """Open the next attempt of a batch inside an open transaction (see
    :meth:`AttemptMethods.start_attempt`)."""
    # RETURNING gives the new values: one statement reads and bumps the count.
    rows = await txn.fetchall(
        "UPDATE batches SET attempts = attempts + 1, model = coalesce(?, model)"
        " WHERE id = ? RETURNING run_id, attempts",
        (model, batch_id),
    )
    if not rows:
        raise not_found("batch", batch_id)
    run_id, number = rows[0][0], int(rows[0][1])
    attempt_id = await txn.insert(
        "INSERT INTO attempts (batch_id, run_id, number, worktree, model, started_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (batch_id, run_id, number, worktree, model, txn.ts),
    )
    return AttemptRecord(
        id=attempt_id, batch_id=batch_id, run_id=run_id, number=number,
        worktree=worktree, model=model, started_at=txn.ts,
    )


async def end_attempt(txn: Txn, end: AttemptEnd) -> None:
    """Finish an attempt inside an open transaction (:meth:`Store.transition`). An attempt
    that already has an outcome keeps it: the result it goes with is still written."""
    _check_outcome(end.attempt_id, end.outcome)
    await txn.execute(_FINISH_SQL, (
        end.outcome, end.reason, encode_report(end.verification), end.commit, txn.ts,
        end.attempt_id))


def _attempt_from_row(r: Row) -> AttemptRecord:
    return AttemptRecord(
        id=int(r[0]), batch_id=r[1], run_id=r[2], number=int(r[3]), worktree=r[4], model=r[5],
        started_at=r[6], finished_at=r[7], outcome=r[8], reason=r[9],
        verification=decode_report(r[10]), commit=r[11], has_checkpoint=bool(r[12]),
    )
