"""What the daemon keeps in memory about a run it is executing, and how a batch ended.

:class:`ActiveRun` is the run's in-memory state: its plan (indexed by plan id), its repository
or scratch directory, the attempts made so far, the summaries later prompts cite, and the run
branch's last verified commit. The store holds the durable state; this is rebuilt from it at
activation (:mod:`._runs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio

from buildrunnerd.plan._model import Batch, Plan, Task

__all__ = ["ActiveRun", "BatchResult"]


@dataclass(slots=True)
class BatchResult:
    """How a batch's lifecycle ended. ``interrupted``: back to the queue (shutdown, budget)."""

    status: Literal["succeeded", "failed", "interrupted", "cancelled"]
    reason: str | None = None
    model: str | None = None
    summary: str = ""
    commit: str | None = None


@dataclass(slots=True)
class ActiveRun:
    """What the daemon keeps in memory about a run it is executing."""

    id: str
    plan: Plan
    overview: str
    home: Path
    repo: Path | None  # None: a scratch run (no git)
    branch: str | None
    base_commit: str | None
    test_cmd: str | None
    budget_usd: float | None
    run_repo: Any = None  # workspace.RunRepo once opened
    summaries: list[str] = field(default_factory=list)  # "already built", for later prompts
    resume_attempts: dict[str, int] = field(default_factory=dict)  # batch id -> attempt id
    cancelling: bool = False
    attempts: dict[str, int] = field(default_factory=dict)  # batch id -> attempts so far
    scratch_ready: bool = False
    # batch id -> a result the store could not record (a full/locked database): applied,
    # not re-run, when the batch is dispatched again after `brctl resume`.
    unrecorded: dict[str, BatchResult] = field(default_factory=dict)
    tasks_by_plan_id: dict[str, Task] = field(default_factory=dict)
    batches_by_plan_id: dict[str, Batch] = field(default_factory=dict)
    # Merges and the run branch's verification after each one, one batch at a time.
    branch_lock: anyio.Lock = field(default_factory=anyio.Lock)
    verified: dict[str, Any] | None = None  # the last passing branch check (run.verified data)
    baseline_passed: list[str] | None = None  # tests that passed at verified["commit"]
    rolled_back: bool = False  # a merge of this run was rolled back (its head failed tests)

    def __post_init__(self) -> None:
        self.tasks_by_plan_id = {t.id: t for t in self.plan.tasks}
        self.batches_by_plan_id = {b.id: b for b in self.plan.batches}

    def gid(self, plan_id: str) -> str:
        """The global (store) id of a task or batch of this run."""
        return f"{self.id}:{plan_id}"

    @staticmethod
    def plan_id(global_id: str) -> str:
        return global_id.split(":", 1)[1]

    @property
    def scratch_dir(self) -> Path:
        return self.home / "runs" / self.id / "scratch"

    @property
    def worktree_root(self) -> Path:
        return self.home / "worktrees" / self.id
