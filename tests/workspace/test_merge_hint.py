"""A real merge starts from the branch as the run last moved it (no `rev-parse`, no
`merge-base` under the merge lock), and loses nothing when the branch moved from outside."""

from __future__ import annotations

from pathlib import Path

from buildrunnerd.workspace import prepare_run_repo
from buildrunnerd.workspace._git import record_git_calls

from ._helpers import run_git


def _commit_outside(repo: Path, branch_ref: str, parent: str) -> str:
    """A commit on top of ``parent`` made by someone else (plumbing, no checkout), set as
    the run branch's head."""
    tree = run_git(repo, "rev-parse", f"{parent}^{{tree}}").strip()
    commit = run_git(repo, "commit-tree", tree, "-p", parent, "-m", "outside").strip()
    run_git(repo, "update-ref", branch_ref, commit, parent)
    return commit


async def test_a_merge_after_the_runs_own_merge_reads_no_branch(repo: Path,
                                                                wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    a = await run_repo.add_worktree(wt_root, "a")
    b = await run_repo.add_worktree(wt_root, "b")
    (a / "a.py").write_text("A = 1\n")
    (b / "b.py").write_text("B = 1\n")
    assert (await run_repo.commit_and_merge(a, "batch a")).fast_forward
    with record_git_calls() as calls:
        merged = await run_repo.commit_and_merge(b, "batch b")
    assert merged.merged and not merged.fast_forward and merged.commit is not None
    names = calls.subcommands()
    assert "merge-base" not in names and "rev-parse" not in names[names.index("merge-tree"):]
    assert names.count("rev-parse") <= 1, names  # the batch's own commit (HEAD, its tree)
    head = await run_repo.head()
    assert head == merged.commit
    assert run_git(repo, "show", f"{head}:a.py") == "A = 1\n"
    assert run_git(repo, "show", f"{head}:b.py") == "B = 1\n"


async def test_a_branch_moved_from_outside_keeps_that_commit(repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    a = await run_repo.add_worktree(wt_root, "a")
    b = await run_repo.add_worktree(wt_root, "b")
    (a / "a.py").write_text("A = 1\n")
    (b / "b.py").write_text("B = 1\n")
    first = await run_repo.commit_and_merge(a, "batch a")
    assert first.commit is not None
    # Someone commits on the run branch: the run's idea of its head is now stale.
    outside = _commit_outside(repo, run_repo.ref, first.commit)
    merged = await run_repo.commit_and_merge(b, "batch b")
    assert merged.merged and merged.commit is not None
    head = await run_repo.head()
    assert head == merged.commit
    run_git(repo, "merge-base", "--is-ancestor", outside, head)  # raises if it was dropped
    for name in ("a.py", "b.py"):
        run_git(repo, "cat-file", "-e", f"{head}:{name}")


async def test_a_branch_moved_back_from_outside_loses_nothing(repo: Path,
                                                              wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    a = await run_repo.add_worktree(wt_root, "a")
    (a / "a.py").write_text("A = 1\n")
    first = await run_repo.commit_and_merge(a, "batch a")
    assert first.commit is not None
    b = await run_repo.add_worktree(wt_root, "b")  # starts from batch a's commit
    (b / "b.py").write_text("B = 1\n")
    # The branch is moved back to the run's base, from outside.
    run_git(repo, "update-ref", run_repo.ref, run_repo.base_commit)
    merged = await run_repo.commit_and_merge(b, "batch b")
    assert merged.merged and merged.commit is not None
    head = await run_repo.head()
    assert head == merged.commit
    run_git(repo, "merge-base", "--is-ancestor", run_repo.base_commit, head)
    for name in ("a.py", "b.py"):
        run_git(repo, "cat-file", "-e", f"{head}:{name}")
