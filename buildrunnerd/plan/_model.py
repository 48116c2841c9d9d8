"""The plan: tasks, batches, levels and the critical path, as ``plan --json`` shows them."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Batch", "CriticalPath", "Plan", "PlanFeature", "PlanWarning", "Task"]


class Task(msgspec.Struct):
    """One piece of work. ``files`` are what verification requires: only paths the spec names
    (or its layout clearly implies). ``suggested_files`` are the planner's guesses: shown to the
    agent, never required (see the contract)."""

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
    suggested_files: list[str] = []
    optional: bool = False  # Kiro "- [ ]* 1.4": worth doing, nothing else waits for it


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
    language: str | None = None  # the project's stack as the planner read it: "python", ...
    suggested_test_command: str | None = None  # that stack's usual test command (a hint)

    def to_json_dict(self) -> dict[str, Any]:
        """The ``plan --json`` shape of the contract."""
        return {
            "spec": {"title": self.spec_title, "path": self.spec_path,
                     "test_command": self.test_command, "language": self.language,
                     "suggested_test_command": self.suggested_test_command},
            "features": msgspec.to_builtins(self.features),
            "tasks": msgspec.to_builtins(self.tasks),
            "batches": msgspec.to_builtins(self.batches),
            "levels": self.levels,
            "critical_path": msgspec.to_builtins(self.critical_path),
            "warnings": msgspec.to_builtins(self.warnings),
        }
