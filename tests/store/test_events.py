"""Events: append-only, the id is the cursor, published only after the commit, in order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from buildrunnerd import protocol
from buildrunnerd.errors import NotFoundError
from buildrunnerd.store import Store, TaskChange

from .conftest import Clock, Recorder, submit


async def test_append_and_list_events_with_filters(store: Store, clock: Clock) -> None:
    await submit(store, "r-1")
    await submit(store, "r-2")
    clock.advance(seconds=1)
    a = await store.append_event("r-1", "file.created", {"path": "src/a.py"},
                                 batch_id="r-1:B001", task_id="r-1:T001")
    b = await store.append_event("r-2", "agent.text", {"text": "héllo"})
    c = await store.append_event("r-1", "verify.passed", batch_id="r-1:B001")
    assert a.ts == "2026-11-24T18:00:01.123Z"
    assert (a.batch_id, a.task_id, a.data) == ("r-1:B001", "r-1:T001", {"path": "src/a.py"})
    assert c.data == {} and a.id < b.id < c.id

    every = await store.list_events()
    assert [e.type for e in every] == [
        "run.submitted", "run.submitted", "file.created", "agent.text", "verify.passed"
    ]
    assert await store.list_events(run_id="r-1", since=every[1].id) == [a, c]
    assert await store.list_events(task_id="r-1:T001") == [a]
    assert await store.list_events(types=["agent.text", "verify.passed"]) == [b, c]
    assert await store.list_events(since=every[0].id, limit=2) == every[1:3]
    assert await store.list_events(since=c.id) == []
    assert await store.list_events(run_id="r-1", limit=0) == []
    with pytest.raises(NotFoundError, match="run r-404"):
        await store.append_event("r-404", "x")


async def test_event_data_is_json_on_the_way_out(store: Store, recorder: Recorder) -> None:
    await submit(store, "r-1")
    event = await store.append_event("r-1", "tool.call", {"args": ("a", 1), "ok": True})
    # what subscribers get now is what a reader gets later: JSON, not Python objects
    assert event.data == {"args": ["a", 1], "ok": True}
    assert recorder.events[-1] == event
    assert (await store.list_events(since=event.id - 1))[0] == event
    with pytest.raises(TypeError, match="cannot store"):  # (mypy refuses it too)
        await store.append_event("r-1", "bad", {"x": object()})  # type: ignore[dict-item]
    assert recorder.events[-1] == event


async def test_on_event_runs_after_commit_in_id_order(db_path: Path, clock: Clock) -> None:
    seen: list[tuple[int, bool]] = []

    def on_event(event: protocol.Event) -> None:
        # Another connection sees the row already: the transaction has committed.
        with sqlite3.connect(db_path) as other:
            row = other.execute("SELECT type FROM events WHERE id = ?", (event.id,)).fetchone()
        other.close()
        seen.append((event.id, row is not None and row[0] == event.type))

    store = await Store.open(db_path, on_event=on_event, clock=clock)
    try:
        await submit(store, "r-1")
        await store.set_task_states([TaskChange("r-1:T001", "ready"),
                                     TaskChange("r-1:T002", "ready")])
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(store.append_event, "r-1", "tick", {"i": i})
    finally:
        await store.close()
    assert len(seen) == 23
    assert all(committed for _, committed in seen)
    assert [i for i, _ in seen] == sorted(i for i, _ in seen)


async def test_a_failing_subscriber_does_not_fail_the_writer(db_path: Path) -> None:
    def on_event(event: protocol.Event) -> None:
        raise RuntimeError("subscriber bug")

    store = await Store.open(db_path, on_event=on_event)
    try:
        await submit(store, "r-1")
        event = await store.append_event("r-1", "tick")
        assert (await store.list_events(since=event.id - 1)) == [event]
    finally:
        await store.close()


async def test_on_event_can_be_set_after_open(db_path: Path) -> None:
    recorder = Recorder()
    store = await Store.open(db_path)
    try:
        await submit(store, "r-1")
        store.on_event = recorder
        event = await store.append_event("r-1", "tick")
    finally:
        await store.close()
    assert recorder.events == [event]


async def test_event_ids_are_never_reused_after_pruning(store: Store, clock: Clock) -> None:
    await submit(store, "r-1")
    last = await store.append_event("r-1", "tick")
    await store.set_run_state("r-1", "succeeded", event_type="run.succeeded")
    clock.advance(days=100)
    pruned = await store.prune(older_than=clock.now)
    assert pruned["events"] == 3 and await store.list_events() == []
    await submit(store, "r-2")
    newer = await store.list_events()
    assert newer[0].id > last.id + 1
