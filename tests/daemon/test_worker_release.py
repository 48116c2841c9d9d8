"""A verified batch gives its worker back while it waits for its merge (the scheduler alone).

The batches here are driven by gates the test opens: which batch runs when, and how many
workers are taken, are observed exactly, without timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

from buildrunnerd.daemon._scheduler import (
    BatchSpec,
    RunGraph,
    RunSlot,
    Scheduler,
    WorkerLease,
)


class Batches:
    """What each dispatched batch does: run (until ``agent`` is opened), give its worker
    back, wait for its merge (``merge``), optionally run again (``rerun``)."""

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        self.started: list[str] = []
        self.agent: dict[str, anyio.Event] = {}
        self.merge: dict[str, anyio.Event] = {}
        self.rerun: set[str] = set()
        self.released: dict[str, bool] = {}
        self.reclaimed: list[str] = []

    async def execute(self, slot: RunSlot, batch_id: str) -> None:
        assert self.scheduler is not None
        lease = WorkerLease(self.scheduler, slot, batch_id)
        for event in (self.agent, self.merge):
            event.setdefault(batch_id, anyio.Event())
        self.started.append(batch_id)
        await self.agent[batch_id].wait()
        self.released[batch_id] = lease.release()
        await self.merge[batch_id].wait()
        if batch_id in self.rerun:
            self.rerun.discard(batch_id)
            await lease.reclaim()  # the merge conflicted: the agent runs again
            self.reclaimed.append(batch_id)
            self.agent[batch_id] = anyio.Event()
            await self.agent[batch_id].wait()
        slot.graph.succeed(batch_id)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Let the other tasks run until ``predicate()`` holds (the scheduler's own
        bookkeeping after a batch returns included)."""
        with anyio.fail_after(10):
            while not predicate():
                await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def scheduling(names: str, workers: int, deps: dict[str, tuple[str, ...]] | None = None,
                     priorities: dict[str, int] | None = None,
                     ) -> AsyncIterator[tuple[Batches, Scheduler, RunSlot]]:
    batches = Batches()
    scheduler = Scheduler(workers, batches.execute)
    batches.scheduler = scheduler
    # Earlier names first: A before B before C.
    graph = RunGraph(BatchSpec(n, (deps or {}).get(n, ()), (priorities or {}).get(n, 100 - i))
                     for i, n in enumerate(names))
    slot = RunSlot("r", graph, workers=workers)
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        scheduler.add(slot)
        yield batches, scheduler, slot
        tg.cancel_scope.cancel()


async def test_the_next_batch_starts_while_a_verified_one_waits_for_its_merge() -> None:
    async with scheduling("ABC", workers=1) as (b, scheduler, slot):
        await b.until(lambda: b.started == ["A"])
        b.agent["A"].set()
        # A gave its worker back: B runs while A still waits for its merge.
        await b.until(lambda: b.started == ["A", "B"])
        assert b.released["A"] is True
        assert scheduler.running == 1 and scheduler.in_flight == 2
        assert slot.merging == {"A"}
        b.merge["A"].set()
        await b.until(lambda: scheduler.in_flight == 1)
        assert b.started == ["A", "B"]  # A's return freed no worker: B still holds the one


async def test_at_most_workers_batches_of_a_run_wait_for_their_merge() -> None:
    async with scheduling("ABC", workers=1) as (b, scheduler, slot):
        await b.until(lambda: b.started == ["A"])
        b.agent["A"].set()
        await b.until(lambda: b.started == ["A", "B"])
        b.agent["B"].set()
        # The run already has one batch waiting to merge: B keeps its worker, C waits.
        await b.until(lambda: "B" in b.released)
        assert b.released["B"] is False
        assert slot.merging == {"A"} and scheduler.running == 1
        assert b.started == ["A", "B"]
        b.merge["A"].set()
        await b.until(lambda: scheduler.in_flight == 1)
        assert b.started == ["A", "B"]
        b.merge["B"].set()
        await b.until(lambda: b.started == ["A", "B", "C"])


async def test_a_batch_that_runs_again_takes_a_worker_first() -> None:
    async with scheduling("ABC", workers=1) as (b, scheduler, slot):
        b.rerun.add("A")
        await b.until(lambda: b.started == ["A"])
        b.agent["A"].set()
        await b.until(lambda: b.started == ["A", "B"])
        b.merge["A"].set()  # ...and it conflicted: A must run its agent again
        await b.until(lambda: slot.reclaiming == 1)
        assert b.reclaimed == []  # B holds the only worker
        b.agent["B"].set()
        await b.until(lambda: "B" in b.released)
        assert b.released["B"] is False  # A still counts as waiting to merge
        b.merge["B"].set()
        # B's worker goes to A, not to the ready C.
        await b.until(lambda: b.reclaimed == ["A"])
        assert scheduler.running == 1 and slot.merging == set() and slot.reclaiming == 0
        assert b.started == ["A", "B"]
        b.agent["A"].set()
        await b.until(lambda: b.started == ["A", "B", "C"])


async def test_a_batch_whose_merge_unlocks_the_critical_path_keeps_its_worker() -> None:
    """A's merge makes D ready (priority 100), above anything ready now (B: 20): A keeps
    its worker, and D gets it right after the merge, before B."""
    async with scheduling("ABD", workers=1, deps={"D": ("A",)},
                          priorities={"A": 50, "B": 20, "D": 100}) as (b, scheduler, slot):
        await b.until(lambda: b.started == ["A"])
        b.agent["A"].set()
        await b.until(lambda: "A" in b.released)
        assert b.released["A"] is False and slot.merging == set()
        b.merge["A"].set()
        await b.until(lambda: b.started == ["A", "D"])
