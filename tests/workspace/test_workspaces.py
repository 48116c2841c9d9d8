"""The two ``Workspace`` implementations the batch lifecycle works through: a git run branch
(real repository in tmp_path) and a scratch folder. Each keeps its guards behind the Protocol:
a rewritten ``.git`` fails the batch and is never reused, a merge that breaks the branch is
rolled back, a planted symlink or FIFO is not a result."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.errors import WorkspaceError
from buildrunnerd.plan._model import Task
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.workspace import (
    ChangeKind,
    FileChange,
    GitWorkspace,
    ScratchWorkspace,
    Workspace,
    prepare_run_repo,
)

from ._helpers import run_git, snapshot, task

CONFIG = VerifyConfig()


async def git_workspace(repo: Path, root: Path, tasks: list[Task],
                        test_cmd: str | None = None) -> GitWorkspace:
    run_repo = await prepare_run_repo(repo, "r1")
    return GitWorkspace(run_repo, run_id="r1", worktree_root=root, project_root=repo,
                        base_commit=run_repo.base_commit, test_cmd=test_cmd, plan_tasks=tasks,
                        spec_path=None)


class Seen:
    """The ``on_change`` callback: what the workspace reported live."""

    def __init__(self) -> None:
        self.changes: list[FileChange] = []

    async def __call__(self, kind: ChangeKind, path: str) -> None:
        self.changes.append(FileChange(kind, path))


def branch_head(repo: Path) -> str:
    return run_git(repo, "rev-parse", "refs/heads/buildrunner/r1").strip()


# --- git ----------------------------------------------------------------------------------
async def test_git_workspace_merges_verified_work_into_the_run_branch_only(
        repo: Path, wt_root: Path) -> None:
    t1 = task("t1", "feature.py")
    ws: Workspace = await git_workspace(repo, wt_root, [t1])
    user_before = snapshot(repo)
    path, head = await ws.acquire()
    assert ws.kind == "git" and path.parent == wt_root and head == branch_head(repo)
    seen = Seen()
    async with ws.watch(path, [t1], seen) as watch:
        (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    assert await watch.settle() == ([], None)  # reported live, verified separately
    assert FileChange("created", "feature.py") in seen.changes
    report = await ws.verify(path, [t1], head=head, config=CONFIG, confinement=None)
    assert report.passed, report
    made = await ws.commit(path, "t1", report, head=head)
    assert made.commit is not None and made.parent == head
    await ws.release(path)  # the commit holds the work: the worktree goes back before the merge
    done = await ws.merge(made, report, head=head, batch_id="b1", config=CONFIG,
                          confinement=None)
    assert done.merged and done.commit == branch_head(repo) == made.commit
    assert "return 1" in run_git(repo, "show", f"{done.commit}:feature.py")
    assert snapshot(repo) == user_before  # the user's checkout never moved
    again, again_head = await ws.acquire()
    assert again == path and again_head == done.commit  # the pooled worktree, reset
    await ws.release(again)
    final = await ws.verify_head(CONFIG, None)
    assert final is not None and final.verified is not None
    assert final.verified.commit == done.commit and final.failed is None
    await ws.close()
    assert [p async for p in anyio.Path(wt_root).iterdir()] == []


async def test_git_workspace_a_rewritten_dotgit_fails_and_is_never_reused(
        repo: Path, wt_root: Path) -> None:
    """A hostile batch points its worktree's .git at the user's repository: neither the
    verification nor the merge follows it, the user's branch does not move, and the
    worktree is not handed to the next batch."""
    t1 = task("t1", "README.md")
    ws = await git_workspace(repo, wt_root, [t1])
    user_before = snapshot(repo)
    path, head = await ws.acquire()
    (path / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    (path / "README.md").write_text("def pwned(): ...\n")
    with pytest.raises(WorkspaceError, match="rewr"):
        await ws.verify(path, [t1], head=head, config=CONFIG, confinement=None)
    with pytest.raises(WorkspaceError, match="rewr"):
        await ws.integrate(path, "t1", VerificationReport(True, []), head=head,
                           batch_id="b1", config=CONFIG, confinement=None)
    assert branch_head(repo) == head
    assert snapshot(repo) == user_before
    await ws.release(path)
    second, _ = await ws.acquire()
    assert second != path and not path.exists()
    assert run_git(second, "status", "--porcelain") == ""
    await ws.release(second, reuse=False)
    await ws.close()


async def test_git_workspace_rolls_back_a_merge_that_breaks_the_branch(
        repo: Path, wt_root: Path) -> None:
    """Two batches pass alone and break the tests together: the second merge is undone with
    the branch check's report, and the branch stays at the last verified commit."""
    a, b = task("a", "a.txt"), task("b", "b.txt")
    ws = await git_workspace(repo, wt_root, [a, b],
                             test_cmd="test ! -e a.txt || test ! -e b.txt")
    path_a, head_a = await ws.acquire()
    path_b, head_b = await ws.acquire()
    (path_a / "a.txt").write_text("a\n")
    (path_b / "b.txt").write_text("b\n")
    report_a = await ws.verify(path_a, [a], head=head_a, config=CONFIG, confinement=None)
    report_b = await ws.verify(path_b, [b], head=head_b, config=CONFIG, confinement=None)
    assert report_a.passed and report_b.passed, (report_a, report_b)
    merged_a = await ws.integrate(path_a, "a", report_a, head=head_a, batch_id="ba",
                                  config=CONFIG, confinement=None)
    assert merged_a.merged and merged_a.commit == branch_head(repo)
    undone = await ws.integrate(path_b, "b", report_b, head=head_b, batch_id="bb",
                                config=CONFIG, confinement=None)
    assert not undone.merged and undone.rolled_back is not None
    assert not undone.rolled_back.passed
    assert undone.rolled_back.first_failure().startswith("tests failed")
    assert branch_head(repo) == merged_a.commit  # rolled back to the verified head
    assert undone.commit is not None and undone.commit != merged_a.commit
    final = await ws.verify_head(CONFIG, None)
    assert final is not None and final.verified is not None
    assert final.verified.commit == merged_a.commit
    for path in (path_a, path_b):
        await ws.release(path)
    await ws.close()


