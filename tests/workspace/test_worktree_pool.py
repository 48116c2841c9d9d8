"""A run reuses its batch worktrees: reset to the branch head, with nothing of the previous batch
left, and never one whose .git was rewritten."""

from __future__ import annotations

from pathlib import Path

import anyio

from buildrunnerd.workspace import prepare_run_repo

from ._helpers import run_git


async def test_a_released_worktree_comes_back_clean_at_the_new_head(
        repo: Path, wt_root: Path) -> None:
    (repo / ".gitignore").write_text("*.log\n")
    run_git(repo, "add", ".gitignore")
    run_git(repo, "commit", "-q", "-m", "ignore logs")
    run_repo = await prepare_run_repo(repo, "r1")
    first = await run_repo.acquire_worktree(wt_root)
    other = await run_repo.acquire_worktree(wt_root)
    assert other != first
    # `other` merges into the run branch; then `first` ends dirty, without merging.
    (other / "merged.py").write_text("M = 1\n")
    assert (await run_repo.commit_and_merge(other, "msg")).merged
    await run_repo.release_worktree(other)
    (first / "app.py").write_text("changed but never merged\n")
    (first / "untracked.txt").write_text("left behind?\n")
    (first / "debug.log").write_text("ignored, left behind?\n")
    (first / "deep" / "er").mkdir(parents=True)
    (first / "deep" / "er" / "x.py").write_text("X = 1\n")
    await run_repo.release_worktree(first)

    again = await run_repo.acquire_worktree(wt_root)
    assert again == first  # the dirty one, reused
    head = await run_repo.head()
    assert run_git(again, "rev-parse", "HEAD").strip() == head
    assert run_git(again, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    assert (again / "merged.py").read_text() == "M = 1\n"
    assert (again / "app.py").read_text() == (repo / "app.py").read_text()
    for leftover in ("untracked.txt", "debug.log", "deep"):
        assert not (again / leftover).exists()
    await run_repo.release_worktree(again)
    await run_repo.close()
    assert [p async for p in anyio.Path(wt_root).iterdir()] == []
    assert run_git(repo, "worktree", "list").count("\n") == 1  # only the user's checkout


async def test_a_worktree_whose_dotgit_was_rewritten_is_never_reused(
        repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    first = await run_repo.acquire_worktree(wt_root)
    (first / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    await run_repo.release_worktree(first)
    second = await run_repo.acquire_worktree(wt_root)
    assert second != first and not first.exists()
    assert run_git(second, "status", "--porcelain") == ""
    await run_repo.release_worktree(second, reuse=False)
    assert not second.exists()
