"""The run manager: the run state machine (start, recover, pause, resume, cancel, retry) and
the background work of runs. Submit and intake are in :mod:`._intake`, executing batches and
applying their results (to the end of a run) in :mod:`._results`.

It owns the in-memory view of every active run (:class:`~._active.ActiveRun` + the scheduler's
:class:`~._scheduler.RunSlot`) and keeps it in step with the store: every decision is written
(state + event, one transaction) before the scheduler acts on it, so a crash at any point
leaves a state that recovery can continue from.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from buildrunnerd import protocol
from buildrunnerd.daemon._active import ActiveRun
from buildrunnerd.daemon._intake import Intake, SubmitRequest, plan_spec
from buildrunnerd.daemon._results import BatchResults
from buildrunnerd.daemon._scheduler import BatchSpec, RunGraph, RunSlot, Scheduler
from buildrunnerd.errors import BuildRunnerError, InvalidStateError
from buildrunnerd.executor import Executor
from buildrunnerd.plan._model import Plan
from buildrunnerd.sandbox import Confinement
from buildrunnerd.store._records import BatchRecord, RunChange, RunRecord, TaskChange, TaskRecord

if TYPE_CHECKING:
    from buildrunnerd.config import Config
    from buildrunnerd.store import Store
    from buildrunnerd.workspace import Workspace

__all__ = ["RunManager", "tasks_by_state"]

_log = structlog.get_logger("buildrunnerd.runs")

_ACTIVE_STATES = ("queued", "running", "paused")


class RunManager:
    """Every run the daemon executes. Methods raise :mod:`buildrunnerd.errors` on bad input."""

    def __init__(
        self,
        *,
        store: Store,
        executor: Executor,
        config: Config,
        home: Path,
        workers: int,
        confinement: Confinement | None = None,
    ) -> None:
        self.store = store
        # How worktree content is confined; None: made per verification from the config.
        self.confinement = confinement
        self.executor = executor
        self.config = config
        self.home = home
        self.results = BatchResults(self)
        self.scheduler = Scheduler(workers, self.results.execute)
        #: The runs being executed (activated), by id.
        self.active: dict[str, ActiveRun] = {}
        self.lock = anyio.Lock()  # run-level state changes, one at a time
        self.intake = Intake(self)
        self._tg: anyio.abc.TaskGroup | None = None
        self._background: dict[str, anyio.CancelScope] = {}  # run id -> planning / starting
        # Runs paused by a usage limit -> when they resume by themselves (unix seconds).
        self._limit_resumes: dict[str, float] = {}
        self._timers_changed = anyio.Event()

    @property
    def active_runs(self) -> int:
        return len(self.active)

    # --- start-up -------------------------------------------------------------------------
    async def recover(self) -> int:
        """Continue every run that was queued, running or paused when the daemon stopped.

        In-flight attempts are marked interrupted (their checkpoint is kept for the retry) and
        their batches go back to the queue; succeeded batches are never run again. Returns the
        number of runs resumed.
        """
        resume: dict[str, int] = {}
        for attempt in await self.store.unfinished_attempts():
            await self.store.finish_attempt(
                attempt.id, outcome="interrupted", reason="the daemon stopped during the attempt"
            )
            if attempt.has_checkpoint:
                resume[attempt.batch_id] = attempt.id
        for record in await self.store.list_runs(states=("planning",)):
            # Planning is redone from the stored spec (calls already made stay recorded).
            self.spawn(record.id, functools.partial(self._replan, record.id))
        runs = await self.store.list_runs(states=_ACTIVE_STATES)
        for record in runs:
            try:
                await self._activate(record, resume=resume)
                if record.state == "paused":
                    await self._rearm_usage_limit(record.id)
                if self._sandbox_missing() and record.state != "paused":
                    # Confinement is required: the run waits (nothing lost) until the daemon
                    # restarts with a working sandbox, then `brctl resume` continues it.
                    await self.store.set_run_state(
                        record.id, "paused", event_type="run.paused",
                        reason=self._sandbox_reason())
            except BuildRunnerError as exc:
                _log.error("recover.failed", run_id=record.id, error=str(exc))
                await self.store.set_run_state(
                    record.id, "failed", event_type="run.failed",
                    reason=f"could not resume after a restart: {exc}",
                )
        if runs:
            _log.info("recover.done", runs=len(runs), interrupted_attempts=len(resume))
        return len(runs)

    async def _replan(self, run_id: str) -> None:
        record = await self.store.get_run(run_id)
        spec_text = (await self.store.get_run_spec(run_id)).spec_text
        try:
            spec, plan = await plan_spec(spec_text, record.spec_path, self.config)
        except BuildRunnerError as exc:
            await self.fail_planning(run_id, f"could not plan again after a restart: {exc}")
            return
        await self.intake.plan_in_daemon(run_id, spec, plan, spec.overview)

    async def _open_workspace(self, record: RunRecord, plan: Plan) -> Workspace:
        """The run's workspace: its run branch (re-opened; worktrees left over from before
        are removed) or, for a run without a repository, its scratch folder."""
        if record.repo is None or record.branch is None:
            from buildrunnerd.workspace import ScratchWorkspace

            return ScratchWorkspace(self.home / "runs" / record.id / "scratch")
        from buildrunnerd.workspace import GitWorkspace, RunRepo, cleanup_orphan_worktrees

        run_repo = await RunRepo.open(
            Path(record.repo), record.branch, base_commit=record.base_commit,
            timeout_s=self.config.verify.git_timeout_s,
        )
        worktree_root = self.home / "worktrees" / record.id
        # Nothing of this run is in flight yet: any worktree left under its root is an orphan.
        await cleanup_orphan_worktrees(Path(record.repo), worktree_root, keep=set())
        return GitWorkspace(
            run_repo, run_id=record.id, worktree_root=worktree_root,
            project_root=Path(record.repo), base_commit=record.base_commit,
            test_cmd=record.options.test_cmd, plan_tasks=plan.tasks, spec_path=plan.spec_path,
        )

    async def _activate(
        self, record: RunRecord, *, resume: dict[str, int] | None = None, start: bool = True,
        overview: str | None = None,
    ) -> tuple[ActiveRun, RunSlot]:
        spec = await self.store.get_run_spec(record.id)
        plan = spec.plan()
        overview = await self._overview(spec.spec_text, record) if overview is None else overview
        active = ActiveRun(
            id=record.id, plan=plan, overview=overview, branch=record.branch,
            test_cmd=record.options.test_cmd, budget_usd=record.options.budget_usd,
            workspace=await self._open_workspace(record, plan),
        )
        batches = await self.store.list_batches(record.id)
        for batch in batches:
            active.attempts[batch.id] = batch.attempts
            if resume and batch.id in resume:
                active.resume_attempts[batch.id] = resume[batch.id]
            elif batch.state in ("running", "verifying") or (
                    batch.state == "pending" and batch.attempts):
                # Stopped gracefully mid-attempt, or paused (budget, usage limit) and back in
                # the queue: that attempt is marked interrupted, and its conversation
                # checkpoint is where the next attempt resumes.
                attempts = await self.store.list_attempts(batch.id)
                if (attempts and attempts[-1].has_checkpoint
                        and attempts[-1].outcome == "interrupted"):
                    active.resume_attempts[batch.id] = attempts[-1].id
        graph = RunGraph(
            BatchSpec(b.id, tuple(b.depends_on), b.priority_minutes, b.state) for b in batches
        )
        tasks = {t.id: t for t in await self.store.list_tasks(record.id, details=False)}
        for batch in batches:
            if batch.state == "succeeded":
                active.summaries.append(
                    "; ".join(tasks[t].title for t in batch.task_ids if t in tasks)
                )
        await self._sync_store(record.id, batches, graph, tasks)
        slot = RunSlot(record.id, graph, workers=record.options.workers,
                       paused=record.state == "paused" or self._sandbox_missing())
        self.active[record.id] = active
        if start and record.state == "queued":
            await self.store.set_run_state(record.id, "running", event_type="run.started")
        if not start:
            return active, slot  # the caller (retry) changes the graph, then adds the slot
        if graph.finished and record.state != "paused":
            await self.results.finish_run(active, graph)
            return active, slot
        self.scheduler.add(slot)
        return active, slot

    def _sandbox_missing(self) -> bool:
        return self.confinement is not None and self.confinement.sandbox is None

    def _sandbox_reason(self) -> str:
        assert self.confinement is not None
        return f"paused: {self.confinement.error or 'no sandbox'}"

    def _require_sandbox(self) -> None:
        """Model work needs a working sandbox (raises SandboxUnavailableError, -32060)."""
        if self.confinement is not None:
            self.confinement.require()

    async def _overview(self, spec_text: str, record: RunRecord) -> str:
        from buildrunnerd.spec import parse_spec

        try:
            spec = await anyio.to_thread.run_sync(parse_spec, spec_text, record.spec_path)
        except BuildRunnerError:
            return ""
        overview: str = spec.overview
        return overview

    async def _sync_store(
        self, run_id: str, batches: list[BatchRecord], graph: RunGraph, tasks: dict[str, Any]
    ) -> None:
        """Write what the graph decided at activation: interrupted batches back to pending,
        tasks of ready batches ready, of blocked ones blocked."""
        states = graph.states()
        changes: list[TaskChange] = []
        for batch in batches:
            state = states[batch.id]
            if batch.state in ("running", "verifying"):
                await self.store.set_batch_state(
                    batch.id, "pending", event_type="batch.requeued",
                    data={"reason": "interrupted: the daemon stopped during the attempt"},
                )
            want = {"ready": "ready", "pending": "pending", "blocked": "blocked"}.get(state)
            if want is None:
                continue
            reason = None
            if want == "blocked":
                reason = self._blocked_reason(run_id, graph.blocked_by(batch.id), batches)
            elif batch.state in ("running", "verifying"):
                reason = "interrupted: the daemon stopped during the attempt"
            for task_id in batch.task_ids:
                task = tasks.get(task_id)
                if task is not None and task.state != want:
                    changes.append(TaskChange(task_id, want, reason=reason))
        if changes:
            await self.store.set_task_states(changes)

    @staticmethod
    def _blocked_reason(run_id: str, failed: set[str], batches: list[BatchRecord]) -> str:
        by_id = {b.id: b for b in batches}
        names = sorted(
            ActiveRun.plan_id(t) for f in failed if f in by_id for t in by_id[f].task_ids
        )
        return f"blocked: depends on failed task {', '.join(names) or '?'}"

    # --- submit (see ._intake) and background work ---------------------------------------
    async def submit(self, request: SubmitRequest) -> RunRecord:
        """Store a run of the requested spec (``queued``, or ``planning`` when a model plans
        it) and return it at once; planning and the start go on in the background."""
        self._require_sandbox()
        return await self.intake.submit(request)

    async def submit_plan(
        self, plan: Plan, *, spec_text: str, spec_path: str | None, request: SubmitRequest,
        spec_test_command: str | None = None, overview: str | None = None,
    ) -> RunRecord:
        """Store and start a run of an already built plan (no model planning)."""
        return await self.intake.submit_plan(
            plan, spec_text=spec_text, spec_path=spec_path, request=request,
            spec_test_command=spec_test_command, overview=overview,
        )

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the background work of runs (planning, starting) until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def spawn(self, run_id: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` for ``run_id`` in the background (cancelled by ``cancel`` and at
        shutdown); its failures are logged, never raised into the daemon."""
        if self._tg is None:
            raise RuntimeError("RunManager.serve() is not running")
        scope = anyio.CancelScope()
        self._background[run_id] = scope

        async def guarded() -> None:
            try:
                with scope:
                    await work()
            except Exception:
                _log.exception("run.background_failed", run_id=run_id)
            finally:
                if self._background.get(run_id) is scope:
                    del self._background[run_id]

        self._tg.start_soon(guarded)

    async def start_queued(self, run_id: str, *, overview: str | None = None) -> None:
        """Activate a stored ``queued`` run (nothing if it was cancelled or paused first)."""
        async with self.lock:
            record = await self.store.get_run(run_id)
            if record.state == "queued" and run_id not in self.active:
                await self._activate(record, overview=overview)

    async def fail_planning(self, run_id: str, reason: str, *,
                            data: dict[str, Any] | None = None) -> None:
        """A ``planning`` run cannot go on: it fails with ``reason`` (what, where, the fix)."""
        async with self.lock:
            record = await self.store.get_run(run_id)
            if record.state == "planning":
                await self.store.set_run_state(run_id, "failed", event_type="run.failed",
                                               reason=reason,
                                               data={"phase": "planning", **(data or {})})

    # --- control --------------------------------------------------------------------------
    async def pause(self, run_id: str, *, reason: str | None = None) -> RunRecord:
        """Stop dispatching new batches of a run; in-flight batches finish."""
        async with self.lock:
            record = await self.store.get_run(run_id)
            _require(record, ("queued", "running"), "pause")
            slot = self.scheduler.get(run_id)
            if slot is not None:
                slot.paused = True
            await self.store.set_run_state(run_id, "paused", event_type="run.paused",
                                           reason=reason)
            return await self.store.get_run(run_id)

    async def resume(self, run_id: str) -> RunRecord:
        """Dispatch a paused run's batches again."""
        self._require_sandbox()
        self._limit_resumes.pop(run_id, None)
        async with self.lock:
            record = await self.store.get_run(run_id)
            slot = self.scheduler.get(run_id)
            if not (slot is not None and slot.paused and record.state == "running"):
                # (A run paused in memory whose pause could not be written - the database
                # failed - is resumed too.)
                _require(record, ("paused",), "resume")
                await self.store.set_run_state(run_id, "running", event_type="run.resumed")
            active = self.active.get(run_id)
            if slot is None or active is None:
                await self._activate(await self.store.get_run(run_id))
            elif slot.graph.finished and not slot.in_flight:
                # Its last result was stored but the run's end was not (the database failed).
                await self.results.finish_run(active, slot.graph)
            else:
                slot.paused = False
                self.scheduler.wake()
            return await self.store.get_run(run_id)

    async def cancel(self, run_id: str) -> RunRecord:
        """Cancel in-flight work and mark everything that has not succeeded cancelled."""
        async with self.lock:
            record = await self.store.get_run(run_id)
            _require(record, ("planning", *_ACTIVE_STATES), "cancel")
            background = self._background.pop(run_id, None)
            if background is not None:
                background.cancel()  # planning, or its start
            active = self.active.pop(run_id, None)
            slot = self.scheduler.remove(run_id)
            if active is not None:
                active.cancelling = True
            if slot is not None:
                for scope in slot.in_flight.values():
                    scope.cancel()
                slot.graph.cancel_all()
            tasks = await self.store.list_tasks(run_id, details=False)
            await self.store.transition(
                run=RunChange(run_id, "cancelled", "run.cancelled", "cancelled by the user"),
                batch=None,
                tasks=[TaskChange(t.id, "cancelled", reason="run cancelled")
                       for t in tasks if t.state not in ("succeeded", "cancelled")],
                events=[],
            )
            for batch in await self.store.list_batches(run_id):
                if batch.state not in ("succeeded", "cancelled"):
                    await self.store.set_batch_state(batch.id, "cancelled")
            if active is not None:
                await active.workspace.close()
            return await self.store.get_run(run_id)

    async def retry_task(self, task_id: str) -> TaskRecord:
        """Re-queue a failed task's batch and unblock what waited on it."""
        self._require_sandbox()
        async with self.lock:
            task = await self.store.get_task(task_id)
            if task.state != "failed":
                raise InvalidStateError(
                    f"task {task_id} has state {task.state}; only a failed task can be retried",
                    data={"state": task.state, "allowed": ["failed"]},
                )
            record = await self.store.get_run(task.run_id)
            _require(record, ("running", "paused", "failed"), "retry a task of")
            assert task.batch_id is not None
            slot = self.scheduler.get(record.id)
            if slot is None:
                _, slot = await self._activate(record, start=False)
            unblocked = slot.graph.retry(task.batch_id)
            batches = {b.id: b for b in await self.store.list_batches(record.id)}
            states = slot.graph.states()
            changes: list[TaskChange] = []
            for batch_id in [task.batch_id, *unblocked]:
                want = "ready" if states[batch_id] == "ready" else "pending"
                why = f"retry of task {ActiveRun.plan_id(task_id)}"
                changes += [TaskChange(t, want, reason=why) for t in batches[batch_id].task_ids]
            run_change = None
            if record.state == "failed":
                run_change = RunChange(record.id, "running", "run.resumed",
                                       f"retry of task {task_id}")
            await self.store.transition(
                run=run_change,
                batch=(task.batch_id, "pending", "batch.retried", {"task_id": task_id}),
                tasks=changes, events=[],
            )
            if self.scheduler.get(record.id) is None:
                self.scheduler.add(slot)
            self.scheduler.wake()
            return await self.store.get_task(task_id)

    async def budget_exceeded(self, run_id: str, spent_usd: float, budget_usd: float) -> None:
        """The batch context's hook: pause the run (once) with the reason."""
        record = await self.store.get_run(run_id)
        if record.state in ("queued", "running"):
            await self.pause(
                run_id,
                reason=f"budget exceeded: spent ${spent_usd:.4f} of ${budget_usd:.2f}; raise "
                "the budget and resume",
            )

    async def usage_limited(self, run_id: str, resume_at: float | None, reason: str) -> None:
        """The batch context's hook: a usage or rate limit stopped a batch (nothing failed).
        The run pauses with an event and resumes by itself at ``resume_at``."""
        wait_s = self.config.claude_code.usage_limit_wait_s
        at = resume_at if resume_at is not None else time.time() + wait_s
        at = max(at, self._limit_resumes.get(run_id, 0.0))
        when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
        await self.store.append_event(run_id, "run.usage_limited",
                                      {"reason": reason, "resume_at": when,
                                       "resume_at_unix": at})
        record = await self.store.get_run(run_id)
        if record.state in ("queued", "running"):
            await self.pause(run_id, reason=f"{reason}; resumes by itself at {when} "
                             f"(or `brctl resume {run_id}`)")
        elif run_id not in self._limit_resumes:
            return  # paused or ended for another reason: the user decides
        self._limit_resumes[run_id] = at
        self._timers_changed.set()

    async def _rearm_usage_limit(self, run_id: str) -> None:
        """After a restart: a run still paused by a usage limit resumes at its reset time."""
        events = await self.store.list_events(
            run_id=run_id, types=["run.usage_limited", "run.paused", "run.resumed"],
            limit=100_000)
        if len(events) >= 2 and events[-1].type == "run.paused" \
                and events[-2].type == "run.usage_limited":
            at = float(events[-2].data.get("resume_at_unix") or 0.0)
            if at:
                self._limit_resumes[run_id] = at
                self._timers_changed.set()
                _log.info("run.limit_rearmed", run_id=run_id, resume_at_unix=at)

    async def run_timers(self) -> None:
        """Resume runs paused by a usage limit once it has reset (runs for the daemon's life)."""
        while True:
            self._timers_changed = anyio.Event()
            now = time.time()
            due = [r for r, at in self._limit_resumes.items() if at <= now]
            for run_id in due:
                self._limit_resumes.pop(run_id, None)
                try:
                    await self.resume(run_id)
                    _log.info("run.limit_reset", run_id=run_id)
                except BuildRunnerError as exc:  # cancelled or resumed meanwhile
                    _log.info("run.limit_reset_skipped", run_id=run_id, reason=str(exc))
            wait_s = min((at - now for at in self._limit_resumes.values()), default=3600.0)
            with anyio.move_on_after(max(0.05, wait_s)):
                await self._timers_changed.wait()

    # --- shutdown -------------------------------------------------------------------------
    async def shutdown(self, grace_period_s: float) -> None:
        """Stop dispatching; give in-flight batches ``grace_period_s`` to finish, then cancel
        them (their attempts are recorded as interrupted; recovery re-queues them)."""
        self.scheduler.stop_dispatching()
        with anyio.move_on_after(grace_period_s):
            await self.scheduler.wait_idle()
        if self.scheduler.in_flight:
            _log.info("shutdown.interrupting", batches=self.scheduler.in_flight)
            self.scheduler.cancel_in_flight()
            with anyio.move_on_after(15.0, shield=True):
                await self.scheduler.wait_idle()


def _require(record: RunRecord, allowed: tuple[str, ...], action: str) -> None:
    if record.state not in allowed:
        raise InvalidStateError(
            f"cannot {action} run {record.id}: its state is {record.state}; {action} needs "
            f"one of: {', '.join(allowed)}",
            data={"state": record.state, "allowed": list(allowed)},
        )


def tasks_by_state(tasks: list[Any]) -> dict[str, int]:
    """Counts of tasks per state (every state of the contract, zeros included)."""
    counts = dict.fromkeys(protocol.TASK_STATES, 0)
    for task in tasks:
        counts[task.state] = counts.get(task.state, 0) + 1
    return counts
