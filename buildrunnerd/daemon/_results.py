"""Executing batches and applying their results, to the end of a run.

The scheduler calls :meth:`BatchResults.execute` for each dispatched batch: it runs the batch's
lifecycle (:mod:`._batch`), then writes the result in ONE transaction (the batch, its tasks,
the tasks it makes ready or blocks) before the in-memory graph moves, so a failed write leaves
the graph where the store is. A database failure pauses the run (the result is kept to be
recorded, not paid for again); the last result of a run writes the run's end.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
import msgspec
import structlog

from buildrunnerd.daemon._active import ActiveRun, BatchResult
from buildrunnerd.daemon._batch import run_batch_lifecycle
from buildrunnerd.daemon._scheduler import RunGraph, RunSlot, WorkerLease
from buildrunnerd.errors import BuildRunnerError, StoreError
from buildrunnerd.logging import bind_ids
from buildrunnerd.store._records import TaskChange

if TYPE_CHECKING:
    from buildrunnerd.daemon._runs import RunManager
    from buildrunnerd.workspace import HeadCheck

__all__ = ["BatchResults"]

_log = structlog.get_logger("buildrunnerd.runs")

_STORE_FAILURE_PAUSE_S = 10.0  # writing the pause itself, when the database just failed


class BatchResults:
    """The batches of a :class:`RunManager`'s runs: executed, recorded, and the runs ended."""

    def __init__(self, runs: RunManager) -> None:
        self._runs = runs

    async def execute(self, slot: RunSlot, batch_id: str) -> None:
        """The scheduler's callback: one dispatched batch, from lifecycle to stored result."""
        active = self._runs.active.get(slot.run_id)
        if active is None:
            return
        plan_batch = active.batches_by_plan_id.get(ActiveRun.plan_id(batch_id))
        # Global ids, comma-joined: what `brctl task` takes, and grep-able in the log.
        task_ids = ",".join(active.gid(t) for t in plan_batch.task_ids) if plan_batch else None
        # Every log line of this batch (ours, the agent's, git's, the failure paths') carries
        # its ids.
        with bind_ids(run_id=slot.run_id, batch_id=batch_id, task_id=task_ids):
            await self._execute_bound(active, slot, batch_id)

    async def _execute_bound(self, active: ActiveRun, slot: RunSlot, batch_id: str) -> None:
        try:
            result = active.unrecorded.pop(batch_id, None)
            if result is None:
                _log.info("batch.started")
                result = await self._run_lifecycle(
                    active, batch_id, WorkerLease(self._runs.scheduler, slot, batch_id))
                _log.info("batch.finished", status=result.status, reason=result.reason)
            else:  # done before the database failed: record it, do not run it again
                _log.info("batch.recording_again", status=result.status)
            if active.cancelling:
                if result.attempt_end is not None:
                    end = result.attempt_end
                    await self._runs.store.finish_attempt(
                        end.attempt_id, outcome=end.outcome, reason=end.reason,
                        verification=end.verification, commit=end.commit)
                return
            try:
                await self._apply_result(active, slot, batch_id, result)
            except StoreError:
                if slot.graph.state(batch_id) == "running":
                    # Nothing of the result was written (one transaction): keep it for the
                    # next dispatch rather than paying for the batch again.
                    active.unrecorded[batch_id] = result
                raise
        except anyio.get_cancelled_exc_class():
            if not active.cancelling:
                slot.graph.requeue(batch_id)  # shutdown: recovery re-queues it in the store
            raise
        except StoreError as exc:
            await self._pause_on_store_error(slot, batch_id, exc)

    async def _run_lifecycle(self, active: ActiveRun, batch_id: str,
                             worker: WorkerLease) -> BatchResult:
        """The batch's lifecycle; a bug in it fails the batch (StoreError and cancellation
        are for the caller: they pause / interrupt the run instead)."""
        try:
            return await run_batch_lifecycle(
                store=self._runs.store, executor=self._runs.executor,
                config=self._runs.config, run=active, batch_id=batch_id,
                on_budget_exceeded=self._runs.budget_exceeded,
                on_usage_limited=self._runs.usage_limited,
                confinement=self._runs.confinement, worker=worker,
            )
        except StoreError:
            raise
        except Exception as exc:
            _log.exception("batch.crashed", batch_id=batch_id)
            return BatchResult("failed", reason=f"{type(exc).__name__}: {exc}")

    async def _pause_on_store_error(self, slot: RunSlot, batch_id: str, exc: StoreError) -> None:
        """The database failed while a batch ran or was recorded (full disk, locked file):
        the batch goes back to the queue and the run pauses with the reason. Only this run
        stops; the daemon goes on serving. If the pause itself cannot be written, the run is
        still paused in memory and ``resume`` accepts it (see :meth:`resume`)."""
        _log.error("batch.store_failed", batch_id=batch_id, error=str(exc))
        slot.graph.requeue(batch_id)
        slot.paused = True
        reason = (f"the database failed: {exc}; free space / check the disk, then "
                  f"`brctl resume {slot.run_id}`")
        with anyio.move_on_after(_STORE_FAILURE_PAUSE_S):
            try:
                async with self._runs.lock:
                    record = await self._runs.store.get_run(slot.run_id)
                    if record.state in ("queued", "running"):
                        await self._runs.store.set_run_state(
                            slot.run_id, "paused", event_type="run.paused", reason=reason)
            except BuildRunnerError as again:
                _log.error("run.pause_failed", run_id=slot.run_id, error=str(again),
                           hint=f"the run is paused in memory; `brctl resume {slot.run_id}` "
                                "once the database works again")

    async def _apply_result(
        self, active: ActiveRun, slot: RunSlot, batch_id: str, result: BatchResult
    ) -> None:
        """Write a batch's result, then (only once it is stored) move the graph: a write that
        fails leaves the graph where the store is, with the batch still running."""
        graph = slot.graph
        plan_batch = active.batches_by_plan_id[ActiveRun.plan_id(batch_id)]
        task_gids = [active.gid(t) for t in plan_batch.task_ids]
        if result.status == "succeeded":
            newly_ready = graph.would_ready(batch_id)
            changes = [TaskChange(t, "succeeded", model=result.model) for t in task_gids]
            for ready_id in newly_ready:
                ready_batch = active.batches_by_plan_id[ActiveRun.plan_id(ready_id)]
                changes += [TaskChange(active.gid(t), "ready") for t in ready_batch.task_ids]
            await self._runs.store.transition(
                run=None,
                batch=(batch_id, "succeeded", "batch.succeeded",
                       {"commit": result.commit, "model": result.model}, result.model),
                tasks=changes, events=[], attempt=result.attempt_end,
            )
            graph.succeed(batch_id)
            active.summaries.append(result.summary or "; ".join(
                active.tasks_by_plan_id[t].title for t in plan_batch.task_ids))
        elif result.status == "failed":
            newly_blocked = graph.would_block(batch_id)
            reason = result.reason or "failed"
            changes = [TaskChange(t, "failed", reason=reason) for t in task_gids]
            why = f"blocked: depends on failed task {', '.join(plan_batch.task_ids)}"
            for blocked_id in newly_blocked:
                blocked = active.batches_by_plan_id[ActiveRun.plan_id(blocked_id)]
                changes += [TaskChange(active.gid(t), "blocked", reason=why)
                            for t in blocked.task_ids]
            await self._runs.store.transition(
                run=None,
                batch=(batch_id, "failed", "batch.failed", {"reason": reason}),
                tasks=changes, events=[],
            )
            graph.fail(batch_id)
        else:  # interrupted (budget, backend cancelled): back to the queue
            await self._runs.store.transition(
                run=None, batch=(batch_id, "pending", "batch.requeued",
                                 {"reason": result.reason}),
                tasks=[TaskChange(t, "ready", reason=result.reason) for t in task_gids],
                events=[],
            )
            graph.requeue(batch_id)
        if graph.finished:
            # The final check runs the test suite: outside the run manager's lock, which every
            # run's pause/cancel/resume takes.
            final = await self._final_verification(active, graph)
            async with self._runs.lock:
                if self._runs.active.get(active.id) is active and graph.finished:
                    await self.finish_run(active, graph, final=final, checked=True)

    async def _final_verification(
        self, active: ActiveRun, graph: RunGraph
    ) -> HeadCheck | None:
        """Verify the run's results before the run succeeds. None when there is nothing to
        verify (a scratch run, a run that failed anyway, ``verify.branch_check = false``)."""
        if not graph.all_succeeded:
            return None
        return await active.workspace.verify_head(self._runs.config.verify,
                                                  self._runs.confinement)

    async def finish_run(self, active: ActiveRun, graph: RunGraph, *,
                         final: HeadCheck | None = None, checked: bool = False) -> None:
        """Write a run's end (succeeded after ``run.verified``, or failed with the counts or
        the final verification's reason) and stop dispatching it. ``checked``: ``final`` is the
        final verification already made (otherwise it is made here: a run finished at
        recovery or resume)."""
        if not checked:
            final = await self._final_verification(active, graph)
        # Out of the active set before the final event (the STATUS line counts active runs),
        # but back in it if the database fails: the run then stays active (paused by the
        # caller), and `resume` finishes it (see :meth:`resume`).
        self._runs.active.pop(active.id, None)
        # Its worktrees go before the final event: whoever sees it sees them gone.
        await active.workspace.close()
        try:
            await self._write_final_state(active, graph, final)
        except BaseException:
            self._runs.active[active.id] = active
            raise
        self._runs.scheduler.remove(active.id)

    async def _write_final_state(self, active: ActiveRun, graph: RunGraph,
                                 final: HeadCheck | None = None) -> None:
        if final is not None and final.failed is not None:
            await self._runs.store.set_run_state(active.id, "failed", event_type="run.failed",
                                                 reason=final.failed, data={"verified": False})
            _log.info("run.failed", run_id=active.id, reason=final.failed)
            return
        if final is not None and final.verified is not None:
            await self._runs.store.append_event(active.id, "run.verified",
                                                msgspec.to_builtins(final.verified))
        if graph.all_succeeded:
            await self._runs.store.set_run_state(
                active.id, "succeeded", event_type="run.succeeded",
                data={"branch": active.branch, "batches": len(graph.states())},
            )
            _log.info("run.succeeded", run_id=active.id, branch=active.branch)
        else:
            counts = Counter(graph.states().values())
            reason = (f"{counts.get('failed', 0)} batch(es) failed, "
                      f"{counts.get('blocked', 0)} blocked; see `brctl tasks` and retry the "
                      "failed tasks")
            await self._runs.store.set_run_state(active.id, "failed", event_type="run.failed",
                                           reason=reason, data=dict(counts))
            _log.info("run.failed", run_id=active.id, reason=reason)

