"""A batch's store writes through the daemon: its dispatch, attempt and prompt in one commit
once the worktree and the prompt exist, and the events that wait for the batch's next write
(finished streamed text, file changes) stored in order whatever way the backend ends.

In-process run manager on a real SQLite store and a scratch workspace; the model stand-ins
below call the real :class:`~buildrunnerd.daemon._context.BatchContext` as a backend does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from buildrunnerd.daemon._context import MAX_PENDING_EVENTS, BatchContext
from buildrunnerd.executor import BatchJob, ExecutionContext, ExecutionOutcome
from buildrunnerd.store import Store
from tests.daemon.turn_support import BATCH_ID, RUN_ID, active_run, create_run

from .conftest import make_plan


class LookingExecutor:
    """Looks at the store when its batch starts, then reports text and a file and ends as
    told: ``completed``, ``failed``, or never (the test cancels the run)."""

    name = "looking"

    def __init__(self, store: Any, end: str) -> None:
        self.store = store
        self.end = end
        self.at_start: dict[str, Any] = {}
        self.reported = anyio.Event()

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        (task,) = job.tasks
        gid = f"{job.run_id}:{task.id}"
        self.at_start = {
            "commits": self.store.write_transactions,
            "batch": await self.store.get_batch(job.batch_id),
            "task": await self.store.get_task(gid),
            "attempts": await self.store.list_attempts(job.batch_id),
        }
        await ctx.emit("agent.text", {"text": "Writing the module.", "chars": 19})
        await ctx.emit("file.created", {"path": "out/A.py"})
        self.at_start["commits_after_reports"] = self.store.write_transactions
        self.reported.set()
        if self.end == "hang":
            await anyio.sleep_forever()
        if self.end == "failed":
            return ExecutionOutcome(status="failed", reason="told to fail")
        return ExecutionOutcome(status="completed", model="m", summary="done")

    async def aclose(self) -> None:
        pass


def _types(events: list[Any], batch_id: str) -> list[str]:
    out = []
    for e in events:
        if e.batch_id != batch_id:
            continue
        out.append(f"task.{e.data['to']}" if e.type == "task.state_changed" else e.type)
    return out


async def test_dispatch_attempt_and_prompt_are_one_commit_before_the_backend(
        harness: Any) -> None:
    plan = make_plan({"A": ([], 30)})
    async with harness(workers=1) as h:
        executor = LookingExecutor(h.store, "completed")
        h.runs.executor = executor
        at_dispatch: list[int] = []  # the commits counted when batch.dispatched is published
        h.bus.add_listener(lambda e: at_dispatch.append(h.store.write_transactions)
                           if e.type == "batch.dispatched" else None)
        run_id = await h.submit(plan, workers=1)
        assert await h.wait_run(run_id) == "succeeded"
    seen = executor.at_start
    # When the backend starts, the batch is running with its attempt (in the worktree the
    # job names) and the prompt it was built with, all stored.
    assert seen["batch"].state == "running" and seen["batch"].attempts == 1
    (attempt,) = seen["attempts"]
    assert attempt.number == 1 and attempt.outcome is None and attempt.worktree
    assert seen["task"].state == "running" and seen["task"].attempts == 1
    assert seen["task"].prompt and "task of A" in seen["task"].prompt
    # All of it came with batch.dispatched: no commit between that one and the backend.
    assert at_dispatch == [seen["commits"]]
    # The reports wait for the batch's next write: the backend made no commit for them.
    assert seen["commits_after_reports"] == seen["commits"]
    batch = f"{run_id}:A"
    types = _types(h.events, batch)
    # Stored before the tasks go verifying, in the order they happened.
    assert types.index("agent.text") < types.index("file.created") < types.index(
        "task.verifying")
    start = types.index("batch.dispatched")
    assert types[start:start + 2] == ["batch.dispatched", "task.running"]


async def test_reports_of_a_failing_backend_are_kept(harness: Any) -> None:
    plan = make_plan({"A": ([], 30)})
    async with harness(workers=1) as h:
        h.runs.executor = LookingExecutor(h.store, "failed")
        run_id = await h.submit(plan, workers=1)
        assert await h.wait_run(run_id) == "failed"
    types = _types(h.events, f"{run_id}:A")
    assert types.index("agent.text") < types.index("file.created") < types.index(
        "batch.failed")
    (text,) = [e for e in h.events if e.type == "agent.text"]
    assert text.data["text"] == "Writing the module."


async def test_reports_of_a_cancelled_batch_are_kept(harness: Any) -> None:
    plan = make_plan({"A": ([], 30)})
    async with harness(workers=1) as h:
        executor = LookingExecutor(h.store, "hang")
        h.runs.executor = executor
        run_id = await h.submit(plan, workers=1)
        with anyio.fail_after(10):
            await executor.reported.wait()
        await h.runs.cancel(run_id)
        assert await h.wait_run(run_id) == "cancelled"
        stored = await h.store.list_events(run_id=run_id)
    types = _types(stored, f"{run_id}:A")
    # Stored once, in order, before the batch's end.
    assert types.count("agent.text") == types.count("file.created") == 1
    assert types.index("agent.text") < types.index("file.created") < types.index(
        "batch.cancelled" if "batch.cancelled" in types else "task.cancelled")


async def test_a_flood_of_file_events_waits_in_bounded_batches(tmp_path: Path) -> None:
    """A hostile model's tools can touch any number of files: the waiting events are stored
    a bounded batch at a time (memory stays bounded), all of them, in order."""

    async def no_budget(run_id: str, spent_usd: float, budget_usd: float) -> None:
        raise AssertionError("no budget here")

    store = await Store.open(tmp_path / "state.db")
    try:
        await create_run(store)
        attempt = await store.start_attempt(BATCH_ID, worktree=str(tmp_path), model=None)
        ctx = BatchContext(store, active_run(tmp_path / "scratch"), BATCH_ID, attempt.id,
                           no_budget)
        before = store.write_transactions
        count = 3 * MAX_PENDING_EVENTS + 7
        for i in range(count):
            await ctx.emit("file.created", {"path": f"junk/{i}.txt"})
        assert store.write_transactions - before == 3  # one per full batch of waiting ones
        await ctx.emit("tool.result", {"tool": "bash", "is_error": False, "output": ""})
        assert store.write_transactions - before == 4  # the rest with the next event
        stored = await store.list_events(run_id=RUN_ID, limit=10_000)
    finally:
        await store.close()
    paths = [e.data["path"] for e in stored if e.type == "file.created"]
    assert paths == [f"junk/{i}.txt" for i in range(count)]
    assert stored[-1].type == "tool.result"
