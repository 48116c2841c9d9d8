"""What the daemon keeps in memory about a run it is executing, and how a batch ended.

:class:`ActiveRun` is the run's in-memory state: its plan (indexed by plan id), its
:class:`~buildrunnerd.workspace.Workspace` (a git run branch or a scratch folder, which also
holds the branch's last verified commit and the worktree pool), the attempts made so far and
the summaries later prompts cite. The store holds the durable state; this is rebuilt from it
at activation (:mod:`._runs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from buildrunnerd.plan._model import Batch, Plan, Task
from buildrunnerd.store._records import AttemptEnd

if TYPE_CHECKING:
    from buildrunnerd.workspace import Workspace

__all__ = ["ActiveRun", "BatchResult"]


@dataclass(slots=True)
class BatchResult:
    """How a batch's lifecycle ended. ``interrupted``: back to the queue (shutdown, budget)."""

    status: Literal["succeeded", "failed", "interrupted", "cancelled"]
    reason: str | None = None
    model: str | None = None
    summary: str = ""
    commit: str | None = None
    # The attempt's end, written with the result (one transaction); None when the lifecycle
    # already wrote it.
    attempt_end: AttemptEnd | None = None


@dataclass(slots=True)
class ActiveRun:
    """What the daemon keeps in memory about a run it is executing."""

    id: str
    plan: Plan
    overview: str
    branch: str | None  # the run branch (None: a scratch run)
    test_cmd: str | None
    budget_usd: float | None
    workspace: Workspace  # where its batches work: a git run branch, or a scratch folder
    summaries: list[str] = field(default_factory=list)  # "already built", for later prompts
    resume_attempts: dict[str, int] = field(default_factory=dict)  # batch id -> attempt id
    cancelling: bool = False
    attempts: dict[str, int] = field(default_factory=dict)  # batch id -> attempts so far
    # batch id -> a result the store could not record (a full/locked database): applied,
    # not re-run, when the batch is dispatched again after `brctl resume`.
    unrecorded: dict[str, BatchResult] = field(default_factory=dict)
    tasks_by_plan_id: dict[str, Task] = field(default_factory=dict)
    batches_by_plan_id: dict[str, Batch] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tasks_by_plan_id = {t.id: t for t in self.plan.tasks}
        self.batches_by_plan_id = {b.id: b for b in self.plan.batches}

    def gid(self, plan_id: str) -> str:
        """The global (store) id of a task or batch of this run."""
        return f"{self.id}:{plan_id}"

    @staticmethod
    def plan_id(global_id: str) -> str:
        return global_id.split(":", 1)[1]
