"""The workspace glue of a batch: the only calls into :mod:`buildrunnerd.workspace`.

A run without a git repository (``spec_text`` submitted with no ``repo``) works in a plain
scratch directory: no worktree, no merge, and verification is reduced to "every named file
exists and is non-empty" (see docs/architecture.md). The benchmarks use that mode to measure
the daemon alone.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from buildrunnerd.daemon._active import ActiveRun
from buildrunnerd.daemon._context import BatchContext
from buildrunnerd.plan._model import Task
from buildrunnerd.sandbox import Confinement, WorktreePathError, lstat_in
from buildrunnerd.store._records import NewEvent

if TYPE_CHECKING:
    from buildrunnerd.config import Config

__all__ = ["mtime_snapshot", "scratch_after", "ws_merge", "ws_prepare", "ws_remove",
           "ws_started_on_branch", "ws_tested_tree", "ws_verify", "ws_verify_branch"]

_log = structlog.get_logger("buildrunnerd.batch")


async def ws_prepare(run: ActiveRun) -> tuple[Path, str | None]:
    """A clean worktree at the run branch's head (its path and head commit): a reused one
    when the run has one idle, so a batch costs the size of its change."""
    if run.run_repo is None:
        if not run.scratch_ready:
            await anyio.Path(run.scratch_dir).mkdir(parents=True, exist_ok=True)
            run.scratch_ready = True
        return run.scratch_dir, None
    path: Path = await run.run_repo.acquire_worktree(run.worktree_root)
    # The commit the worktree starts from: verification's secret scan looks at lines added
    # since then (read from the worktree, as the branch may move on meanwhile).
    head: str = await run.run_repo.worktree_head(path)
    return path, head


async def ws_remove(run: ActiveRun, path: Path, *, keep: bool = False,
                     reuse: bool = True) -> None:
    if run.run_repo is None or keep:
        return
    with anyio.move_on_after(60.0, shield=True):
        try:
            await run.run_repo.release_worktree(path, reuse=reuse)
        except Exception as exc:  # a leftover is cleaned at the next start; never fail on it
            _log.warning("worktree.remove_failed", path=str(path), error=str(exc))


async def ws_verify(
    run: ActiveRun, path: Path, tasks: list[Task], base: str | None, config: Config,
    confinement: Confinement | None,
) -> dict[str, Any]:
    """The verification report as a dict (``passed``, ``checks``)."""
    if run.run_repo is None:
        return await _scratch_verify(path, tasks)
    from buildrunnerd.workspace import verify

    own = {f for t in tasks for f in t.files}
    other_files = {f for t in run.plan.tasks for f in t.files} - own
    report = await verify(
        path, tasks, base_commit=base or run.base_commit, test_cmd=run.test_cmd,
        config=config.verify, confinement=confinement,
        # The allowlist is the run's, never one an earlier batch of this run merged.
        run_base_commit=run.base_commit or run.run_repo.base_commit,
        project_root=run.repo, other_files=other_files, spec_path=_spec_relpath(run),
        baseline_passed=run.baseline_passed,
    )
    result: dict[str, Any] = report.to_dict()
    return result


def _spec_relpath(run: ActiveRun) -> str | None:
    """The run's spec as a path in the repository (for the scope check), or None."""
    spec = run.plan.spec_path
    if not spec or run.repo is None:
        return None
    path = Path(spec)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(run.repo.resolve()).as_posix()
    except (ValueError, OSError):
        return None


async def ws_verify_branch(run: ActiveRun, commit: str, config: Config,
                           confinement: Confinement | None) -> dict[str, Any] | None:
    """Run the full test command on ``commit`` of the run branch, in a detached worktree of
    its own (the caller holds ``run.branch_lock``). None: nothing to check (a scratch run, or
    ``verify.branch_check = false``). A passing check becomes the run's baseline."""
    if run.run_repo is None or not config.verify.branch_check:
        return None
    from buildrunnerd.workspace import verify
    from buildrunnerd.workspace._report import has_python_tests
    from buildrunnerd.workspace._tree import commit_tree

    if not (run.test_cmd or config.verify.test_cmd):
        # Nothing to detect a test command from: no checkout needed to know it.
        tree = await commit_tree(run.run_repo.repo, commit, timeout_s=config.verify.git_timeout_s)
        if not has_python_tests(tree) and "package.json" not in tree:
            run.verified = {"commit": commit, "test_command": None, "counts": None,
                            "tests": "no tests found: nothing to run"}
            return {"passed": True, "checks": [], "test_command": None}
    # A clean worktree of the run's pool (the caller holds branch_lock, so the head is
    # ``commit``); a fresh one at ``commit`` if the branch was moved from outside.
    path: Path = await run.run_repo.acquire_worktree(run.worktree_root)
    if await run.run_repo.worktree_head(path) != commit:
        await run.run_repo.remove_worktree(path)
        path = await run.run_repo.add_worktree(run.worktree_root, f"branch-{commit[:12]}",
                                               commit)
    try:
        report = await verify(path, [], base_commit=commit, test_cmd=run.test_cmd,
                              config=config.verify, confinement=confinement,
                              project_root=run.repo,
                              baseline_passed=run.baseline_passed, batch_checks=False)
    finally:
        await ws_remove(run, path)
    data: dict[str, Any] = report.to_dict()
    if report.passed:
        tests = next((c for c in report.checks if c.name == "tests"), None)
        run.verified = {"commit": commit, "test_command": report.test_command,
                        "counts": report.test_counts,
                        "tests": tests.message if tests is not None else None}
        if report.test_counts is not None:
            run.baseline_passed = list(report.passed_tests)
    return data


