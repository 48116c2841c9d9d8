"""The execution context of one attempt: what a backend may do to the daemon while it works.

:class:`BatchContext` is the daemon's :class:`~buildrunnerd.executor.ExecutionContext`: it
stores the batch's events, its billed API calls and its conversation checkpoints, and checks
the run's budget before each call (pausing the run when it would be exceeded).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from buildrunnerd.daemon._active import ActiveRun
from buildrunnerd.errors import BudgetExceededError
from buildrunnerd.executor import ApiCall, TurnEvent
from buildrunnerd.store import NewEvent

if TYPE_CHECKING:
    from buildrunnerd.store import Store

__all__ = ["BatchContext", "FileEvents", "OnBudgetExceeded", "OnUsageLimited"]

# (run id, spent_usd, budget_usd): pause the run, once.
OnBudgetExceeded = Callable[[str, float, float], Awaitable[None]]
# (run id, resume_at in unix seconds or None, reason): pause the run until the limit resets.
OnUsageLimited = Callable[[str, float | None, str], Awaitable[None]]


class BatchContext:
    """The daemon's :class:`~buildrunnerd.executor.ExecutionContext` for one attempt."""

    def __init__(
        self,
        store: Store,
        run: ActiveRun,
        batch_id: str,
        attempt_id: int,
        on_budget_exceeded: OnBudgetExceeded,
        on_usage_limited: OnUsageLimited | None = None,
    ) -> None:
        self._store = store
        self.run = run
        self._run = run
        self._batch_id = batch_id
        self.batch_id = batch_id
        self.attempt_id = attempt_id
        self._on_budget_exceeded = on_budget_exceeded
        self.on_usage_limited = on_usage_limited
        self.model: str | None = None  # the model that did the work (last outcome's)
        self.summary = ""  # what was built, for later batches' prompts

    async def emit(
        self, type: str, data: dict[str, Any], *, task_id: str | None = None
    ) -> None:
        """Store and publish an event of this batch."""
        await self._store.append_event(
            self._run.id, type, data, batch_id=self._batch_id, task_id=self._task_gid(task_id)
        )

    def _task_gid(self, task_id: str | None) -> str | None:
        if task_id is not None and ":" not in task_id:
            return self._run.gid(task_id)
        return task_id

    async def record_api_call(self, call: ApiCall) -> None:
        """Store a billed call (row + ``api.call`` event) in one transaction."""
        await self._store.record_api_call(self._run.id, self._batch_id, call)

    async def checkpoint(self, state: bytes) -> None:
        """Persist the conversation so a restart resumes it."""
        await self._store.save_checkpoint(self.attempt_id, state)

    async def record_turn(
        self, *, call: ApiCall | None = None, events: Sequence[TurnEvent] = (),
        checkpoint: bytes | None = None,
    ) -> None:
        """The turn's call, events and checkpoint in ONE store transaction."""
        await self._store.record_turn(
            self.attempt_id, self._run.id, self._batch_id, call=call,
            events=[NewEvent(self._run.id, e.type, e.data, batch_id=self._batch_id,
                             task_id=self._task_gid(e.task_id)) for e in events],
            checkpoint=checkpoint,
        )

    async def check_budget(self, estimate_usd: float) -> None:
        """Raise BudgetExceededError (after a ``budget.exceeded`` event and pausing the run)."""
        budget = self._run.budget_usd
        if budget is None:
            return
        spent = await self._store.run_cost_usd(self._run.id)
        if spent + estimate_usd <= budget:
            return
        data = {"budget_usd": budget, "spent_usd": spent, "estimate_usd": estimate_usd}
        await self._store.append_event(
            self._run.id, "budget.exceeded", data, batch_id=self._batch_id
        )
        await self._on_budget_exceeded(self._run.id, spent, budget)
        raise BudgetExceededError(
            f"run {self._run.id}: the next call (~${estimate_usd:.4f}) would take spend "
            f"${spent:.4f} over the budget ${budget:.2f}; the run is paused — raise the budget "
            "or resume to continue",
            data=data,
        )


class FileEvents:
    """Turns the file monitor's callbacks into ``file.created``/``file.modified`` events."""

    def __init__(self, ctx: BatchContext) -> None:
        self._ctx = ctx

    async def __call__(self, kind: str, relpath: str) -> None:
        await self._ctx.emit(f"file.{kind}", {"path": relpath})
