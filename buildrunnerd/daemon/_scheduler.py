"""The scheduler: which batch runs next, on which free worker.

Dynamic, not level-by-level: a batch becomes *ready* the moment every batch it depends on has
succeeded, and a ready batch is dispatched as soon as a worker is free, highest
``priority_minutes`` (longest remaining path) first. Two limits hold at all times: the
daemon-wide number of workers and each run's own ``workers``.

Two layers, so the policy can be driven with a virtual clock (``bench/sched_bench.py``):

- :class:`RunGraph` is the pure state of one run's batch DAG (no I/O, no async): ready heap,
  success/failure propagation, transitive blocking, retry, cancel.
- :class:`Scheduler` is the async dispatcher over every active run: it owns the worker slots
  and the cancel scope of each in-flight batch, and calls back into the run manager to execute
  a batch. It never touches the store itself.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
import anyio.abc

__all__ = ["BatchSpec", "RunGraph", "RunSlot", "Scheduler", "WorkerLease", "pick_next"]

_TERMINAL = frozenset({"succeeded", "cancelled"})
_ALL_STATES = ("pending", "ready", "running", "succeeded", "failed", "blocked", "cancelled")


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """What the scheduler needs to know of one batch."""

    id: str
    depends_on: tuple[str, ...]
    priority_minutes: int
    state: str = "pending"  # pending|running|succeeded|failed|cancelled (store batch states)


@dataclass(slots=True)
class _Node:
    id: str
    deps: tuple[str, ...]
    priority: int
    state: str  # pending|ready|running|succeeded|failed|blocked|cancelled
    dependents: list[str] = field(default_factory=list)
    unmet: int = 0  # deps not yet succeeded
    blocked_by: set[str] = field(default_factory=set)  # failed batch ids upstream


class RunGraph:
    """The batch DAG of one run and the state of each batch, for dispatch decisions.

    States: ``pending`` (waiting for dependencies), ``ready`` (in the heap), ``running``,
    ``succeeded``, ``failed``, ``blocked`` (an upstream batch failed), ``cancelled``.
    Built from the stored batch states, so it is also what recovery rebuilds after a restart
    (a batch stored as running/verifying comes back as ready: its attempt was interrupted).
    """

    def __init__(self, batches: Iterable[BatchSpec]) -> None:
        self._nodes: dict[str, _Node] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self._counts: dict[str, int] = dict.fromkeys(_ALL_STATES, 0)
        specs = list(batches)
        for spec in specs:
            state = spec.state
            if state in ("running", "verifying"):
                state = "pending"  # interrupted in flight: back to the queue
            elif state not in ("succeeded", "failed", "cancelled"):
                state = "pending"
            self._nodes[spec.id] = _Node(spec.id, spec.depends_on, spec.priority_minutes, state)
            self._counts[state] += 1
        for node in self._nodes.values():
            for dep in node.deps:
                if dep not in self._nodes:
                    raise ValueError(f"batch {node.id} depends on unknown batch {dep}")
                self._nodes[dep].dependents.append(node.id)
        for node in self._nodes.values():
            node.unmet = sum(1 for d in node.deps if self._nodes[d].state != "succeeded")
        for node in self._nodes.values():
            if node.state == "failed":
                self._block_downstream(node.id)
        for node in self._nodes.values():
            if node.state == "pending" and node.unmet == 0:
                self._make_ready(node)

    # --- queries -------------------------------------------------------------------------
    def state(self, batch_id: str) -> str:
        """The scheduler state of ``batch_id``."""
        return self._nodes[batch_id].state

    def blocked_by(self, batch_id: str) -> set[str]:
        """The failed upstream batches that block ``batch_id`` (empty unless blocked)."""
        return set(self._nodes[batch_id].blocked_by)

    def states(self) -> dict[str, str]:
        """Every batch's scheduler state."""
        return {n.id: n.state for n in self._nodes.values()}

    def peek_priority(self) -> int | None:
        """The priority of the best ready batch, or None when nothing is ready."""
        while self._heap:
            _, _, batch_id = self._heap[0]
            if self._nodes[batch_id].state == "ready":
                return -self._heap[0][0]
            heapq.heappop(self._heap)  # stale entry (cancelled/retried meanwhile)
        return None

    @property
    def has_ready(self) -> bool:
        return self.peek_priority() is not None

    @property
    def running(self) -> int:
        return self._counts["running"]

    def count(self, state: str) -> int:
        """How many batches are in ``state`` (O(1): counts are kept on every transition)."""
        return self._counts[state]

    @property
    def finished(self) -> bool:
        """Nothing is ready, pending or running: the run cannot make progress on its own."""
        return not (self._counts["pending"] or self._counts["ready"] or self._counts["running"])

    @property
    def all_succeeded(self) -> bool:
        return self._counts["succeeded"] == len(self._nodes)

    def would_ready(self, batch_id: str) -> list[str]:
        """The batches :meth:`succeed` would make ready, without changing anything (the run
        manager writes the store first, then moves the graph)."""
        return [d for d in self._nodes[batch_id].dependents
                if self._nodes[d].unmet == 1 and self._nodes[d].state == "pending"]

    def priority(self, batch_id: str) -> int:
        """``batch_id``'s dispatch priority (its ``priority_minutes``)."""
        return self._nodes[batch_id].priority

    def would_block(self, batch_id: str) -> list[str]:
        """The batches :meth:`fail` would newly block, without changing anything."""
        return [d for d in self._downstream(batch_id)
                if self._nodes[d].state not in ("succeeded", "cancelled", "blocked")]

    # --- transitions ---------------------------------------------------------------------
    def pop_ready(self) -> str | None:
        """Take the best ready batch and mark it running."""
        if self.peek_priority() is None:
            return None
        _, _, batch_id = heapq.heappop(self._heap)
        self._set(self._nodes[batch_id], "running")
        return batch_id

    def succeed(self, batch_id: str) -> list[str]:
        """Mark a running batch succeeded; return the batches that became ready."""
        node = self._nodes[batch_id]
        self._set(node, "succeeded")
        newly_ready: list[str] = []
        for dep_id in node.dependents:
            dep = self._nodes[dep_id]
            dep.unmet -= 1
            if dep.unmet == 0 and dep.state == "pending":
                self._make_ready(dep)
                newly_ready.append(dep_id)
        return newly_ready

    def fail(self, batch_id: str) -> list[str]:
        """Mark a batch failed; return every batch it newly blocks (transitively)."""
        self._set(self._nodes[batch_id], "failed")
        return self._block_downstream(batch_id)

    def requeue(self, batch_id: str) -> None:
        """An interrupted running batch (shutdown, budget pause) goes back to the ready heap."""
        node = self._nodes[batch_id]
        if node.state == "running":
            self._set(node, "pending")
            if node.unmet == 0 and not node.blocked_by:
                self._make_ready(node)

    def retry(self, batch_id: str) -> list[str]:
        """Re-queue a failed batch; return the batches it unblocks (back to pending)."""
        node = self._nodes[batch_id]
        if node.state != "failed":
            raise ValueError(f"batch {batch_id} has state {node.state}; only a failed batch "
                             "can be retried")
        self._set(node, "pending")
        if node.unmet == 0:
            self._make_ready(node)
        unblocked: list[str] = []
        for down_id in self._downstream(batch_id):
            down = self._nodes[down_id]
            down.blocked_by.discard(batch_id)
            if down.state == "blocked" and not down.blocked_by:
                self._set(down, "pending")
                unblocked.append(down_id)
                if down.unmet == 0:
                    self._make_ready(down)
        return unblocked

    def cancel_all(self) -> list[str]:
        """Mark every batch that has not finished cancelled; return them (running included)."""
        cancelled = [n.id for n in self._nodes.values() if n.state not in _TERMINAL]
        for batch_id in cancelled:
            self._set(self._nodes[batch_id], "cancelled")
        self._heap.clear()
        return cancelled

    # --- internals -----------------------------------------------------------------------
    def _set(self, node: _Node, state: str) -> None:
        self._counts[node.state] -= 1
        self._counts[state] += 1
        node.state = state

    def _make_ready(self, node: _Node) -> None:
        self._set(node, "ready")
        heapq.heappush(self._heap, (-node.priority, next(self._seq), node.id))

    def _downstream(self, batch_id: str) -> list[str]:
        seen: set[str] = set()
        order: list[str] = []
        stack = list(self._nodes[batch_id].dependents)
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            order.append(current)
            stack.extend(self._nodes[current].dependents)
        return order

    def _block_downstream(self, failed_id: str) -> list[str]:
        newly: list[str] = []
        for down_id in self._downstream(failed_id):
            down = self._nodes[down_id]
            if down.state in ("succeeded", "cancelled"):
                continue
            down.blocked_by.add(failed_id)
            if down.state != "blocked":
                self._set(down, "blocked")
                newly.append(down_id)
        return newly


