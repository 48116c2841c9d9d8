"""The workspace of a run without a repository: one plain folder, whose files are the results.

No worktree, no merge: every batch works in the run's scratch folder
(``<state>/runs/<run_id>/scratch``, which ``run.get`` and ``brctl submit`` name), and
verification is reduced to "every file the tasks name is a non-empty regular file". There is
no file watcher (a shared folder, and the benchmarks' path): comparing the named files' mtimes
before and after the backend is exact for what a backend is asked to write, and the file
events and the report come out of one thread hop.

The folder's content was written by the model: a named file is looked at with
``sandbox.lstat_in`` only, so a symlink is never followed and a FIFO or device is not a file.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import anyio

from buildrunnerd.config import VerifyConfig
from buildrunnerd.plan._model import Task
from buildrunnerd.protocol import CheckResult, VerificationReport
from buildrunnerd.sandbox import Confinement, WorktreePathError, lstat_in
from buildrunnerd.workspace._monitor import OnChange
from buildrunnerd.workspace._workspace import BatchCommit, FileChange, HeadCheck, Integration

__all__ = ["ScratchWorkspace", "scratch_checks"]


class ScratchWorkspace:
    """A :class:`~._workspace.Workspace` in the folder ``root`` (made at the first batch)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._ready = False

    def __repr__(self) -> str:
        return f"ScratchWorkspace(root={str(self.root)!r})"

    @property
    def kind(self) -> Literal["scratch"]:
        return "scratch"

    async def acquire(self) -> tuple[Path, str | None]:
        if not self._ready:
            await anyio.Path(self.root).mkdir(parents=True, exist_ok=True)
            self._ready = True
        return self.root, None

    async def release(self, path: Path, *, keep: bool = False, reuse: bool = True) -> None:
        return None  # the folder is the run's result: it stays

    @asynccontextmanager
    async def watch(self, path: Path, tasks: Sequence[Task],
                    on_change: OnChange) -> AsyncIterator[_ScratchWatch]:
        before = await anyio.to_thread.run_sync(_mtimes, path, tasks)
        yield _ScratchWatch(path, tasks, before)

    async def verify(self, path: Path, tasks: Sequence[Task], *, head: str | None,
                     config: VerifyConfig, confinement: Confinement | None) -> VerificationReport:
        return await anyio.to_thread.run_sync(scratch_checks, path, tasks)

    async def commit(self, path: Path, message: str, report: VerificationReport | None, *,
                     head: str | None) -> BatchCommit:
        return BatchCommit(message=message)  # the files are already where the results stay

    async def merge(self, made: BatchCommit, report: VerificationReport | None, *,
                    head: str | None, batch_id: str, config: VerifyConfig,
                    confinement: Confinement | None) -> Integration:
        return Integration(merged=True)

    async def integrate(self, path: Path, message: str, report: VerificationReport | None, *,
                        head: str | None, batch_id: str, config: VerifyConfig,
                        confinement: Confinement | None) -> Integration:
        """:meth:`commit` then :meth:`merge`, for a caller that keeps ``path`` until the
        merge is done (tests); the daemon calls the two itself."""
        made = await self.commit(path, message, report, head=head)
        return await self.merge(made, report, head=head, batch_id=batch_id, config=config,
                                confinement=confinement)

    async def verify_head(self, config: VerifyConfig,
                          confinement: Confinement | None) -> HeadCheck | None:
        return None  # no branch: each batch's check was the whole check

    async def close(self) -> None:
        return None


class _ScratchWatch:
    def __init__(self, path: Path, tasks: Sequence[Task], before: dict[str, float]) -> None:
        self._path = path
        self._tasks = tasks
        self._before = before

    async def settle(self) -> tuple[list[FileChange], VerificationReport | None]:
        def work() -> tuple[dict[str, float], VerificationReport]:
            return _mtimes(self._path, self._tasks), scratch_checks(self._path, self._tasks)

        after, report = await anyio.to_thread.run_sync(work)
        changes: list[FileChange] = []
        for rel, mtime in after.items():
            if rel not in self._before:
                changes.append(FileChange("created", rel))
            elif mtime != self._before[rel]:
                changes.append(FileChange("modified", rel))
        return changes, report


def scratch_checks(path: Path, tasks: Sequence[Task]) -> VerificationReport:
    """The scratch verification: every named file is a non-empty regular file."""
    checks: list[CheckResult] = []
    for task in tasks:
        for rel in task.files:
            # Never through a symlink, and a FIFO or device is not a file (sandbox._fs).
            try:
                st = lstat_in(path, rel)
                present = stat.S_ISREG(st.st_mode) and st.st_size > 0
                state = "is empty" if stat.S_ISREG(st.st_mode) else "is not a regular file"
            except WorktreePathError:
                present, state = False, "is missing"
            if not present:
                checks.append(CheckResult("files", False, f"{rel} (task {task.id}) {state}",
                                          file=rel))
    if not checks:
        checks.append(CheckResult("files", True, "every named file exists"))
    return VerificationReport(passed=all(c.passed for c in checks), checks=checks)


def _mtimes(path: Path, tasks: Sequence[Task]) -> dict[str, float]:
    found: dict[str, float] = {}
    for task in tasks:
        for rel in task.files:
            try:
                found[rel] = lstat_in(path, rel).st_mtime_ns / 1e9
            except WorktreePathError:  # missing, or behind a symlink: not followed
                continue
    return found
