"""A database that fails mid-run (issue 3) pauses that run with the reason and never takes the
daemon down; after ``resume`` every task succeeds exactly once.

The failure is a real SQLITE_FULL on the store's own connection: the store is opened with a
size cap (``PRAGMA max_page_count``), and a second connection - standing in for whatever
filled the disk - installs a trigger that makes one chosen write outgrow the cap. The write
fails and rolls back like any full-disk write; dropping the trigger "frees the space".
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .conftest import GatedExecutor, make_plan

_CAP_BYTES = 4 * 1024 * 1024
_FILLER_BYTES = 8 * 1024 * 1024  # one row bigger than the whole cap: the write cannot fit


def _fill_on(db: Path, table: str, when: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript(
            "CREATE TABLE IF NOT EXISTS test_filler (blob BLOB);"
            f"CREATE TRIGGER fill_up AFTER UPDATE ON {table} WHEN {when} "
            f"BEGIN INSERT INTO test_filler VALUES (randomblob({_FILLER_BYTES})); END;"
        )
    finally:
        conn.close()


def _free_space(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript("DROP TRIGGER fill_up; DROP TABLE test_filler;")
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("table", "when", "a_attempts"),
    [
        # recording A's result (succeeded + B ready, one transaction): the result is kept and
        # recorded on resume, A is not run again
        ("batches", "NEW.id = '{run}:A' AND NEW.state = 'succeeded'", ["succeeded"]),
        # recording A's attempt as succeeded: written in the result's transaction, so the
        # same as above (kept, recorded on resume, A is not run, nor paid for, again)
        ("attempts", "NEW.batch_id = '{run}:A' AND NEW.outcome = 'succeeded'", ["succeeded"]),
        # dispatching B (batch + tasks running): B has not started; it starts on resume
        ("batches", "NEW.id = '{run}:B' AND NEW.state = 'running'", ["succeeded"]),
    ],
    ids=["result", "attempt", "dispatch"],
)
async def test_a_full_database_pauses_the_run_and_resume_finishes_it(
    harness: Any, tmp_path: Path, table: str, when: str, a_attempts: list[str]
) -> None:
    db = tmp_path / "store.sqlite"
    async with harness(workers=4, max_size_bytes=_CAP_BYTES) as h:
        gated: GatedExecutor = h.executor
        run_id = await h.submit(make_plan({"A": ([], 30), "B": (["A"], 20)}))
        await gated.wait_started(f"{run_id}:A")
        _fill_on(db, table, when.format(run=run_id))
        gated.release(f"{run_id}:A")

        assert await h.wait_run(run_id, ("paused",)) == "paused"
        record = await h.store.get_run(run_id)
        assert record.reason is not None
        assert record.reason.startswith("the database failed: database is full")
        assert f"`brctl resume {run_id}`" in record.reason
        assert gated.started.count(f"{run_id}:B") == 0  # B waits for what is stored

        # The daemon goes on: another run is executed and recorded meanwhile.
        other = await h.submit(make_plan({"X": ([], 10)}))
        await gated.wait_started(f"{other}:X")
        gated.release(f"{other}:X")
        assert await h.wait_run(other) == "succeeded"

        _free_space(db)
        assert (await h.runs.resume(run_id)).state in ("running", "succeeded")
        if len(a_attempts) > 1:
            await gated.wait_started(f"{run_id}:A")
            gated.release(f"{run_id}:A")
        await gated.wait_started(f"{run_id}:B")
        gated.release(f"{run_id}:B")
        assert await h.wait_run(run_id) == "succeeded"
        attempts = await h.store.list_attempts(f"{run_id}:A")
        assert [a.outcome for a in attempts] == a_attempts
        assert [a.outcome for a in await h.store.list_attempts(f"{run_id}:B")] == ["succeeded"]

    assert Counter(gated.started) == {f"{run_id}:A": len(a_attempts), f"{run_id}:B": 1,
                                      f"{other}:X": 1}
    events = [e for e in h.events if e.run_id == run_id]
    succeeded = Counter(e.task_id for e in events
                        if e.type == "task.state_changed" and e.data["to"] == "succeeded")
    assert succeeded == {f"{run_id}:TA": 1, f"{run_id}:TB": 1}
    assert [e.type for e in events if e.type.startswith("run.")][-3:] == [
        "run.paused", "run.resumed", "run.succeeded"]
    assert Counter(e.batch_id for e in events if e.type == "batch.succeeded") == {
        f"{run_id}:A": 1, f"{run_id}:B": 1}


async def test_a_full_database_at_the_runs_end_pauses_it_and_resume_ends_it(
    harness: Any, tmp_path: Path
) -> None:
    """Every batch is recorded, the run's own end is not: resume writes the end, runs
    nothing again."""
    db = tmp_path / "store.sqlite"
    async with harness(workers=2, max_size_bytes=_CAP_BYTES) as h:
        gated: GatedExecutor = h.executor
        run_id = await h.submit(make_plan({"A": ([], 30)}))
        await gated.wait_started(f"{run_id}:A")
        _fill_on(db, "runs", f"NEW.id = '{run_id}' AND NEW.state = 'succeeded'")
        gated.release(f"{run_id}:A")
        assert await h.wait_run(run_id, ("paused",)) == "paused"
        assert (await h.store.get_task(f"{run_id}:TA")).state == "succeeded"
        _free_space(db)
        await h.runs.resume(run_id)
        assert await h.wait_run(run_id) == "succeeded"
    assert gated.started == [f"{run_id}:A"]
    events = [e.type for e in h.events if e.run_id == run_id]
    assert events.count("batch.succeeded") == 1
    assert [e for e in events if e.startswith("run.")][-3:] == [
        "run.paused", "run.resumed", "run.succeeded"]
