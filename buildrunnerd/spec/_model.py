"""The typed result of parsing a spec. Every feature, requirement and criterion keeps its line."""

from __future__ import annotations

import msgspec

__all__ = ["Item", "Feature", "SpecTask", "Spec", "SpecWarning"]


class Item(msgspec.Struct, frozen=True):
    """A line of text from the spec (a requirement, a criterion) and its 1-based line number."""

    text: str
    line: int


class SpecWarning(msgspec.Struct, frozen=True):
    """Something the parser noticed but could work around (a renamed duplicate task id...)."""

    line: int | None
    message: str


class Feature(msgspec.Struct):
    """A feature: something the product must do. ``depends_on`` holds resolved feature ids."""

    id: str  # stable slug, e.g. "user-authentication"; unique in the spec
    name: str
    line: int
    description: str = ""
    requirements: list[Item] = []
    acceptance_criteria: list[Item] = []
    depends_on: list[str] = []
    priority: str | None = None  # as written: "high", "P1", ...
    domain: str | None = None  # as written in a ``Domain:`` line, normalised to protocol.Domain
    files: list[str] = []  # paths named in backticks
    done: bool = False  # its heading marks it finished ("✅ COMPLETED"): nothing to plan


class SpecTask(msgspec.Struct):
    """A task written explicitly in the spec (Kiro/spec-kit/plan task lists). Used as written."""

    id: str  # as written: "T001", "1.1", "A.1"
    title: str
    line: int
    feature: str  # feature id this task belongs to
    estimate_minutes: int | None = None  # "(90 min)", "2 hours"
    files: list[str] = []
    depends_on: list[str] = []  # task ids
    acceptance_criteria: list[Item] = []
    details: list[Item] = []  # sub-bullets
    domain: str | None = None
    complexity: str | None = None
    parallel: bool = False  # spec-kit ``[P]``
    done: bool = False  # ``- [x]``
    requirements: list[str] = []  # traced requirement refs as written: Kiro "7.4", spec-kit "US1"
    optional: bool = False  # Kiro ``- [ ]* 1.4``: worth doing, not needed for the feature


class Spec(msgspec.Struct):
    """A parsed spec. ``format`` names the dialect that was recognised."""

    title: str
    path: str | None
    format: str  # "native" | "prd" | "speckit" | "kiro" | "plan" | "tasklist" | "markdown"
    features: list[Feature]
    tasks: list[SpecTask] = []  # explicit tasks, empty when the planner must decompose
    overview: str = ""  # the opening prose, used in prompts as the project overview
    test_command: str | None = None  # from a ``Test command:`` line
    warnings: list[SpecWarning] = []
    # Requirements that belong to the whole spec rather than one feature (spec-kit ``FR-001``).
    requirements: list[Item] = []
    # Explicit tasks marked done (``- [x]``): not planned, and nothing waits for them.
    done_tasks: list[SpecTask] = []
    # File paths shown in the spec's fenced trees and path lists (hints, see spec/_layout.py).
    layout: list[str] = []
    # Info strings of the spec's fenced code blocks ("swift", "bash"), once each, in order.
    code_languages: list[str] = []
    # The text of the project sections (tech stack, architecture, constraints, notes...):
    # context for prompts and for reading the stack, never features.
    context: str = ""
