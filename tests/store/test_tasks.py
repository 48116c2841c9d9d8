"""Tasks, batches, transitions and attempts: every change with its events, in one transaction."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from buildrunnerd.errors import InvalidStateError, NotFoundError
from buildrunnerd.protocol import CheckResult, VerificationReport
from buildrunnerd.store import BatchChange, NewEvent, RunChange, Store, TaskChange

from .conftest import Clock, Recorder, submit

T1, T2, T3 = "r-1:T001", "r-1:T002", "r-1:T003"
B1, B2 = "r-1:B001", "r-1:B002"


async def test_get_task_and_batch(store: Store) -> None:
    await submit(store, "r-1")
    task = await store.get_task(T3)
    assert (task.run_id, task.plan_id, task.batch_id, task.depends_on) == (
        "r-1", "T003", B2, [T2]
    )
    assert task.to_info().id == T3 and task.to_info().prompt is None
    batch = await store.get_batch(B2)
    assert batch.task_ids == [T3, "r-1:T004"] and batch.depends_on == [B1]
    assert batch.to_info().prompt_tokens == 200
    with pytest.raises(NotFoundError, match="task r-1:T999 not found"):
        await store.get_task("r-1:T999")
    with pytest.raises(NotFoundError, match="batch r-1:B999 not found"):
        await store.get_batch("r-1:B999")
    assert await store.list_tasks("r-none") == []
    assert await store.list_batches("r-none") == []


async def test_set_task_states_writes_rows_and_one_event_each(
    store: Store, recorder: Recorder
) -> None:
    await submit(store, "r-1")
    recorder.events.clear()
    events = await store.set_task_states([
        TaskChange(T1, "ready"),
        TaskChange(T2, "running", "dispatched", attempts_inc=1, model="claude-haiku-5-5"),
        TaskChange(T1, "running", attempts_inc=1),
    ])
    assert [(e.task_id, e.batch_id, e.data) for e in events] == [
        (T1, B1, {"from": "pending", "to": "ready", "reason": None}),
        (T2, B1, {"from": "pending", "to": "running", "reason": "dispatched"}),
        # the same task twice: the second change starts where the first ended
        (T1, B1, {"from": "ready", "to": "running", "reason": None}),
    ]
    assert all(e.type == "task.state_changed" and e.run_id == "r-1" for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert recorder.events == events
    t1, t2 = await store.get_task(T1), await store.get_task(T2)
    assert (t1.state, t1.attempts, t1.model) == ("running", 1, None)
    assert (t2.state, t2.attempts, t2.model, t2.reason) == (
        "running", 1, "claude-haiku-5-5", "dispatched"
    )
    # model is kept when a later change does not name one; reason is replaced
    await store.set_task_states([TaskChange(T2, "failed", "tests failed")])
    t2 = await store.get_task(T2)
    assert (t2.state, t2.model, t2.reason) == ("failed", "claude-haiku-5-5", "tests failed")
    assert await store.set_task_states([]) == []


async def test_set_task_states_is_all_or_nothing(store: Store, recorder: Recorder) -> None:
    await submit(store, "r-1")
    recorder.events.clear()
    with pytest.raises(NotFoundError, match="r-1:T404"):
        await store.set_task_states([TaskChange(T1, "ready"), TaskChange("r-1:T404", "ready")])
    with pytest.raises(InvalidStateError, match="unknown state 'done'"):
        await store.set_task_states([TaskChange(T1, "ready"), TaskChange(T2, "done")])
    assert (await store.get_task(T1)).state == "pending"
    assert recorder.events == []
    assert await store.list_events(types=["task.state_changed"]) == []


async def test_many_tasks_in_one_call(store: Store) -> None:
    from .conftest import make_plan

    await submit(store, "r-big", make_plan(n_batches=60, tasks_per_batch=20))
    tasks = await store.list_tasks("r-big")
    assert len(tasks) == 1200
    events = await store.set_task_states([TaskChange(t.id, "ready") for t in tasks])
    assert len(events) == 1200 and len({e.id for e in events}) == 1200
    assert await store.task_counts(["r-big", "r-none"]) == {"r-big": {"ready": 1200}, "r-none": {}}


async def test_set_batch_state(store: Store, clock: Clock, recorder: Recorder) -> None:
    await submit(store, "r-1")
    recorder.events.clear()
    assert await store.set_batch_state(B1, "running") is None  # no event asked for
    assert recorder.events == []
    batch = await store.get_batch(B1)
    assert batch.state == "running" and batch.started_at == "2026-11-24T18:00:00.123Z"

    clock.advance(minutes=1)
    event = await store.set_batch_state(
        B1, "succeeded", event_type="batch.succeeded", data={"commit": "abc"}, model="m1"
    )
    assert event is not None and event.batch_id == B1 and event.task_id is None
    assert event.data == {"from": "running", "to": "succeeded", "model": "m1", "commit": "abc"}
    batch = await store.get_batch(B1)
    assert (batch.state, batch.model, batch.finished_at) == (
        "succeeded", "m1", "2026-11-24T18:01:00.123Z"
    )
    assert recorder.events == [event]
    with pytest.raises(InvalidStateError):
        await store.set_batch_state(B1, "blocked")
    with pytest.raises(NotFoundError):
        await store.set_batch_state("r-1:B404", "running")


async def test_transition_writes_everything_in_order(
    store: Store, recorder: Recorder
) -> None:
    await submit(store, "r-1")
    recorder.events.clear()
    started = await store.transition(
        run=("r-1", "running", "run.started"),
        batch=BatchChange(B1, "running", "batch.dispatched", {"tasks": 2}, "claude-haiku-5-5"),
        tasks=[TaskChange(T1, "running"), TaskChange(T2, "running")],
        events=[NewEvent("r-1", "note", {"x": 1}, batch_id=B1)],
    )
    assert [e.type for e in started] == [
        "run.started", "batch.dispatched", "task.state_changed", "task.state_changed", "note"
    ]
    finished = await store.transition(
        run=RunChange("r-1", "succeeded", "run.succeeded"),
        batch=(B1, "succeeded", "batch.succeeded"),
        tasks=[TaskChange(T1, "succeeded"), TaskChange(T2, "succeeded"),
               TaskChange(T3, "ready", "dependencies succeeded")],
    )
    # a run reaching a terminal state is the last event of the transaction
    assert [e.type for e in finished] == [
        "batch.succeeded", "task.state_changed", "task.state_changed", "task.state_changed",
        "run.succeeded",
    ]
    assert recorder.events == started + finished
    assert (await store.get_run("r-1")).state == "succeeded"
    assert (await store.get_batch(B1)).model == "claude-haiku-5-5"
    assert (await store.get_task(T3)).reason == "dependencies succeeded"


async def test_a_failing_statement_mid_transition_leaves_nothing(
    store: Store, recorder: Recorder
) -> None:
    await submit(store, "r-1")
    before = await store.list_events()
    recorder.events.clear()
    from buildrunnerd.errors import StoreError

    # The run, batch and task changes are written first; the extra event then violates the
    # events -> runs foreign key inside SQLite, and the whole transaction must roll back.
    with pytest.raises(StoreError, match="constraint failed"):
        await store.transition(
            run=("r-1", "running", "run.started"),
            batch=(B1, "running", "batch.dispatched"),
            tasks=[TaskChange(T1, "running")],
            events=[NewEvent("r-unknown", "note")],
        )
    assert recorder.events == []
    assert await store.list_events() == before
    assert (await store.get_run("r-1")).state == "queued"
    assert (await store.get_run("r-1")).started_at is None
    assert (await store.get_batch(B1)).state == "pending"
    assert (await store.get_task(T1)).state == "pending"
    # and the store keeps working afterwards
    await store.set_run_state("r-1", "running", event_type="run.started")
    assert [e.type for e in recorder.events] == ["run.started"]


async def test_attempts_and_checkpoints(store: Store, clock: Clock) -> None:
    await submit(store, "r-1")
    first = await store.start_attempt(B1, worktree="/wt/1", model="claude-haiku-5-5")
    assert (first.number, first.run_id, first.outcome, first.has_checkpoint) == (
        1, "r-1", None, False
    )
    assert await store.load_checkpoint(first.id) is None
    await store.save_checkpoint(first.id, b"turn-1")
    await store.save_checkpoint(first.id, b"turn-2\x00\xff")
    assert await store.load_checkpoint(first.id) == b"turn-2\x00\xff"
    assert (await store.get_attempt(first.id)).has_checkpoint

    other = await store.start_attempt(B2, worktree=None, model=None)
    assert [a.id for a in await store.unfinished_attempts()] == [first.id, other.id]

    clock.advance(seconds=5)
    await store.finish_attempt(first.id, outcome="interrupted", reason="daemon stopped")
    second = await store.start_attempt(B1, worktree="/wt/2", model="claude-sonnet-5-5")
    assert second.number == 2
    await store.finish_attempt(
        second.id, outcome="succeeded", verification=VerificationReport(True, []),
        commit="deadbeef",
    )
    attempts = await store.list_attempts(B1)
    assert [(a.number, a.outcome) for a in attempts] == [(1, "interrupted"), (2, "succeeded")]
    assert attempts[0].finished_at == "2026-11-24T18:00:05.123Z"
    assert attempts[0].reason == "daemon stopped"
    assert attempts[1].verification == VerificationReport(True, [])
    assert attempts[1].commit == "deadbeef"
    assert [a.id for a in await store.unfinished_attempts()] == [other.id]
    batch = await store.get_batch(B1)
    assert batch.attempts == 2 and batch.model == "claude-sonnet-5-5"

    with pytest.raises(InvalidStateError, match="already finished"):
        await store.finish_attempt(second.id, outcome="failed")
    with pytest.raises(InvalidStateError, match="unknown outcome"):
        await store.finish_attempt(other.id, outcome="exploded")
    with pytest.raises(NotFoundError):
        await store.finish_attempt(9999, outcome="failed")
    with pytest.raises(NotFoundError):
        await store.save_checkpoint(9999, b"x")
    with pytest.raises(NotFoundError):
        await store.load_checkpoint(9999)
    with pytest.raises(NotFoundError):
        await store.start_attempt("r-1:B404", worktree=None, model=None)


async def test_task_prompt_and_verification(store: Store, recorder: Recorder) -> None:
    await submit(store, "r-1")
    await store.set_task_prompt(T1, "Build T001.\n")
    report = VerificationReport(False, [CheckResult("tests", False, "1 failed")])
    await store.set_task_verification(T1, report)
    task = await store.get_task(T1)
    assert task.prompt == "Build T001.\n"
    assert task.verification == report
    info = task.to_info(full=True)
    assert info.prompt == "Build T001.\n" and info.verification == report
    with pytest.raises(NotFoundError):
        await store.set_task_prompt("r-1:T404", "x")
    assert len(recorder.events) == 1


async def test_concurrent_writers_never_interleave(store: Store, recorder: Recorder) -> None:
    from .conftest import make_plan

    await submit(store, "r-c", make_plan(n_batches=20, tasks_per_batch=5))
    tasks = await store.list_tasks("r-c")
    recorder.events.clear()

    async def walk(task_id: str) -> None:
        for to in ("ready", "running", "verifying", "succeeded"):
            await store.set_task_states([TaskChange(task_id, to)])

    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(walk, task.id)
    assert all(t.state == "succeeded" for t in await store.list_tasks("r-c"))
    assert len(recorder.events) == 400
    for task in tasks:
        mine = [e.data["to"] for e in recorder.events if e.task_id == task.id]
        assert mine == ["ready", "running", "verifying", "succeeded"]


async def test_a_cancelled_caller_leaves_all_or_nothing(store: Store, recorder: Recorder) -> None:
    await submit(store, "r-1")
    recorder.events.clear()
    outcomes = set()
    for ticks in range(8):
        state = "ready" if ticks % 2 == 0 else "pending"
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.set_task_states,
                          [TaskChange(T1, state), TaskChange(T2, state)])
            for _ in range(ticks):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()  # before, during or after the write
        t1, t2 = await store.get_task(T1), await store.get_task(T2)
        assert t1.state == t2.state
        # subscribers got exactly what was committed, never more, never less
        assert await store.list_events(types=["task.state_changed"]) == recorder.events
        outcomes.add(len(recorder.events))
    assert 0 in outcomes and max(outcomes) > 0  # some writes were cut off, some went through
