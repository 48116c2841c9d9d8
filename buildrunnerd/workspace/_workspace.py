"""Where a run's batches do their work: the :class:`Workspace` Protocol.

Two implementations: :class:`~._git_workspace.GitWorkspace` (a run branch in the user's
repository, a pooled worktree per batch, verification, merge, the run branch's check and its
rollback) and :class:`~._scratch.ScratchWorkspace` (a run without a repository: one plain
folder whose files are the results, checked for "every named file is a non-empty regular
file"). The daemon's batch lifecycle is written once against this Protocol.

What a workspace reports about a batch's files is a :class:`FileChange` (``created`` /
``modified`` and the path relative to the worktree); a git workspace reports them live
through ``on_change``, a scratch one all at once when the backend is done (see
:meth:`FileWatch.settle`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import msgspec

from buildrunnerd.config import VerifyConfig
from buildrunnerd.plan._model import Task
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.sandbox import Confinement
from buildrunnerd.workspace._monitor import ChangeKind, OnChange

__all__ = [
    "BatchCommit", "FileChange", "FileWatch", "HeadCheck", "Integration", "VerifiedHead",
    "Workspace",
]


class FileChange(NamedTuple):
    kind: ChangeKind
    path: str  # relative to the worktree


class BatchCommit(msgspec.Struct, frozen=True):
    """A verified batch's work, committed and not merged yet (:meth:`Workspace.commit`).

    The commit needs the worktree, the merge does not: a batch gives its worktree back
    between the two, so a batch that waits for its merge holds no worktree.
    ``commit=None``: nothing to commit (or a scratch run, whose files are the result)."""

    commit: str | None = None
    parent: str | None = None  # the commit the batch started from (its commit's parent)
    tree: str | None = None  # the tree id of ``commit``
    message: str = ""


class Integration(msgspec.Struct, frozen=True):
    """How a verified batch's work went into the run's results (:meth:`Workspace.merge`).

    ``merged`` with ``commit=None``: nothing to commit (or a scratch run, whose files are the
    result). Not merged: ``stale_start`` (the commit the batch started from, or a merge
    checked together with its own, was rolled back), ``rolled_back`` (the merge went in,
    the run branch then failed its tests: that report, and the merge was undone), else a
    merge conflict in ``conflict_files``."""

    merged: bool
    commit: str | None = None
    conflict_files: list[str] = []
    stale_start: bool = False
    rolled_back: VerificationReport | None = None


class VerifiedHead(msgspec.Struct, frozen=True):
    """The last passing check of the run's results (the ``run.verified`` event's data)."""

    commit: str
    test_command: str | None = None
    counts: dict[str, int] | None = None  # the test report's totals (None: no report read)
    tests: str | None = None  # the tests check's message


class HeadCheck(msgspec.Struct, frozen=True):
    """The final verification of a run: ``verified`` when it passed, else ``failed`` (why)."""

    verified: VerifiedHead | None = None
    failed: str | None = None


class FileWatch(Protocol):
    """What a workspace saw of a backend's work, once the backend is done."""

    async def settle(self) -> tuple[list[FileChange], VerificationReport | None]:
        """Called only after the backend completed: the changes not yet reported through
        ``on_change`` and, when the workspace made it on the way, the verification report
        (None: call :meth:`Workspace.verify`)."""
        ...


class Workspace(Protocol):
    """A run's place of work. Every method is safe to call from concurrent batches."""

    @property
    def kind(self) -> Literal["git", "scratch"]: ...

    async def acquire(self) -> tuple[Path, str | None]:
        """A worktree for one attempt: its path and the commit it starts from (None for a
        scratch run)."""
        ...

    async def release(self, path: Path, *, keep: bool = False, reuse: bool = True) -> None:
        """The attempt is done with ``path``: ``keep`` it as it is (a failed worktree kept
        for a look), or give it back, to be reused when ``reuse``. Never raises."""
        ...

    def watch(self, path: Path, tasks: Sequence[Task],
              on_change: OnChange) -> AbstractAsyncContextManager[FileWatch]:
        """Open around the backend's work on ``path``: the files it creates or modifies."""
        ...

    async def verify(self, path: Path, tasks: Sequence[Task], *, head: str | None,
                     config: VerifyConfig, confinement: Confinement | None) -> VerificationReport:
        """The verification report of the batch's work in ``path`` (``head``: where the
        attempt started, from :meth:`acquire`)."""
        ...

    async def commit(self, path: Path, message: str, report: VerificationReport | None, *,
                     head: str | None) -> BatchCommit:
        """Commit the verified work of ``path`` (``head``: where the attempt started). After
        this the batch needs ``path`` no more: :meth:`release` it before :meth:`merge`."""
        ...

    async def merge(self, made: BatchCommit, report: VerificationReport | None, *,
                    head: str | None, batch_id: str, config: VerifyConfig,
                    confinement: Confinement | None) -> Integration:
        """Put a batch's commit into the run's results: merge it into the run branch, check
        the branch, roll back a merge that broke it (one batch of the run at a time)."""
        ...

    async def verify_head(self, config: VerifyConfig,
                          confinement: Confinement | None) -> HeadCheck | None:
        """The final verification of the run's results (None: nothing to verify)."""
        ...

    async def close(self) -> None:
        """The run has ended: remove what the workspace holds (idle worktrees), all of it
        gone when this returns. Never raises."""
        ...
