"""The plan: tasks, batches, levels and the critical path, as ``plan --json`` shows them."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Task", "Batch", "CriticalPath", "PlanFeature", "PlanWarning", "BatchPrompt", "Plan"]


class Task(msgspec.Struct):
    # Unique in the plan; explicit ids are kept ("T001"), generated ones are "<feature>.<n>".
    id: str
    feature: str  # feature id
    title: str
    domain: str  # database|backend|frontend|tests|docs|infra
    complexity: str  # simple|medium|complex|critical
    estimate_minutes: int
    depends_on: list[str] = []
    files: list[str] = []
    acceptance_criteria: list[str] = []
    description: str = ""
    line: int | None = None


class BatchPrompt(msgspec.Struct):
    """A batch's prompt. ``system`` is the stable part: identical for every batch of a run,
    so the API can cache it. ``user`` holds the context and the tasks of this batch."""

    system: str
    user: str
    tokens: int  # system + user, counted with the token counter
    context_tokens: int  # the trimmed context part alone (never above the budget)


class Batch(msgspec.Struct):
    id: str  # "B001", ...
    task_ids: list[str]
    domain: str
    estimate_minutes: int
    priority_minutes: int  # longest path (by estimate) from this batch to the end; higher first
    depends_on: list[str] = []  # batch ids
    prompt_tokens: int = 0


class CriticalPath(msgspec.Struct):
    task_ids: list[str]
    minutes: int


class PlanFeature(msgspec.Struct):
    id: str
    name: str
    line: int
    depends_on: list[str] = []


class PlanWarning(msgspec.Struct):
    line: int | None
    message: str


class Plan(msgspec.Struct):
    spec_title: str
    spec_path: str | None
    features: list[PlanFeature]
    tasks: list[Task]
    batches: list[Batch]
    levels: list[list[str]]
    critical_path: CriticalPath
    warnings: list[PlanWarning] = []
    test_command: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The ``plan --json`` shape of the contract."""
        return {
            "spec": {"title": self.spec_title, "path": self.spec_path,
                     "test_command": self.test_command},
            "features": msgspec.to_builtins(self.features),
            "tasks": msgspec.to_builtins(self.tasks),
            "batches": msgspec.to_builtins(self.batches),
            "levels": self.levels,
            "critical_path": msgspec.to_builtins(self.critical_path),
            "warnings": msgspec.to_builtins(self.warnings),
        }
