"""Keep every path the model names inside the batch's worktree.

A path is refused when it is absolute and outside the worktree, when ``..`` climbs out, or
when a symlink on the way points out (resolved for real, so a link planted by an earlier bash
command cannot be used to write elsewhere). ``.git`` is read-only: the daemon owns commits.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ToolError", "resolve_in_worktree"]


class ToolError(Exception):
    """A tool call the model got wrong. Goes back as a ``tool_result`` with ``is_error``.

    Deliberately not a :class:`~buildrunnerd.errors.BuildRunnerError`: it never reaches a
    user, it is feedback for the model, which is expected to correct itself."""


def resolve_in_worktree(root: Path, raw: str, *, write: bool) -> Path:
    """Resolve the model's ``raw`` path against ``root`` and return the real path.

    Raises :class:`ToolError` with a message meant for the model when the path leaves the
    worktree (absolute, ``..`` or a symlink) or writes into ``.git``."""
    if not raw or "\x00" in raw:
        raise ToolError("The path is empty or contains a NUL byte; give a path in the repository.")
    real_root = root.resolve()
    given = Path(raw)
    candidate = given if given.is_absolute() else root / given
    # Lexical check first, so the error says which rule was broken.
    lexical = Path(os.path.normpath(candidate))
    if not (_within(lexical, root) or _within(lexical, real_root)):
        if given.is_absolute():
            raise ToolError(
                f"The path {raw} is outside the repository. Use a path relative to the "
                f"repository root or an absolute path under {root}."
            )
        raise ToolError(f"The path {raw} climbs out of the repository with '..'; refused.")
    # Then for real: symlinks anywhere on the way are followed (strict=False resolves the
    # existing part and appends the rest).
    real = lexical.resolve()
    if not _within(real, real_root):
        raise ToolError(
            f"The path {raw} resolves through a symlink to {real}, outside the repository; "
            "refused."
        )
    rel = real.relative_to(real_root)
    if write and rel.parts and rel.parts[0] == ".git":
        raise ToolError(f"{raw} is inside .git, which is read-only (BuildRunner commits for you).")
    return real


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
