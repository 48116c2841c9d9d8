"""The daemon's git never runs what the worktree (the model) can choose, and never follows the
worktree's own ``.git`` file: a rewritten ``.git`` fails the batch, nothing else moves."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.workspace import RunRepo, prepare_run_repo, verify
from buildrunnerd.workspace._worktree import TamperedWorktreeError

from ._helpers import run_git, snapshot, task


def index_hash(repo: Path) -> str:
    return hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()


async def _run_repo(repo: Path) -> RunRepo:
    return await prepare_run_repo(repo, "r1")


async def test_dotgit_pointed_at_fsmonitor_config_fails_and_runs_nothing(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    run_repo = await _run_repo(repo)
    wt = await run_repo.add_worktree(wt_root, "b1")
    marker = tmp_path / "fsmonitor-ran"
    # A fake git dir whose config runs the model's program on every status/add.
    evil = tmp_path / "evil-gitdir"
    run_git(tmp_path, "init", "-q", "--bare", str(evil))
    (evil / "config").write_text(
        f"[core]\n\tbare = false\n\tfsmonitor = touch {marker}; false\n"
        f"\thooksPath = {tmp_path}\n")
    (wt / ".git").write_text(f"gitdir: {evil}\n")
    (wt / "mod.py").write_text("X = 1\n")
    with pytest.raises(TamperedWorktreeError, match="rewrote"):
        await run_repo.commit_and_merge(wt, "msg")
    with pytest.raises(TamperedWorktreeError, match="rewrote"):
        await verify(wt, [task("T1", "mod.py")], base_commit=run_repo.base_commit)
    assert not marker.exists()
    assert await run_repo.head() == run_repo.base_commit


async def test_dotgit_pointed_at_users_repository_moves_nothing(
        repo: Path, wt_root: Path) -> None:
    run_repo = await _run_repo(repo)
    before, index_before = snapshot(repo), index_hash(repo)
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    (wt / "app.py").write_text("def hello() -> str:\n    return 'pwned'\n")
    with pytest.raises(TamperedWorktreeError):
        await run_repo.commit_and_merge(wt, "msg")
    assert snapshot(repo) == before and index_hash(repo) == index_before
    assert run_git(repo, "rev-parse", "main").strip() == before["head"]


async def test_dotgit_replaced_by_symlink_or_folder_fails(repo: Path, wt_root: Path) -> None:
    run_repo = await _run_repo(repo)
    wt = await run_repo.add_worktree(wt_root, "b1")
    original = (wt / ".git").read_bytes()
    (wt / ".git").unlink()
    (wt / ".git").symlink_to(repo / ".git")
    with pytest.raises(TamperedWorktreeError):
        await run_repo.worktree_head(wt)
    (wt / ".git").unlink()
    (wt / ".git").write_bytes(original)  # put back exactly: accepted again
    assert await run_repo.worktree_head(wt) == run_repo.base_commit


async def test_filter_and_textconv_drivers_never_run(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    # Drivers the user's config defines; the model's .gitattributes asks for them.
    marker = tmp_path / "driver-ran"
    run_git(repo, "config", "filter.lfsish.clean", f"touch {marker}; cat")
    run_git(repo, "config", "filter.lfsish.process", f"touch {marker}")
    run_git(repo, "config", "diff.evil.textconv", f"touch {marker}; cat")
    run_git(repo, "config", "merge.evil.driver", f"touch {marker}; true")
    run_repo = await _run_repo(repo)
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / ".gitattributes").write_text("* filter=lfsish diff=evil merge=evil\n")
    (wt / "mod.py").write_text("X = 1\n")
    # scope "warn": the changed .gitattributes is what this test is about, not a failure.
    report = await verify(wt, [task("T1", "mod.py")], base_commit=run_repo.base_commit,
                          config=VerifyConfig(scope="warn"))
    assert report.passed, report.summary()
    result = await run_repo.commit_and_merge(wt, "msg")
    assert result.merged
    assert not marker.exists()
    # Stored as written: no clean filter changed the content.
    assert run_git(repo, "show", f"{result.commit}:mod.py") == "X = 1\n"


async def test_fsmonitor_and_hooks_of_the_users_config_never_run(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("pre-commit", "post-commit", "post-checkout", "reference-transaction"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
        hook.chmod(0o755)
    run_git(repo, "config", "core.hooksPath", str(hooks))
    run_git(repo, "config", "core.fsmonitor", f"touch {marker}; false")
    run_repo = await _run_repo(repo)
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "mod.py").write_text("X = 1\n")
    assert (await verify(wt, [task("T1", "mod.py")], base_commit=run_repo.base_commit)).passed
    assert (await run_repo.commit_and_merge(wt, "msg")).merged
    assert not marker.exists()


async def test_inherited_git_variables_do_not_redirect_the_daemon(
        repo: Path, wt_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    run_git(other, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.fsmonitor'='touch /tmp/x-br'")
    run_repo = await _run_repo(repo)
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "mod.py").write_text("X = 1\n")
    result = await run_repo.commit_and_merge(wt, "msg")
    assert result.merged
    assert run_git(repo, "show", f"{run_repo.branch}:mod.py") == "X = 1\n"
