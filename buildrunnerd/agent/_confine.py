"""Keep every path the model names inside the batch's worktree.

The rules are those of :mod:`buildrunnerd.sandbox._fs`, which does the file work race-free
(component by component from a directory fd, ``O_NOFOLLOW``, regular files and folders only,
bounded): no absolute path outside the worktree, no ``..`` out of it, no symlink anywhere on
the way, no FIFO or device, and ``.git`` is read-only (the daemon owns commits). Here its
refusals become :class:`ToolError`, feedback the model can act on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from buildrunnerd.sandbox import WorktreePathError

__all__ = ["ToolError", "refusals_as_tool_errors"]


class ToolError(Exception):
    """A tool call the model got wrong. Goes back as a ``tool_result`` with ``is_error``.

    Deliberately not a :class:`~buildrunnerd.errors.BuildRunnerError`: it never reaches a
    user, it is feedback for the model, which is expected to correct itself."""


# What the model can do about each refusal, after the low-level message.
_HINTS = {
    "missing": " Use the create command to make it.",
    "too_large": " The editor only handles files up to agent.editor_max_read_bytes (to read) "
                 "and agent.editor_max_write_bytes (to write); use the bash tool for parts "
                 "of a larger file (head, sed -n).",
}


@contextmanager
def refusals_as_tool_errors() -> Iterator[None]:
    """Turn a :class:`~buildrunnerd.sandbox.WorktreePathError` raised inside the block into a
    :class:`ToolError` with the same message (and a hint where one helps)."""
    try:
        yield
    except WorktreePathError as exc:
        raise ToolError(exc.message + _HINTS.get(exc.problem, "")) from exc
