"""The execution context of one attempt: what a backend may do to the daemon while it works.

:class:`BatchContext` is the daemon's :class:`~buildrunnerd.executor.ExecutionContext`: it
stores the batch's events, its billed API calls and its conversation checkpoints, and checks
the run's budget before each call (pausing the run when it would be exceeded).

Events that only report what happened (a finished block of streamed text, a file the
monitor saw change) wait for the batch's next write instead of a commit each: the turn's
record, the next event that is stored at once, or, when the backend stops, one write of
their own (:meth:`BatchContext.flush`, from the lifecycle). They keep their order. A crash
before that write loses them only with the turn they belong to, which a resumed attempt does
again (and reports again).
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

__all__ = [
    "MAX_PENDING_EVENTS", "BatchContext", "FileEvents", "OnBudgetExceeded", "OnUsageLimited",
]

# Stored with the batch's next write (see the module docstring); a partial text is not: a
# long answer streams its blocks live.
_DEFERRED_TYPES = frozenset({"agent.text", "file.created", "file.modified", "file.deleted"})
# At most this many wait; the next one stores them all. The model decides how many files its
# tools touch (a bash loop can create a million): memory stays bounded, commits stay few.
MAX_PENDING_EVENTS = 256

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
        self._pending: list[NewEvent] = []  # waiting for the batch's next write

    async def emit(
        self, type: str, data: dict[str, Any], *, task_id: str | None = None
    ) -> None:
        """Store and publish an event of this batch: a report of what happened (finished
        streamed text, file changes) with the batch's next write, any other at once (with
        the reports before it)."""
        event = NewEvent(self._run.id, type, data, batch_id=self._batch_id,
                         task_id=self._task_gid(task_id))
        if type in _DEFERRED_TYPES and not data.get("partial"):
            self._pending.append(event)
            if len(self._pending) >= MAX_PENDING_EVENTS:
                await self.flush()
            return
        if self._pending:
            await self._store.transition(events=[*self.take_pending(), event])
            return
        await self._store.append_event(
            self._run.id, type, data, batch_id=self._batch_id, task_id=event.task_id
        )

    @property
    def has_pending(self) -> bool:
        """Whether events wait for the batch's next write."""
        return bool(self._pending)

    def take_pending(self) -> list[NewEvent]:
        """The events waiting for the batch's next write, for the caller's transaction
        (they are no longer this context's to store)."""
        pending, self._pending = self._pending, []
        return pending

    async def flush(self) -> None:
        """Store the waiting events now (the batch stops without another write)."""
        if self._pending:
            await self._store.transition(events=self.take_pending())

    def _task_gid(self, task_id: str | None) -> str | None:
        if task_id is not None and ":" not in task_id:
            return self._run.gid(task_id)
        return task_id

    async def record_api_call(self, call: ApiCall) -> None:
        """Store a billed call (row + ``api.call`` event) in one transaction."""
        if self._pending:
            await self.record_turn(call=call)
            return
        await self._store.record_api_call(self._run.id, self._batch_id, call)

    async def checkpoint(self, state: bytes) -> None:
        """Persist the conversation so a restart resumes it."""
        if self._pending:
            await self.record_turn(checkpoint=state)
            return
        await self._store.save_checkpoint(self.attempt_id, state)

    async def record_turn(
        self, *, call: ApiCall | None = None, events: Sequence[TurnEvent] = (),
        checkpoint: bytes | None = None,
    ) -> None:
        """The turn's call, events and checkpoint in ONE store transaction, after the events
        that waited for it."""
        earlier = self.take_pending()
        try:
            await self._store.record_turn(
                self.attempt_id, self._run.id, self._batch_id, call=call,
                events=[NewEvent(self._run.id, e.type, e.data, batch_id=self._batch_id,
                                 task_id=self._task_gid(e.task_id)) for e in events],
                checkpoint=checkpoint, earlier=earlier,
            )
        except BaseException:
            self._pending[:0] = earlier  # not written: they wait for the next write
            raise

    async def check_budget(self, estimate_usd: float) -> None:
        """Raise BudgetExceededError (after a ``budget.exceeded`` event and pausing the run)."""
        budget = self._run.budget_usd
        if budget is None:
            return
        spent = await self._store.run_cost_usd(self._run.id)
        if spent + estimate_usd <= budget:
            return
        data = {"budget_usd": budget, "spent_usd": spent, "estimate_usd": estimate_usd}
        await self.emit("budget.exceeded", data)
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
