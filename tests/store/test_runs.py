"""Runs: create, read, list, state changes with their events, plain updates, persistence."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from buildrunnerd.errors import InvalidStateError, NotFoundError, StoreError
from buildrunnerd.store import LATEST_VERSION, NewRun, RunOptions, RunUpdate, Store, TaskChange

from .conftest import Clock, Recorder, make_plan, submit


async def test_create_run_stores_everything_in_one_go(store: Store, recorder: Recorder) -> None:
    plan = make_plan(n_batches=3, tasks_per_batch=2)
    run = await submit(store, "r-3f9a1c2e", plan, workers=3, budget_usd=2.5, test_cmd="pytest")

    assert run.id == "r-3f9a1c2e"
    assert run.state == "queued"
    assert run.title == "Demo"
    assert run.created_at == "2026-11-24T18:00:00.123Z"
    assert run.started_at is None and run.finished_at is None
    assert run.options.workers == 3 and run.options.budget_usd == 2.5
    assert run.options.test_cmd == "pytest" and run.options.allow_dirty is False
    spec = await store.get_run_spec(run.id)
    assert spec.spec_text == "# Demo\n"
    assert spec.plan() == plan

    tasks = await store.list_tasks(run.id)
    assert [t.id for t in tasks] == [f"r-3f9a1c2e:T00{i}" for i in range(1, 7)]
    assert all(t.state == "pending" and t.attempts == 0 for t in tasks)
    assert tasks[0].depends_on == []
    assert tasks[2].depends_on == ["r-3f9a1c2e:T002"]
    assert tasks[2].batch_id == "r-3f9a1c2e:B002" and tasks[2].plan_id == "T003"
    assert tasks[2].files == ["src/t003.py"]
    assert tasks[2].acceptance_criteria == ["T003 works"]
    assert tasks[2].description == "build T003"

    batches = await store.list_batches(run.id)
    assert [b.plan_id for b in batches] == ["B001", "B002", "B003"]
    assert batches[1].task_ids == ["r-3f9a1c2e:T003", "r-3f9a1c2e:T004"]
    assert batches[1].depends_on == ["r-3f9a1c2e:B001"]
    assert batches[1].prompt_tokens == 200 and batches[0].priority_minutes == 180
    assert all(b.state == "pending" for b in batches)

    submitted = [(e.type, e.data["title"], e.data["tasks"], e.data["batches"])
                 for e in recorder.events]
    assert submitted == [("run.submitted", "Demo", 6, 3)]
    assert await store.list_events(run_id=run.id) == recorder.events


async def test_create_run_twice_with_one_id_fails_and_keeps_the_first(
    store: Store, recorder: Recorder
) -> None:
    await submit(store, "r-1", make_plan(n_batches=1))
    with pytest.raises(StoreError, match="constraint"):
        await submit(store, "r-1", make_plan(n_batches=4))
    assert len(await store.list_batches("r-1")) == 1
    assert len(recorder.events) == 1


async def test_get_and_list_runs(store: Store, clock: Clock) -> None:
    with pytest.raises(NotFoundError, match="run r-nope not found") as info:
        await store.get_run("r-nope")
    assert info.value.data == {"kind": "run", "id": "r-nope"}

    await submit(store, "r-1")
    clock.advance(seconds=1)
    await submit(store, "r-2")
    await store.set_run_state("r-2", "running", event_type="run.started")
    assert [r.id for r in await store.list_runs()] == ["r-1", "r-2"]
    assert [r.id for r in await store.list_runs(["running", "paused"])] == ["r-2"]
    assert await store.list_runs([]) == []
    assert (await store.get_run("r-1")).state == "queued"


async def test_set_run_state_sets_timestamps_reason_and_event(
    store: Store, clock: Clock, recorder: Recorder
) -> None:
    await submit(store, "r-1")
    clock.advance(seconds=2)
    started = await store.set_run_state("r-1", "running", event_type="run.started")
    assert started.type == "run.started" and started.data == {"from": "queued", "to": "running"}
    assert started.ts == "2026-11-24T18:00:02.123Z"

    clock.advance(seconds=3)
    await store.set_run_state("r-1", "paused", event_type="run.paused", reason="budget",
                              data={"spent_usd": 1.5})
    run = await store.get_run("r-1")
    assert run.state == "paused" and run.reason == "budget"
    assert run.started_at == "2026-11-24T18:00:02.123Z" and run.finished_at is None
    assert recorder.events[-1].data == {
        "from": "running", "to": "paused", "reason": "budget", "spent_usd": 1.5
    }

    clock.advance(seconds=1)
    await store.set_run_state("r-1", "running", event_type="run.resumed")
    clock.advance(seconds=4)
    await store.set_run_state("r-1", "failed", event_type="run.failed", reason="T001 failed")
    run = await store.get_run("r-1")
    # started_at stays the first start; finished_at marks the end
    assert run.started_at == "2026-11-24T18:00:02.123Z"
    assert run.finished_at == "2026-11-24T18:00:10.123Z"
    assert run.to_info().elapsed_s == pytest.approx(8.0)

    # a retry takes a failed run back to running: it is no longer finished
    await store.set_run_state("r-1", "running", event_type="run.resumed")
    run = await store.get_run("r-1")
    assert run.finished_at is None and run.reason is None


async def test_set_run_state_rejects_unknown_states_and_runs(
    store: Store, recorder: Recorder
) -> None:
    await submit(store, "r-1")
    with pytest.raises(InvalidStateError, match="unknown state 'done'") as info:
        await store.set_run_state("r-1", "done", event_type="run.done")
    assert "succeeded" in info.value.data["allowed"]
    with pytest.raises(NotFoundError):
        await store.set_run_state("r-2", "running", event_type="run.started")
    assert [e.type for e in recorder.events] == ["run.submitted"]


async def test_update_run_sets_fields_and_options(store: Store, recorder: Recorder) -> None:
    await submit(store, "r-1", workers=2)
    await store.update_run("r-1", branch="buildrunner/r-1", base_commit="abc123", budget_usd=9.0)
    run = await store.get_run("r-1")
    assert run.branch == "buildrunner/r-1" and run.base_commit == "abc123"
    assert run.options.budget_usd == 9.0 and run.options.workers == 2
    with pytest.raises(TypeError, match="cannot set colour"):  # (mypy refuses it too)
        await store.update_run("r-1", colour="blue")  # type: ignore[call-arg]
    with pytest.raises(NotFoundError):
        await store.update_run("r-2", branch="x")
    assert len(recorder.events) == 1  # updates are not events


def test_run_update_names_every_field_update_run_sets() -> None:
    # The type says what the runtime check allows: a run's plain fields and its options.
    plain = {"title", "repo", "branch", "base_commit", "spec_path", "reason"}
    assert set(RunUpdate.__annotations__) == plain | set(RunOptions.__struct_fields__)


async def test_everything_survives_a_reopen(db_path: Path, clock: Clock) -> None:
    store = await Store.open(db_path, clock=clock)
    assert store.schema_version == LATEST_VERSION
    await submit(store, "r-1")
    await store.set_run_state("r-1", "running", event_type="run.started")
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.get_run("r-1")

    reopened = await Store.open(db_path, clock=clock)
    try:
        assert reopened.schema_version == LATEST_VERSION
        assert (await reopened.get_run("r-1")).state == "running"
        assert [e.type for e in await reopened.list_events()] == ["run.submitted", "run.started"]
    finally:
        await reopened.close()
    # the database holds specs and prompts: owner-only
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600


async def test_new_run_title_overrides_the_plan(store: Store) -> None:
    run = await store.create_run(
        NewRun(id="r-9", spec_text="x", title="Custom"), make_plan(n_batches=1)
    )
    assert run.title == "Custom" and run.repo is None and run.options.workers == 1


async def test_per_batch_writes_do_not_grow_with_the_run(store: Store) -> None:
    """The hot rows hold no big text: a cost update of a run with a huge spec and plan writes
    as few database pages as one of a tiny run (SQLite rewrites a whole row, overflow pages
    included, on any UPDATE)."""
    from buildrunnerd.executor import ApiCall

    small = await submit(store, "r-small", make_plan(n_batches=1))
    big_plan = make_plan(n_batches=400, tasks_per_batch=5)
    big = await store.create_run(
        NewRun(id="r-big", spec_text="# Big\n" + "x" * 2_000_000), big_plan
    )
    await store.set_tasks_details([f"r-big:T{i:03d}" for i in range(1, 6)],
                                  prompt="p" * 200_000)

    wal = store.path.with_name(store.path.name + "-wal")

    async def bytes_written(run_id: str, task_id: str) -> int:
        # An empty WAL first: what the two writes append is what they cost.
        await store._fetchall("test", "PRAGMA wal_checkpoint(TRUNCATE)")
        assert wal.stat().st_size == 0
        await store.record_api_call(run_id, f"{run_id}:B001", ApiCall(
            model="m", input_tokens=1, output_tokens=1, cost_usd=0.01))
        await store.set_task_states([TaskChange(task_id, "ready")])
        return wal.stat().st_size

    small_bytes = await bytes_written(small.id, "r-small:T001")
    big_bytes = await bytes_written(big.id, "r-big:T001")
    # With the spec and plan in the run's row and the prompt in the task's, the big run's
    # writes were megabytes; now both are a handful of pages.
    assert big_bytes <= small_bytes + 8 * 4200
