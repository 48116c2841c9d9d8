"""Schema migrations: from an empty file and from every earlier version, atomically."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from buildrunnerd.errors import StoreError
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.store import LATEST_VERSION, MIGRATIONS, Store
from buildrunnerd.store._migrations import migrate, user_version

from .conftest import Clock, make_plan, submit


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    return {r[0] for r in rows}


def _old_rows(path: Path, version: int) -> None:
    """What a buildrunnerd at schema ``version`` (1 or 2) wrote: a finished run (its spec and
    plan in the run's row), a task with its prompt and verification report, two API calls,
    and, from version 2 on, the totals and roll-ups that version kept itself."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(
            "INSERT INTO runs (id, title, state, spec_text, plan_json, options_json, created_at,"
            " cost_nanousd) VALUES ('r-v1', 'Old', 'succeeded', '# Old', ?, '{}',"
            " '2026-01-01T10:00:00.000Z', 3000000000)",
            (_plan_json(),),
        )
        conn.execute(
            "INSERT INTO batches (id, run_id, plan_id, position, task_ids, domain,"
            " estimate_minutes, priority_minutes, prompt_tokens, state) VALUES"
            " ('r-v1:B001', 'r-v1', 'B001', 0, '[\"r-v1:T001\"]', 'backend', 30, 30, 10,"
            " 'succeeded')"
        )
        conn.execute(
            "INSERT INTO tasks (id, run_id, plan_id, position, feature, title, domain,"
            " complexity, estimate_minutes, batch_id, state, prompt, verification) VALUES"
            " ('r-v1:T001', 'r-v1', 'T001', 0, 'core', 'old task', 'backend', 'simple', 30,"
            " 'r-v1:B001', 'succeeded', 'the old prompt', '{\"passed\": true}')"
        )
        for ts, model, tokens, nanos in (
            ("2026-01-01T10:05:00.000Z", "claude-haiku-5-5", 100, 1_000_000_000),
            ("2026-01-01T10:45:00.000Z", "claude-haiku-5-5", 50, 2_000_000_000),
        ):
            conn.execute(
                "INSERT INTO api_calls (ts, run_id, model, input_tokens, output_tokens,"
                " cost_nanousd) VALUES (?, 'r-v1', ?, ?, 7, ?)",
                (ts, model, tokens, nanos),
            )
        if version >= 2:
            conn.execute(
                "UPDATE runs SET calls = 2, input_tokens = 150, output_tokens = 14"
                " WHERE id = 'r-v1'"
            )
            conn.execute(
                "INSERT INTO metrics_hourly (hour, model, calls, input_tokens, output_tokens,"
                " cost_nanousd) VALUES ('2026-01-01T10', 'claude-haiku-5-5', 2, 150, 14,"
                " 3000000000)"
            )
        conn.execute(
            "INSERT INTO events (ts, run_id, type, data) VALUES"
            " ('2026-01-01T10:00:00.000Z', 'r-v1', 'run.submitted', '{}')"
        )
    conn.close()


def _plan_json() -> str:
    import msgspec

    return msgspec.json.encode(make_plan(n_batches=1)).decode()


async def _make_db_at(path: Path, version: int) -> None:
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, target=version) == version


async def test_an_empty_file_gets_the_latest_schema(db_path: Path) -> None:
    store = await Store.open(db_path)
    try:
        assert store.schema_version == LATEST_VERSION == len(MIGRATIONS) >= 2
    finally:
        await store.close()
    assert {"runs", "tasks", "batches", "attempts", "events", "api_calls",
            "metrics_hourly", "features", "task_deps", "batch_deps"} <= _tables(db_path)


@pytest.mark.parametrize("start", range(LATEST_VERSION))
async def test_upgrade_from_every_earlier_version(
    tmp_path: Path, start: int, clock: Clock
) -> None:
    path = tmp_path / f"v{start}.db"
    # Rows as a version-1 or -2 daemon wrote them, then every later migration over them.
    await _make_db_at(path, min(start, 2))
    if start >= 1:
        _old_rows(path, min(start, 2))
    await _make_db_at(path, start)
    store = await Store.open(path, clock=clock)
    try:
        assert store.schema_version == LATEST_VERSION
        # the new schema works for new data ...
        await submit(store, "r-new")
        assert (await store.get_run("r-new")).state == "queued"
        if start >= 1:
            # ... and the old data made it across, with roll-ups and totals back-filled
            old = await store.get_run("r-v1")
            assert (old.calls, old.input_tokens, old.output_tokens) == (2, 150, 14)
            assert old.cost_usd == pytest.approx(3.0)
            by_model = await store.cost_summary(by="model")
            assert [(r.key, r.calls, r.input_tokens) for r in by_model.rows] == [
                ("claude-haiku-5-5", 2, 150)
            ]
            assert by_model.total_usd == pytest.approx(3.0)
            assert (await store.cost_summary(by="day")).rows[0].key == "2026-01-01"
            assert [e.type for e in await store.list_events(run_id="r-v1")] == ["run.submitted"]
            # Calls stored before the backend was recorded name none (version 4).
            assert by_model.backends == [] and by_model.api_equivalent is False
            # ... the spec, the plan and the task's texts too, out of the hot rows
            spec = await store.get_run_spec("r-v1")
            assert spec.spec_text == "# Old"
            assert spec.plan() == make_plan(n_batches=1)
            task = await store.get_task("r-v1:T001")
            assert (task.prompt, task.verification) == (
                "the old prompt", VerificationReport(passed=True))
            assert (await store.list_tasks("r-v1", details=False))[0].prompt is None
            # ... and the old run takes new writes (its row was rebuilt, not just copied)
            await store.set_task_prompt("r-v1:T001", "a new prompt")
            assert (await store.get_task("r-v1:T001")).prompt == "a new prompt"
    finally:
        await store.close()


async def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    await _make_db_at(path, 1)
    _old_rows(path, 1)
    with sqlite3.connect(path) as conn:
        # something in the way of migration 2, halfway through its script
        conn.execute("CREATE INDEX events_run ON events(type)")
    conn.close()
    with pytest.raises(StoreError, match="already exists"):
        await Store.open(path)
    async with aiosqlite.connect(path) as check:
        assert await user_version(check) == 1
        columns = [r[1] for r in await check.execute_fetchall("PRAGMA table_info(runs)")]
    assert "calls" not in columns  # the ALTERs before the failure were rolled back
    assert "metrics_hourly" not in _tables(path)


async def test_a_newer_database_is_refused(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this buildrunnerd understands"):
        await Store.open(db_path)