@dataclass(slots=True)
class RunSlot:
    """One active run as the dispatcher sees it.

    ``in_flight`` holds every dispatched batch that has not returned (its cancel scope);
    ``merging`` those of them that gave their worker back (verified, waiting for or in their
    merge: :meth:`Scheduler.release_worker`). A run's workers are ``in_flight - merging``."""

    run_id: str
    graph: RunGraph
    workers: int  # this run's worker limit
    paused: bool = False
    in_flight: dict[str, anyio.CancelScope] = field(default_factory=dict)
    merging: set[str] = field(default_factory=set)
    reclaiming: int = 0  # of ``merging``, those waiting to take a worker again

    @property
    def working(self) -> int:
        """How many of this run's workers are taken."""
        return len(self.in_flight) - len(self.merging)


def pick_next(slots: Iterable[RunSlot]) -> RunSlot | None:
    """The run whose best ready batch has the highest priority among runs that may dispatch.

    Ties go to the run listed first (submission order), so an earlier run is never starved by
    a later one of equal priority.
    """
    best: RunSlot | None = None
    best_priority = -1
    for slot in slots:
        if slot.paused or slot.working + slot.reclaiming >= slot.workers:
            continue
        priority = slot.graph.peek_priority()
        if priority is not None and priority > best_priority:
            best, best_priority = slot, priority
    return best


