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


async def test_the_start_commit_of_an_acquired_worktree_is_the_daemons_record(
        repo: Path, wt_root: Path) -> None:
    # The commit a worktree was reset to (or made at) is what verification compares with; it
    # comes from the daemon's record, as git put it there, even when the worktree's own HEAD
    # is rewritten before it is asked (the batch's base is never read from the worktree).
    run_repo = await prepare_run_repo(repo, "r1")
    for _ in range(2):
        path = await run_repo.acquire_worktree(wt_root)
        head = await run_repo.head()
        assert run_git(path, "rev-parse", "HEAD").strip() == head
        (path / "new.py").write_text("N = 1\n")
        run_git(path, "add", "new.py")
        run_git(path, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "moved")
        assert await run_repo.worktree_head(path) == head
        # Asked again (the record is for the first question): the worktree as it is now.
        assert await run_repo.worktree_head(path) == run_git(path, "rev-parse", "HEAD").strip()
        await run_repo.release_worktree(path)
    await run_repo.close()