# --- scratch ------------------------------------------------------------------------------
async def test_scratch_workspace_keeps_the_files_and_reports_what_changed(
        tmp_path: Path) -> None:
    root = tmp_path / "runs" / "r1" / "scratch"
    t1 = task("t1", "a.py", "pkg/b.py")
    ws: Workspace = ScratchWorkspace(root)
    path, head = await ws.acquire()
    assert ws.kind == "scratch" and path == root and root.is_dir() and head is None
    (root / "a.py").write_text("A = 0\n")
    os.utime(root / "a.py", ns=(10**9, 10**9))
    seen = Seen()
    async with ws.watch(path, [t1], seen) as watch:
        (root / "a.py").write_text("A = 1\n")
        (root / "pkg").mkdir()
        (root / "pkg" / "b.py").write_text("B = 1\n")
    changes, report = await watch.settle()
    assert sorted(changes) == [FileChange("created", "pkg/b.py"),
                               FileChange("modified", "a.py")]
    assert seen.changes == []  # nothing live: all at once, in the caller's transaction
    assert report is not None and report.passed, report
    assert await ws.verify(path, [t1], head=None, config=CONFIG, confinement=None) == report
    made = await ws.commit(path, "t1", report, head=None)
    await ws.release(path)
    done = await ws.merge(made, report, head=None, batch_id="b1", config=CONFIG,
                          confinement=None)
    assert made.commit is None and done.merged and done.commit is None
    assert await ws.verify_head(CONFIG, None) is None
    await ws.close()
    assert (root / "a.py").read_text() == "A = 1\n"  # the results stay where they were made
    assert (root / "pkg" / "b.py").read_text() == "B = 1\n"


async def test_scratch_workspace_a_planted_symlink_or_fifo_is_not_a_result(
        tmp_path: Path) -> None:
    """A hostile batch makes its named files a symlink to a secret, a FIFO (which would
    block a reader) and a file behind a symlinked folder: none counts as a result, nothing
    is read through a symlink (the folder's file is not even seen), and nothing blocks."""
    root = tmp_path / "scratch"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (outside / "c.py").write_text("C = 1\n")
    t1 = task("t1", "a.py", "fifo.py", "sub/c.py")
    ws = ScratchWorkspace(root)
    path, _ = await ws.acquire()
    async with ws.watch(path, [t1], Seen()) as watch:
        (root / "a.py").symlink_to(outside / "id_rsa")
        os.mkfifo(root / "fifo.py")
        (root / "sub").symlink_to(outside, target_is_directory=True)
    changes, report = await watch.settle()
    assert report is not None and not report.passed
    failed = {c.file: c.message for c in report.failures()}
    assert set(failed) == {"a.py", "fifo.py", "sub/c.py"}, failed
    assert "not a regular file" in failed["fifo.py"]
    assert all("BEGIN" not in m for m in failed.values())
    assert FileChange("created", "sub/c.py") not in changes
    again = await ws.verify(path, [t1], head=None, config=CONFIG, confinement=None)
    assert again == report
