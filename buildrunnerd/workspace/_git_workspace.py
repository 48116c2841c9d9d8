"""The workspace of a run in a git repository: its run branch, pooled worktrees, merges.

A batch works in a worktree of the run branch's head (one of the run's pool, reset, or a new
one: :meth:`RunRepo.acquire_worktree`), watched by the :class:`FileMonitor`, verified by
:func:`verify` against the commit it started from, then committed and merged into the run
branch. Merges and the run branch's check after each one happen one batch at a time (this
workspace's branch lock): a merge whose new head fails the tests is rolled back with a
compare-and-swap, and the work built on a rolled-back commit must run again. The last passing
check of the branch (``verified``) and the protected tests that passed there (the baseline
of the next check) are this workspace's state.

Trust decisions never come from the worktree (the model writes it): the allowlist is read at
the run's base commit, the test command and environment from the user's checkout.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import anyio
import structlog

from buildrunnerd.config import VerifyConfig
from buildrunnerd.errors import BuildRunnerError, WorkspaceError
from buildrunnerd.plan._model import Task
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.sandbox import Confinement
from buildrunnerd.workspace._git import git
from buildrunnerd.workspace._monitor import ChangeKind, FileMonitor, OnChange
from buildrunnerd.workspace._repo import RunRepo
from buildrunnerd.workspace._report import has_python_tests
from buildrunnerd.workspace._tree import commit_tree, known_tree_shape
from buildrunnerd.workspace._verify import verify
from buildrunnerd.workspace._workspace import (
    BatchCommit,
    FileChange,
    HeadCheck,
    Integration,
    VerifiedHead,
)
from buildrunnerd.workspace._worktree import worktree_git

__all__ = ["GitWorkspace", "spec_relpath"]

_log = structlog.get_logger("buildrunnerd.workspace")

_RELEASE_TIMEOUT_S = 60.0  # removing a worktree, shielded: a leftover is cleaned at next start
_WATCH_GIT_TIMEOUT_S = 60.0  # the file monitor's git calls (the head's folders, a rescan)


def spec_relpath(spec_path: str | None, project_root: Path) -> str | None:
    """The run's spec as a path in the repository (for the scope check), or None."""
    if not spec_path:
        return None
    path = Path(spec_path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(project_root.resolve()).as_posix()
    except (ValueError, OSError):
        return None


class GitWorkspace:
    """A :class:`~._workspace.Workspace` on ``run_repo``'s branch; worktrees under
    ``worktree_root``. ``project_root`` is the user's checkout (the test environment is found
    there); ``base_commit`` the run's recorded start; ``plan_tasks`` every task of the run
    (a batch may not change another batch's files)."""

    def __init__(
        self, run_repo: RunRepo, *, run_id: str, worktree_root: Path, project_root: Path,
        base_commit: str | None, test_cmd: str | None, plan_tasks: Sequence[Task],
        spec_path: str | None,
    ) -> None:
        self.run_repo = run_repo
        self._run_id = run_id
        self._root = Path(worktree_root)
        self._project_root = Path(project_root)
        self._base_commit = base_commit
        self._test_cmd = test_cmd
        self._plan_files = frozenset(f for t in plan_tasks for f in t.files)
        self._spec_path = spec_relpath(spec_path, self._project_root)
        # Merges and the run branch's verification after each one, one batch at a time.
        self._branch_lock = anyio.Lock()
        self.verified: VerifiedHead | None = None  # the last passing branch check
        self.baseline_passed: list[str] | None = None  # tests that passed at verified commit
        self._rolled_back = False  # a merge of this run was rolled back (its head failed)
        # Merges in the run branch whose check is deferred to the next merge's (in branch
        # order), and how many batches wait for the branch lock to merge.
        self._pending: list[_PendingCheck] = []
        self._merging = 0
        # Worktrees just handed out clean at their head and not watched yet, with that head
        # (the file monitor then watches the head's folders without walking the tree).
        self._at_head: dict[Path, str] = {}

    def __repr__(self) -> str:
        return f"GitWorkspace({self.run_repo!r})"

    @property
    def kind(self) -> Literal["git"]:
        return "git"

    async def acquire(self) -> tuple[Path, str | None]:
        """A clean worktree at the run branch's head (its path and head commit): a reused one
        when the run has one idle, so a batch costs the size of its change."""
        path = await self.run_repo.acquire_worktree(self._root)
        # The commit the worktree starts from: verification's secret scan looks at lines added
        # since then (read from the worktree, as the branch may move on meanwhile).
        head = await self.run_repo.worktree_head(path)
        self._at_head[path] = head
        return path, head

    async def release(self, path: Path, *, keep: bool = False, reuse: bool = True) -> None:
        if keep:
            return
        with anyio.move_on_after(_RELEASE_TIMEOUT_S, shield=True):
            try:
                await self.run_repo.release_worktree(path, reuse=reuse)
            except Exception as exc:  # a leftover is cleaned at the next start; never fail on it
                _log.warning("worktree.remove_failed", path=str(path), error=str(exc))

    @asynccontextmanager
    async def watch(self, path: Path, tasks: Sequence[Task],
                    on_change: OnChange) -> AsyncIterator[_LiveWatch]:
        """The file monitor on the worktree. Just acquired, it is clean at its head: the
        folders to watch are the head's trees (the shape the reset computed for that tree
        id, else one ``ls-tree``; no walk of the files); a worktree watched again (a fix-up
        round: the last round's folders are there too) has its folders listed. The exact
        view of the change, if inotify ever drops events, is git's ``status`` (stat data
        with ctime: a forged mtime does not hide a change)."""
        opts = await worktree_git(path, timeout_s=_WATCH_GIT_TIMEOUT_S)
        folders = None
        head = self._at_head.pop(path, None)
        if head is not None:
            # The daemon's own record of the head's tree (a tree id names its content).
            shape = known_tree_shape(head)
            folders = (sorted(shape.folders) if shape is not None
                       else await _head_folders(path, opts))
        monitor = FileMonitor(path, on_change, folders=folders,
                              rescan=partial(_changed_files, path, opts))
        async with monitor:
            yield _LiveWatch(monitor)
        if monitor.events_dropped:
            _log.info("monitor.events_dropped", path=str(path))

    async def verify(self, path: Path, tasks: Sequence[Task], *, head: str | None,
                     config: VerifyConfig, confinement: Confinement | None) -> VerificationReport:
        own = {f for t in tasks for f in t.files}
        return await verify(
            path, list(tasks), base_commit=head or self._base_commit, test_cmd=self._test_cmd,
            config=config, confinement=confinement,
            # The allowlist is the run's, never one an earlier batch of this run merged.
            run_base_commit=self._base_commit or self.run_repo.base_commit,
            project_root=self._project_root, other_files=set(self._plan_files - own),
            spec_path=self._spec_path, baseline_passed=self.baseline_passed,
            clean=self.run_repo.clean_since(path),
        )

    async def commit(self, path: Path, message: str, report: VerificationReport | None, *,
                     head: str | None) -> BatchCommit:
        # A passed verification staged, checked and wrote the tree to commit: the commit
        # takes that tree as it is (no staging again, nothing unchecked added).
        verified = report is not None and report.passed and head is not None
        return await self.run_repo.commit_batch(path, message,
                                                verified_from=head if verified else None)

    async def merge(self, made: BatchCommit, report: VerificationReport | None, *,
                    head: str | None, batch_id: str, config: VerifyConfig,
                    confinement: Confinement | None) -> Integration:
        self._merging += 1  # waiting for the lock to merge (see _PendingCheck)
        waited = True
        try:
            async with self._branch_lock:
                self._merging -= 1
                waited = False
                # A batch acquiring a worktree meanwhile waits for this merge's fast-forward
                # (one update-ref, not the check after it) and starts from the new head.
                with self.run_repo.merge_coming(made):
                    if not await self._started_on_branch(head):
                        return Integration(merged=False, stale_start=True)
                    result = await self.run_repo.merge_batch(made, merge_root=self._root)
                commit, previous = result.commit, result.previous
                if not result.merged:
                    return Integration(merged=False, commit=commit,
                                       conflict_files=list(result.conflict_files or []))
                if commit is None or previous is None or not config.branch_check:
                    return Integration(merged=True, commit=commit)
                if await self._tested_tree(commit, result.tree, report, config):
                    self._resolve_pending(passed_upto=len(self._pending))  # below it
                    return Integration(merged=True, commit=commit)
                pending = self._join_pending(commit, previous)
                if pending is None:
                    return await self._check_merge(commit, previous, batch_id, config,
                                                   confinement)
                if self._merging == 0 or len(self._pending) >= _MAX_PENDING_CHECKS:
                    await self._check_pending(config, confinement)  # this merge's and below
                    assert pending.result is not None  # _check_pending resolves every entry
                    return pending.result
            # Another batch waits to merge: it merges on top of this one, and one check of
            # the branch then covers both (the lock is the run's bound: every merge and every
            # check of the branch hold it). Queued again behind it, then checked here if the
            # last merge of the group has not checked it.
            async with self._branch_lock:
                if pending.result is None:
                    await self._check_pending(config, confinement)
                assert pending.result is not None  # _check_pending resolves every entry
                return pending.result
        finally:
            if waited:
                self._merging -= 1

    async def integrate(self, path: Path, message: str, report: VerificationReport | None, *,
                        head: str | None, batch_id: str, config: VerifyConfig,
                        confinement: Confinement | None) -> Integration:
        """:meth:`commit` then :meth:`merge`, for a caller that keeps ``path`` until the
        merge is done (tests, benches); the daemon releases the worktree between the two."""
        made = await self.commit(path, message, report, head=head)
        return await self.merge(made, report, head=head, batch_id=batch_id, config=config,
                                confinement=confinement)

    async def verify_head(self, config: VerifyConfig,
                          confinement: Confinement | None) -> HeadCheck | None:
        if not config.branch_check:
            return None
        async with self._branch_lock:
            await self._check_pending(config, confinement)
            head = await self.run_repo.head()
            # Never the check made right after the last merge: that was the batch's own test
            # run, or a run in a worktree of the pool, where batches' code has been (code that
            # tests where it runs, a folder's inode flags). The run's result rests on a
            # worktree no batch ever had, at a path no batch saw.
            report = await self._verify_branch(head, config, confinement, fresh=True)
        if report is None:
            return None
        if report.passed and self.verified is not None:
            return HeadCheck(verified=self.verified)
        reasons = [c.message for c in report.failures()]
        return HeadCheck(failed=f"the run branch's head {head[:12]} fails the final "
                         "verification: "
                         + "; ".join(r.splitlines()[0] for r in reasons if r)[:2000])

    async def close(self) -> None:
        """Remove the run's idle (reusable) worktrees, all at once (:meth:`RunRepo.close`);
        a leftover is cleaned at next start."""
        with anyio.move_on_after(_RELEASE_TIMEOUT_S, shield=True):
            try:
                await self.run_repo.close()
            except BuildRunnerError as exc:
                _log.warning("worktree.close_failed", run_id=self._run_id, error=str(exc))

    async def _check_merge(self, commit: str, previous: str, batch_id: str,
                           config: VerifyConfig,
                           confinement: Confinement | None) -> Integration:
        """Check the run branch's head ``commit`` (the merge just made on ``previous``, the
        caller holds the lock, nothing pending): merged, or rolled back with the report."""
        branch_report = await self._verify_branch(commit, config, confinement)
        if branch_report is None or branch_report.passed:
            return Integration(merged=True, commit=commit)
        if not await self.run_repo.rollback(commit, previous):
            branch = self.run_repo.branch
            raise WorkspaceError(
                f"run {self._run_id}: branch {branch} moved while its merge of "
                f"{batch_id} was being verified; is another process writing to it? Stop "
                "it and retry the task", data={"branch": branch, "commit": commit})
        self._rolled_back = True
        return Integration(merged=False, commit=commit, rolled_back=branch_report)

    def _join_pending(self, commit: str, previous: str) -> _PendingCheck | None:
        """The merge ``commit`` (made on ``previous``) as a pending entry, to be checked with
        the pending merges below it, or (when another batch waits to merge) by a later merge
        on top of it. None when it is checked alone now: nothing pending and nobody waiting,
        or the pending merges are not a chain ending at ``previous`` (the branch was moved
        from outside; their own batches check them)."""
        if self._pending and self._pending[-1].commit != previous:
            return None
        if not self._pending and self._merging == 0:
            return None
        entry = _PendingCheck(commit, previous)
        self._pending.append(entry)
        return entry

    async def _check_pending(self, config: VerifyConfig,
                             confinement: Confinement | None) -> None:
        """Check the branch's head for every pending merge (the caller holds the lock):
        when it passes, each is merged; when it fails, the first merge whose head fails is
        found (the heads below it are checked in order), the branch is rolled back to the
        head before it, that batch gets the report, and the ones merged on top of it run
        again (``stale_start``: their merges held its work)."""
        pending = self._pending
        if not pending:
            return
        head_report = await self._verify_branch(pending[-1].commit, config, confinement)
        if head_report is None or head_report.passed:
            self._resolve_pending(passed_upto=len(pending))
            return
        failing, report = len(pending) - 1, head_report
        for index, entry in enumerate(pending[:-1]):
            found = await self._verify_branch(entry.commit, config, confinement)
            if found is not None and not found.passed:
                failing, report = index, found
                break
        if not await self.run_repo.rollback(pending[-1].commit, pending[failing].previous):
            branch = self.run_repo.branch
            raise WorkspaceError(
                f"run {self._run_id}: branch {branch} moved while its merges were being "
                "verified; is another process writing to it? Stop it and retry the task",
                data={"branch": branch, "commit": pending[-1].commit})
        self._rolled_back = True
        pending[failing].result = Integration(merged=False, commit=pending[failing].commit,
                                              rolled_back=report)
        for entry in pending[failing + 1:]:
            entry.result = Integration(merged=False, stale_start=True)
        self._resolve_pending(passed_upto=failing)

    def _resolve_pending(self, *, passed_upto: int) -> None:
        """The first ``passed_upto`` pending merges are in a passing head: merged. Every
        pending entry has its result now (the rest were given theirs)."""
        for entry in self._pending[:passed_upto]:
            entry.result = Integration(merged=True, commit=entry.commit)
        self._pending = []

    async def _started_on_branch(self, head: str | None) -> bool:
        """Whether the commit a worktree started from is still on the run branch (a
        rolled-back merge is not: work built on it must run again)."""
        if head is None or not self._rolled_back:
            return True
        branch_head = await self.run_repo.head()
        return bool(await self.run_repo.is_ancestor(head, branch_head))

    async def _tested_tree(self, commit: str, tree: str | None,
                           report: VerificationReport | None, config: VerifyConfig) -> bool:
        """Whether the merge committed exactly the tree the batch's verification tested (a
        fast-forward of a worktree that held nothing but its staged files): then the batch's
        own test run is the branch check, and it becomes the run's baseline. ``tree``: the
        merged commit's tree as the merge reported it (None: read it)."""
        if not config.branch_check or report is None or not report.passed or not report.tree:
            return False
        if tree is None:
            res = await git(["rev-parse", f"{commit}^{{tree}}"], cwd=self.run_repo.repo,
                            timeout_s=config.git_timeout_s, check=False)
            tree = res.stdout.strip() if res.ok else None
        if tree != report.tree:
            return False
        self._record_verified(commit, report)
        return True

    async def _verify_branch(self, commit: str, config: VerifyConfig,
                             confinement: Confinement | None, *,
                             fresh: bool = False) -> VerificationReport | None:
        """Run the full test command on ``commit`` of the run branch, in a detached worktree
        of its own (the caller holds the branch lock): one of the run's pool, or with
        ``fresh`` a new one (a random name), removed after. None: ``verify.branch_check =
        false``. A passing check becomes the run's baseline."""
        if not config.branch_check:
            return None
        if not (self._test_cmd or config.test_cmd):
            # Nothing to detect a test command from: no checkout needed to know it.
            tree = await commit_tree(self.run_repo.repo, commit, timeout_s=config.git_timeout_s)
            if not has_python_tests(tree) and "package.json" not in tree:
                self.verified = VerifiedHead(commit, tests="no tests found: nothing to run")
                return VerificationReport(passed=True, checks=[])
        # A clean worktree of the run's pool reset to ``commit`` (the branch's head, or a
        # head below it when a group of merges is searched for the one that broke it).
        if fresh:
            path = await self.run_repo.add_worktree(
                self._root, f"final-{secrets.token_hex(4)}", commit)
        else:
            path = await self.run_repo.acquire_worktree(self._root, at=commit)
            if await self.run_repo.worktree_head(path) != commit:
                await self.run_repo.remove_worktree(path)
                path = await self.run_repo.add_worktree(self._root, f"branch-{commit[:12]}",
                                                        commit)
        try:
            report = await verify(path, [], base_commit=commit, test_cmd=self._test_cmd,
                                  config=config, confinement=confinement,
                                  project_root=self._project_root,
                                  baseline_passed=self.baseline_passed, batch_checks=False)
        finally:
            await self.release(path, reuse=not fresh)
        if report.passed:
            self._record_verified(commit, report)
        return report

    def _record_verified(self, commit: str, report: VerificationReport) -> None:
        """``commit`` of the run branch passed ``report``: the last verified commit, and
        (when a test report was read) its passing tests are the next check's baseline."""
        tests = report.check("tests")
        self.verified = VerifiedHead(commit, test_command=report.test_command,
                                     counts=report.test_counts,
                                     tests=tests.message if tests is not None else None)
        if report.test_counts is not None:
            self.baseline_passed = list(report.passed_tests)


# At most this many merges share one check of the run branch: a failing group's search for
# the merge that broke it checks up to this many heads.
_MAX_PENDING_CHECKS = 8


class _PendingCheck:
    """A merge whose check of the run branch is left to a later merge on top of it (its
    head then holds this merge: one check covers both). ``result`` once checked."""

    def __init__(self, commit: str, previous: str) -> None:
        self.commit = commit
        self.previous = previous
        self.result: Integration | None = None


class _LiveWatch:
    """The file monitor reported every change while it ran."""

    def __init__(self, monitor: FileMonitor) -> None:
        self._monitor = monitor

    @property
    def events_dropped(self) -> bool:
        """Whether inotify dropped events, so the exit asked git's status for the change."""
        return self._monitor.events_dropped

    async def settle(self) -> tuple[list[FileChange], VerificationReport | None]:
        return [], None


async def _head_folders(path: Path, opts: Sequence[str]) -> list[str] | None:
    """The folders of the worktree's head commit (what a clean worktree at its head holds:
    its trees), relative to the worktree; None (the monitor lists them) if git fails."""
    res = await git([*opts, "ls-tree", "-r", "-d", "-z", "--name-only", "HEAD"], cwd=path,
                    timeout_s=_WATCH_GIT_TIMEOUT_S, check=False)
    if not res.ok:
        return None
    return [os.fsdecode(name) for name in res.stdout_bytes.split(b"\0") if name]


async def _changed_files(path: Path, opts: Sequence[str]) -> list[tuple[ChangeKind, str]]:
    """git's exact view of what changed in the worktree since its head: untracked, ignored
    and added files are created, tracked ones modified (deletions are not file events). A
    folder git does not descend into (a nested repository) is left to the monitor's walk."""
    res = await git([*opts, "status", "--porcelain", "-z", "--no-renames",
                     "--untracked-files=all", "--ignored=traditional",
                     "--ignore-submodules=all"],
                    cwd=path, timeout_s=_WATCH_GIT_TIMEOUT_S)
    changes: list[tuple[ChangeKind, str]] = []
    for record in res.stdout_bytes.split(b"\0"):
        code, rel = record[:2], os.fsdecode(record[3:])
        if not rel or code.strip() == b"D":
            continue
        created = code in (b"??", b"!!") or code.startswith(b"A")
        changes.append(("created" if created else "modified", rel.rstrip("/")))
    return changes