ExecuteBatch = Callable[[RunSlot, str], Awaitable[None]]


class WorkerLease:
    """One in-flight batch's worker, for its lifecycle: :meth:`release` once it only waits
    for its merge, :meth:`reclaim` before it runs the agent again."""

    def __init__(self, scheduler: Scheduler, slot: RunSlot, batch_id: str) -> None:
        self._scheduler = scheduler
        self._slot = slot
        self._batch_id = batch_id

    def release(self) -> bool:
        """Give the worker to the next ready batch (False: the run's bound is reached, the
        batch keeps it)."""
        return self._scheduler.release_worker(self._slot, self._batch_id)

    async def reclaim(self) -> None:
        """Hold a worker again (waits for one to come free; at once if never released)."""
        await self._scheduler.reclaim_worker(self._slot, self._batch_id)


class Scheduler:
    """Dispatches ready batches of every active run onto at most ``workers`` workers.

    ``execute(slot, batch_id)`` is the run manager's batch lifecycle; it runs inside the batch's
    own cancel scope (``slot.in_flight[batch_id]``) and must leave ``slot.graph`` updated
    (succeed/fail/requeue) before it returns. The scheduler wakes on :meth:`wake` (a new run, a
    finished batch, resume, retry) and never polls.

    A worker is the agent's part of a batch. A verified batch that only waits for its merge
    (one at a time per run) gives its worker back (:meth:`release_worker`), so the next ready
    batch starts meanwhile; at most ``workers`` batches of a run wait so. A batch that must run
    again after all (its merge conflicted) takes a worker again first (:meth:`reclaim_worker`).
    """

    def __init__(self, workers: int, execute: ExecuteBatch) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._execute = execute
        self._slots: dict[str, RunSlot] = {}
        self._running = 0  # batches holding a worker
        self._reclaiming = 0  # batches waiting to hold one again: served before new ones
        self._in_flight = 0  # every dispatched batch that has not returned
        self._wakeup = anyio.Event()
        self._freed = anyio.Event()  # a worker came free (for reclaim_worker)
        self._stopping = False
        self._idle = anyio.Event()
        self._idle.set()

    # --- control from the run manager ---------------------------------------------------
    def add(self, slot: RunSlot) -> None:
        """Start dispatching a run's ready batches."""
        self._slots[slot.run_id] = slot
        self.wake()

    def remove(self, run_id: str) -> RunSlot | None:
        """Stop dispatching a run (it finished or was cancelled)."""
        return self._slots.pop(run_id, None)

    def get(self, run_id: str) -> RunSlot | None:
        return self._slots.get(run_id)

    def wake(self) -> None:
        """Something changed (a batch finished, a run resumed): look for work."""
        self._wakeup.set()

    def stop_dispatching(self) -> None:
        """Shutdown: dispatch nothing new; in-flight batches go on until cancelled."""
        self._stopping = True
        self.wake()

    @property
    def in_flight(self) -> int:
        """Dispatched batches that have not returned (those waiting to merge included)."""
        return self._in_flight

    @property
    def running(self) -> int:
        """Batches holding a worker (at most :attr:`workers`)."""
        return self._running

    def release_worker(self, slot: RunSlot, batch_id: str) -> bool:
        """``batch_id`` (in flight) needs its worker no more: it only waits for its merge. The
        worker goes to the next ready batch. False (nothing changed) when the run already has
        ``workers`` batches waiting so, which bounds them (and their worktrees), or when the
        merge will make ready a batch of higher priority than any ready now: that batch
        (on the critical path) gets the worker right after the merge instead."""
        if (batch_id not in slot.in_flight or batch_id in slot.merging
                or len(slot.merging) >= slot.workers):
            return False
        graph = slot.graph
        unlocked = max((graph.priority(b) for b in graph.would_ready(batch_id)), default=None)
        if unlocked is not None:
            ready = [p for s in self._slots.values() if not s.paused
                     and (p := s.graph.peek_priority()) is not None]
            if not ready or unlocked > max(ready):
                return False
        slot.merging.add(batch_id)
        self._running -= 1
        self._worker_freed()
        return True

    async def reclaim_worker(self, slot: RunSlot, batch_id: str) -> None:
        """Take a worker again for ``batch_id`` after :meth:`release_worker` (it must run
        again): waits until the daemon and the run each have one free. No new batch is
        dispatched onto a worker a reclaiming batch waits for. No-op if never released."""
        if batch_id not in slot.merging:
            return
        slot.reclaiming += 1
        self._reclaiming += 1
        try:
            while not (self._running < self.workers and slot.working < slot.workers):
                await self._freed.wait()
            slot.merging.discard(batch_id)
            self._running += 1
        finally:
            slot.reclaiming -= 1
            self._reclaiming -= 1

    async def wait_idle(self) -> None:
        """Return once no batch is in flight."""
        await self._idle.wait()

    def cancel_in_flight(self) -> None:
        """Cancel every in-flight batch (shutdown after the grace period)."""
        for slot in self._slots.values():
            for scope in slot.in_flight.values():
                scope.cancel()

    # --- the loop ------------------------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Dispatch until cancelled. Batches run as children of this task's task group, so
        cancelling the scheduler cancels them too (their lifecycle records the interruption)."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                while not self._stopping and self._running + self._reclaiming < self.workers:
                    slot = pick_next(self._slots.values())
                    if slot is None:
                        break
                    batch_id = slot.graph.pop_ready()
                    if batch_id is None:  # pragma: no cover - pick_next saw one ready
                        break
                    scope = anyio.CancelScope()
                    slot.in_flight[batch_id] = scope
                    self._running += 1
                    self._in_flight += 1
                    self._idle = anyio.Event() if self._idle.is_set() else self._idle
                    tg.start_soon(self._run_one, slot, batch_id, scope)

    async def _run_one(self, slot: RunSlot, batch_id: str, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await self._execute(slot, batch_id)
        finally:
            slot.in_flight.pop(batch_id, None)
            if batch_id in slot.merging:
                slot.merging.discard(batch_id)  # its worker was given back already
            else:
                self._running -= 1
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
            self._worker_freed()

    def _worker_freed(self) -> None:
        self._freed.set()
        self._freed = anyio.Event()
        self.wake()
