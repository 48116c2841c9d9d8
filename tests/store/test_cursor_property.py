"""The event id is a cursor: paging with ``since``/``limit`` sees every event exactly once."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from buildrunnerd import protocol
from buildrunnerd.store import NewEvent, Store, TaskChange

from .conftest import make_plan, submit

# Each step writes to run 0 or 1: a single event, a batch of extra events in one transaction,
# or task state changes (one event per task).
_steps = st.lists(
    st.tuples(st.integers(0, 1), st.sampled_from(["event", "batch", "tasks"]),
              st.integers(1, 5)),
    min_size=1, max_size=25,
)


@settings(max_examples=25, deadline=None)
@given(steps=_steps, page=st.integers(1, 7), run_filter=st.sampled_from([None, 0, 1]))
def test_paging_by_cursor_sees_every_event_once(
    steps: list[tuple[int, str, int]], page: int, run_filter: int | None
) -> None:
    async def scenario(db: Path) -> None:
        published: list[protocol.Event] = []
        store = await Store.open(db, on_event=published.append)
        try:
            runs = ["r-a", "r-b"]
            for run_id in runs:
                await submit(store, run_id, make_plan(n_batches=1, tasks_per_batch=5))
            for run_index, kind, n in steps:
                run_id = runs[run_index]
                if kind == "event":
                    await store.append_event(run_id, "tick", {"n": n})
                elif kind == "batch":
                    await store.transition(events=[NewEvent(run_id, "tick", {"i": i})
                                                   for i in range(n)])
                else:
                    await store.set_task_states(
                        [TaskChange(f"{run_id}:T00{i + 1}", "ready") for i in range(n)]
                    )
            wanted = None if run_filter is None else runs[run_filter]
            paged: list[protocol.Event] = []
            since = 0
            while True:
                chunk = await store.list_events(run_id=wanted, since=since, limit=page)
                if not chunk:
                    break
                assert len(chunk) <= page
                paged.extend(chunk)
                since = chunk[-1].id
        finally:
            await store.close()
        expected = [e for e in published if wanted is None or e.run_id == wanted]
        assert paged == expected
        ids = [e.id for e in published]
        assert ids == sorted(set(ids))  # increasing, never repeated

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(scenario, Path(tmp) / "buildrunner.db")
