"""The error hierarchy. Every error a user can see derives from :class:`BuildRunnerError`.

Each error carries a JSON-RPC ``code`` (see :mod:`buildrunnerd.codes`) and ``data`` that a
program can act on, so the RPC layer can translate any of them without special cases.
"""

from __future__ import annotations

from typing import Any

from buildrunnerd import codes  # not protocol: brctl imports this module, without msgspec

__all__ = [
    "BuildRunnerError",
    "ConfigError",
    "SpecError",
    "Problem",
    "PlanError",
    "NotFoundError",
    "InvalidStateError",
    "RepoError",
    "StoreError",
    "WorkspaceError",
    "AgentError",
    "BudgetExceededError",
    "SandboxError",
    "SandboxUnavailableError",
]


class BuildRunnerError(Exception):
    """Root of every BuildRunner error. ``str(err)`` is the readable message."""

    code: int = codes.INTERNAL_ERROR

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = data or {}


class ConfigError(BuildRunnerError):
    """The configuration file or an override is invalid (names the key and the file)."""

    code = codes.CONFIG_INVALID


class Problem:
    """One problem found in a spec: a 1-based line (or None) and a message with a fix hint."""

    __slots__ = ("line", "message")

    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The problem as it goes on the wire (an item of a spec error's ``data.errors``)."""
        return {"line": self.line, "message": self.message}

    def __repr__(self) -> str:
        return f"Problem(line={self.line!r}, message={self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Problem)
            and other.line == self.line
            and other.message == self.message
        )

    def __hash__(self) -> int:
        return hash((self.line, self.message))


class SpecError(BuildRunnerError):
    """A spec cannot be planned. Carries every problem found, each with its line."""

    code = codes.SPEC_INVALID

    def __init__(self, problems: list[Problem], *, path: str | None = None) -> None:
        where = path or "<spec>"
        lines = [
            f"{where}:{p.line}: {p.message}" if p.line is not None else f"{where}: {p.message}"
            for p in problems
        ]
        super().__init__(
            "\n".join(lines) or f"{where}: invalid spec",
            data={"errors": [p.to_dict() for p in problems], "path": path},
        )
        self.problems = problems
        self.path = path


class PlanError(SpecError):
    """A plan could not be built from a parsed spec (cycle, budget, unknown reference)."""


class NotFoundError(BuildRunnerError):
    """A run, task or batch id that does not exist."""

    code = codes.NOT_FOUND


class InvalidStateError(BuildRunnerError):
    """An operation that the thing's current state does not allow (resume a finished run...)."""

    code = codes.INVALID_STATE


class RepoError(BuildRunnerError):
    """The target repository cannot be used (not a repo, dirty, detached HEAD, git failed)."""

    code = codes.REPO_INVALID


class StoreError(BuildRunnerError):
    """The database failed (disk full, locked); state is left as it was before the write."""

    code = codes.STORE_FAILED


class WorkspaceError(BuildRunnerError):
    """A worktree, verification or merge step failed for reasons outside the model's work."""

    code = codes.WORKSPACE_FAILED


class AgentError(BuildRunnerError):
    """The model backend failed in a way retries cannot fix (bad key, refusal, ...)."""

    code = codes.AGENT_FAILED


class BudgetExceededError(BuildRunnerError):
    """The next API call would take the run over its budget."""

    code = codes.BUDGET_EXCEEDED


class SandboxError(BuildRunnerError):
    """Confining worktree content failed (the sandbox could not start the command)."""

    code = codes.SANDBOX_UNAVAILABLE


class SandboxUnavailableError(SandboxError):
    """No working sandbox: the daemon refuses model work (the message says how to fix it)."""
