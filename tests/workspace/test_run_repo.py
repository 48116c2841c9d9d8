"""The run repository: its branch, the checks on the user's repository, re-opening it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buildrunnerd.errors import RepoError, WorkspaceError
from buildrunnerd.workspace import RunRepo, prepare_run_repo

from ._helpers import make_repo, real, run_git, snapshot


async def test_creates_run_branch_at_head_without_touching_checkout(repo: Path) -> None:
    (repo / "notes.txt").write_text("untracked, the user's own\n")
    before = snapshot(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    assert run_repo.branch == "buildrunner/r1"
    assert run_repo.repo == real(repo)
    assert run_repo.base_commit == before["head"]
    assert run_git(repo, "rev-parse", "buildrunner/r1").strip() == before["head"]
    assert snapshot(repo) == before
    assert await run_repo.head() == before["head"]


async def test_subfolder_resolves_to_repository_root(repo: Path) -> None:
    (repo / "pkg").mkdir()
    run_repo = await prepare_run_repo(repo / "pkg", "r2")
    assert run_repo.repo == real(repo)


async def test_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepoError, match="not a git repository; run `git init") as info:
        await prepare_run_repo(plain, "r1")
    assert info.value.data["reason"] == "not_a_repository"
    assert info.value.data["repo"] == str(plain)


async def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="no such folder") as info:
        await prepare_run_repo(tmp_path / "nope", "r1")
    assert info.value.data["reason"] == "missing"


async def test_dirty_tree_is_refused_unless_allowed(repo: Path) -> None:
    (repo / "app.py").write_text("changed = True\n")
    with pytest.raises(RepoError, match=r"uncommitted changes in app\.py.*--allow-dirty") as info:
        await prepare_run_repo(repo, "r1")
    assert info.value.data["reason"] == "dirty"
    assert "buildrunner/r1" not in run_git(repo, "branch", "--list")
    before = snapshot(repo)
    run_repo = await prepare_run_repo(repo, "r1", allow_dirty=True)
    # The branch starts from HEAD: the uncommitted edit is neither in it nor lost.
    assert run_git(repo, "show", f"{run_repo.branch}:app.py").startswith("def hello")
    assert snapshot(repo) == before


async def test_detached_head_is_refused(repo: Path) -> None:
    run_git(repo, "checkout", "-q", "--detach", "HEAD")
    with pytest.raises(RepoError, match=r"HEAD is detached; check out a branch") as info:
        await prepare_run_repo(repo, "r1")
    assert info.value.data["reason"] == "detached_head"


async def test_repository_without_commits_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run_git(empty, "init", "-q")
    with pytest.raises(RepoError, match="no commits yet; make a first commit"):
        await prepare_run_repo(empty, "r1")


async def test_existing_branch_is_an_error_naming_the_fix(repo: Path) -> None:
    await prepare_run_repo(repo, "r1")
    with pytest.raises(RepoError, match=r"git branch -D buildrunner/r1") as info:
        await prepare_run_repo(repo, "r1")
    assert info.value.data["reason"] == "branch_exists"


async def test_open_after_restart_keeps_base_commit(repo: Path, wt_root: Path) -> None:
    first = await prepare_run_repo(repo, "r1")
    wt = await first.add_worktree(wt_root, "b1")
    (wt / "new.py").write_text("x = 1\n")
    assert (await first.commit_and_merge(wt, "batch 1")).merged
    reopened = await RunRepo.open(repo, "buildrunner/r1")
    assert reopened.base_commit == first.base_commit
    assert reopened.repo == first.repo
    assert await reopened.head() != first.base_commit


async def test_open_missing_branch(repo: Path) -> None:
    with pytest.raises(RepoError, match="branch buildrunner/gone no longer exists"):
        await RunRepo.open(repo, "buildrunner/gone")


def _path_without_git(tmp_path: Path) -> str:
    """PATH with every folder of the current one except those holding git."""
    kept = [p for p in os.environ["PATH"].split(os.pathsep) if p and not Path(p, "git").exists()]
    return os.pathsep.join([str(tmp_path), *kept])


async def test_git_missing_is_a_clear_error(repo: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _path_without_git(tmp_path))
    assert shutil.which("git") is None
    with pytest.raises(RepoError, match=r"git is not installed or not on PATH .*install git"):
        await prepare_run_repo(repo, "r1")


async def test_git_failing_names_command_and_stderr(repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    run_git(repo, "branch", "-D", "buildrunner/r1")
    with pytest.raises(WorkspaceError, match=r"`git worktree add .*` failed in .*: fatal: ") as i:
        await run_repo.add_worktree(wt_root, "b1")
    assert "worktree add" in i.value.data["command"]


async def test_prepare_in_fresh_repo_helper(tmp_path: Path) -> None:
    # Two runs of the same repository get two branches from the same HEAD.
    other = make_repo(tmp_path / "other")
    a = await prepare_run_repo(other, "a")
    b = await prepare_run_repo(other, "b")
    assert a.base_commit == b.base_commit
    assert {a.branch, b.branch} == {"buildrunner/a", "buildrunner/b"}