async def _scratch_verify(path: Path, tasks: list[Task]) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(_scratch_checks, path, tasks)


def _scratch_checks(path: Path, tasks: list[Task]) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []
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
                checks.append({
                    "name": "files", "passed": False, "file": rel, "line": None,
                    "message": f"{rel} (task {task.id}) {state}",
                    "output_tail": "",
                })
    if not checks:
        checks.append({"name": "files", "passed": True, "message": "every named file exists",
                       "file": None, "line": None, "output_tail": ""})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


async def ws_merge(
    run: ActiveRun, path: Path, message: str
) -> tuple[bool, str | None, list[str], str | None]:
    """Commit the worktree and merge it into the run branch: (merged, commit, conflict files,
    the branch's head before the merge)."""
    if run.run_repo is None:
        return True, None, [], None
    result = await run.run_repo.commit_and_merge(path, message)
    return (bool(result.merged), result.commit, list(result.conflict_files or []),
            result.previous)


async def ws_tested_tree(run: ActiveRun, commit: str, report: dict[str, Any] | None,
                          config: Config) -> bool:
    """Whether the merge committed exactly the tree the batch's verification tested (a
    fast-forward of a worktree that held nothing but its staged files): then the batch's own
    test run is the branch check, and it becomes the run's baseline."""
    if (run.run_repo is None or not config.verify.branch_check or report is None
            or not report.get("passed") or not report.get("tree")):
        return False
    from buildrunnerd.workspace._git import git

    res = await git(["rev-parse", f"{commit}^{{tree}}"], cwd=run.run_repo.repo,
                    timeout_s=config.verify.git_timeout_s, check=False)
    if not res.ok or res.stdout.strip() != report["tree"]:
        return False
    tests = next((c for c in report.get("checks", []) if c.get("name") == "tests"), None)
    run.verified = {"commit": commit, "test_command": report.get("test_command"),
                    "counts": report.get("test_counts"),
                    "tests": tests.get("message") if tests else None}
    if report.get("test_counts") is not None:
        run.baseline_passed = list(report.get("passed_tests") or [])
    return True


async def ws_started_on_branch(run: ActiveRun, head: str | None) -> bool:
    """Whether the commit a worktree started from is still on the run branch (a rolled-back
    merge is not: work built on it must run again)."""
    if run.run_repo is None or head is None or not run.rolled_back:
        return True
    branch_head = await run.run_repo.head()
    return bool(await run.run_repo.is_ancestor(head, branch_head))


async def scratch_after(
    ctx: BatchContext, path: Path, tasks: list[Task], before: dict[str, float]
) -> tuple[list[NewEvent], dict[str, Any]]:
    """Scratch mode, after the backend: the file events and the verification report, in one
    thread hop. There is no watcher here (a shared directory, and the benchmark's path):
    comparing the named files' mtimes is exact for what a backend is asked to write."""

    def work() -> tuple[dict[str, float], dict[str, Any]]:
        return _mtimes(path, tasks), _scratch_checks(path, tasks)

    after, report = await anyio.to_thread.run_sync(work)
    events: list[NewEvent] = []
    for rel, mtime in after.items():
        kind = "created" if rel not in before else "modified" if mtime != before[rel] else None
        if kind is not None:
            events.append(NewEvent(ctx.run.id, f"file.{kind}", {"path": rel},
                                   batch_id=ctx.batch_id))
    return events, report


async def mtime_snapshot(path: Path, tasks: list[Task]) -> dict[str, float]:
    return await anyio.to_thread.run_sync(_mtimes, path, tasks)


def _mtimes(path: Path, tasks: list[Task]) -> dict[str, float]:
    found: dict[str, float] = {}
    for task in tasks:
        for rel in task.files:
            try:
                found[rel] = lstat_in(path, rel).st_mtime_ns / 1e9
            except WorktreePathError:  # missing, or behind a symlink: not followed
                continue
    return found
