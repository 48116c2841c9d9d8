"""What a model backend implements, and what the daemon gives it while it works.

The daemon (``buildrunnerd.daemon``) owns the batch lifecycle: it makes the worktree, calls
:meth:`Executor.run_batch`, verifies, asks for fix-ups through the same method (with
``job.fix_report`` set), merges. A backend only edits files in ``job.worktree``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import msgspec

from buildrunnerd.plan._model import Task
from buildrunnerd.prompt._model import BatchPrompt
from buildrunnerd.protocol import VerificationReport

__all__ = [
    "ApiCall", "BatchJob", "ExecutionContext", "ExecutionOutcome", "Executor", "TurnEvent",
]


class BatchJob(msgspec.Struct):
    run_id: str
    batch_id: str
    attempt: int  # 1-based attempt of this batch (a re-run after a merge conflict is a new one)
    tasks: list[Task]
    prompt: BatchPrompt
    worktree: str  # absolute path; the only place the backend may write
    fix_round: int = 0  # 0 = first try; n = n-th fix-up after a failed verification
    fix_report: VerificationReport | None = None  # what failed (fix-up rounds only)
    escalation: int = 0  # how many steps up the model ladder (after failed verifications)
    resume_state: bytes | None = None  # the last checkpoint() of this attempt, after a restart
    test_cmd: str | None = None


class ApiCall(msgspec.Struct):
    """One billed API call, from the response's ``usage``."""

    model: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: int = 0
    request_id: str | None = None
    stop_reason: str | None = None
    purpose: str = "batch"  # "batch" | "planner"
    backend: str = ""  # the backend that made the call: "anthropic", "claude-code", ...


class TurnEvent(msgspec.Struct, frozen=True):
    """An event of a turn, stored with the turn's other writes (see
    :meth:`ExecutionContext.record_turn`)."""

    type: str
    data: dict[str, Any]
    task_id: str | None = None


class ExecutionOutcome(msgspec.Struct):
    """How a backend's work on a batch ended.

    ``usage_limited``: a usage or rate limit stopped the work; nothing failed. The daemon
    pauses the run and resumes it at ``resume_at`` (unix seconds), continuing the batch from
    its last checkpoint."""

    status: Literal["completed", "failed", "budget_exceeded", "cancelled", "usage_limited"]
    reason: str | None = None  # why it failed, for the user (task state reason)
    model: str | None = None  # the model that did the work
    summary: str = ""  # what was built; used as "already built" context for later batches
    resume_at: float | None = None  # usage_limited: when the limit resets (unix seconds)


class ExecutionContext(Protocol):
    """The daemon's side of a running batch."""

    async def emit(
        self, type: str, data: dict[str, Any], *, task_id: str | None = None
    ) -> None:
        """Store and publish an event for this batch (e.g. ``agent.text``, ``tool.call``)."""

    async def record_api_call(self, call: ApiCall) -> None:
        """Store a billed call (row + ``api.call`` event) in one transaction."""

    async def checkpoint(self, state: bytes) -> None:
        """Persist the conversation after a turn, so a restart resumes instead of repaying."""

    async def record_turn(
        self, *, call: ApiCall | None = None, events: Sequence[TurnEvent] = (),
        checkpoint: bytes | None = None,
    ) -> None:
        """Store a turn's writes in ONE transaction, in this order: the billed ``call`` (as
        :meth:`record_api_call`), the ``events`` (as :meth:`emit`), the ``checkpoint`` (as
        :meth:`checkpoint`). A crash keeps all of them or none; subscribers see the events in
        that order. One commit instead of one per part: what a backend should use at the end
        of a turn (the parts stay available for writes that must be seen at once)."""

    async def check_budget(self, estimate_usd: float) -> None:
        """Raise :class:`buildrunnerd.errors.BudgetExceededError` if the run's spend plus
        ``estimate_usd`` would exceed its budget (the daemon then pauses the run)."""


class Executor(Protocol):
    """A model backend: ``simulated``, ``anthropic`` or ``claude-code``."""

    name: str

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome: ...

    async def aclose(self) -> None: ...
