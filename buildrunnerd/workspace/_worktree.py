"""Which git directory a batch worktree belongs to, as the daemon computed it.

A worktree's ``.git`` is a file in the worktree (``gitdir: <repo>/.git/worktrees/<name>``), so
the model can rewrite it: pointed at a config with ``core.fsmonitor`` or at the user's own
repository, the daemon's next ``git add`` would run the model's program or move the user's
branch. So the daemon never reads it to find the repository. Right after ``git worktree add``
(before any model work) it records the git directory and the file's bytes; every later git
call on the worktree passes ``--git-dir``/``--work-tree`` from that record, and first checks
that ``.git`` is still the same regular file. A changed ``.git`` fails the batch, saying so.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import msgspec

from buildrunnerd.errors import WorkspaceError
from buildrunnerd.workspace._git import driver_overrides

__all__ = ["TamperedWorktreeError", "WorktreeIdentity", "forget_worktree", "known_worktree",
           "read_dotgit", "record_worktree", "worktree_git", "worktree_git_args"]

_MAX_DOTGIT_BYTES = 4096


class TamperedWorktreeError(WorkspaceError):
    """The worktree's ``.git`` is not what the daemon created: the batch fails."""


class WorktreeIdentity(msgspec.Struct, frozen=True):
    path: str
    git_dir: str
    dotgit: bytes
    overrides: tuple[str, ...] = ()  # driver_overrides of its repository, read at creation


_KNOWN: dict[str, WorktreeIdentity] = {}


def read_dotgit(worktree: Path) -> bytes | None:
    """The bytes of ``worktree/.git`` when it is a regular file (not followed if a symlink;
    never blocking on a FIFO); None when it is missing or anything else."""
    try:
        fd = os.open(worktree / ".git", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, _MAX_DOTGIT_BYTES)
    finally:
        os.close(fd)


async def record_worktree(worktree: Path, git_dir: str, *, repo: Path,
                          timeout_s: float) -> WorktreeIdentity:
    """Remember ``worktree``'s git directory and its ``.git`` file as they are now (call it
    right after creating the worktree, before anything else runs in it), with the driver
    overrides of ``repo``'s configuration."""
    key = str(await anyio.Path(worktree).resolve())
    dotgit = read_dotgit(Path(key))
    if dotgit is None:
        raise WorkspaceError(f"{worktree}: the new worktree has no .git file; is git older "
                             "than 2.5?", data={"worktree": str(worktree)})
    overrides = await driver_overrides(repo, timeout_s=timeout_s)
    identity = WorktreeIdentity(key, git_dir, dotgit, overrides)
    _KNOWN[key] = identity
    return identity


def forget_worktree(worktree: Path) -> None:
    _KNOWN.pop(os.path.realpath(worktree), None)


def known_worktree(worktree: Path) -> WorktreeIdentity | None:
    return _KNOWN.get(os.path.realpath(worktree))


def worktree_git_args(worktree: Path) -> list[str]:
    """``--git-dir``/``--work-tree`` for a git call on ``worktree``, after checking that its
    ``.git`` is unchanged. A worktree the daemon did not create (a plain repository, as
    tests and scratch checks use) must have a real ``.git`` folder, which is used as is.

    Raises :class:`TamperedWorktreeError` when ``.git`` was rewritten, replaced or removed."""
    key = os.path.realpath(worktree)
    identity = _KNOWN.get(key)
    if identity is None:
        dotgit = Path(key) / ".git"
        if dotgit.is_dir() and not dotgit.is_symlink():
            return ["--git-dir", str(dotgit), "--work-tree", key]
        raise TamperedWorktreeError(
            f"{worktree} is not a worktree BuildRunner created (its .git is not a folder); "
            "refusing to run git there", data={"worktree": str(worktree)})
    if read_dotgit(Path(key)) != identity.dotgit:
        raise TamperedWorktreeError(
            f"the batch rewrote {worktree}/.git (it must stay as BuildRunner created it: it "
            "names the repository the daemon's git works on); the batch's work is discarded",
            data={"worktree": str(worktree), "reason": "dotgit_changed"})
    return ["--git-dir", identity.git_dir, "--work-tree", key]


async def worktree_git(worktree: Path, *, timeout_s: float) -> list[str]:
    """Every option a git call on ``worktree`` needs: the checked ``--git-dir``/``--work-tree``
    (:func:`worktree_git_args`) and the driver overrides of its repository."""
    args = worktree_git_args(worktree)
    identity = known_worktree(worktree)
    if identity is not None:
        return [*identity.overrides, *args]
    return [*await driver_overrides(Path(worktree), timeout_s=timeout_s), *args]
