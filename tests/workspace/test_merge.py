"""Worktrees and merging a batch into the run branch: fast-forward, real merge, conflict."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio

from buildrunnerd.workspace import (
    RunRepo,
    batch_commit_message,
    cleanup_orphan_worktrees,
    prepare_run_repo,
)

from ._helpers import names, real, run_git, snapshot, task


def worktrees(repo: Path) -> list[str]:
    out = run_git(repo, "worktree", "list", "--porcelain")
    return [line.removeprefix("worktree ") for line in out.splitlines()
            if line.startswith("worktree ")]


async def test_worktree_is_a_detached_copy_of_run_branch_head(repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    assert wt == wt_root / "b1"
    assert (wt / "app.py").read_text() == (repo / "app.py").read_text()
    assert run_git(wt, "rev-parse", "HEAD").strip() == run_repo.base_commit
    # Detached: the run branch is checked out nowhere, so it can move under merges.
    assert run_git(wt, "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"
    assert str(wt) in worktrees(repo)
    await run_repo.remove_worktree(wt)
    assert not wt.exists()
    assert str(wt) not in worktrees(repo)


async def test_fast_forward_merge_one_commit_per_batch(repo: Path, wt_root: Path) -> None:
    before = snapshot(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    for n in (1, 2):
        wt = await run_repo.add_worktree(wt_root, f"b{n}")
        # Each worktree starts from the branch's current head: it sees the previous batch.
        assert (wt / "mod1.py").exists() == (n == 2)
        (wt / f"mod{n}.py").write_text(f"VALUE = {n}\n")
        message = batch_commit_message("r1", f"B00{n}", [task(f"T{n}", f"mod{n}.py")])
        result = await run_repo.commit_and_merge(wt, message)
        assert result.merged and result.fast_forward and result.conflict_files == []
        assert result.commit == await run_repo.head()
        await run_repo.remove_worktree(wt)
    log = run_git(repo, "log", "--format=%an <%ae>|%s",
                  f"{run_repo.base_commit}..{run_repo.branch}")
    assert log.splitlines() == [
        "BuildRunner <buildrunner@localhost>|buildrunner r1 B002: T2",
        "BuildRunner <buildrunner@localhost>|buildrunner r1 B001: T1",
    ]
    body = run_git(repo, "log", "-1", "--format=%B", run_repo.branch)
    assert "- T2: do it" in body and "BuildRunner-Batch: B002" in body
    assert run_git(repo, "ls-tree", "--name-only", run_repo.branch).split() == [
        "README.md", "app.py", "mod1.py", "mod2.py"]
    assert snapshot(repo) == before
    assert worktrees(repo) == [str(real(repo))]


async def test_parallel_batches_merge_for_real(repo: Path, wt_root: Path) -> None:
    before = snapshot(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    a = await run_repo.add_worktree(wt_root, "a")
    b = await run_repo.add_worktree(wt_root, "b")
    (a / "a.py").write_text("A = 1\n")
    (b / "b.py").write_text("B = 2\n")
    async with anyio.create_task_group() as tg:
        results = {}

        async def merge(name: str, wt: Path) -> None:
            results[name] = await run_repo.commit_and_merge(wt, f"batch {name}")

        tg.start_soon(merge, "a", a)
        tg.start_soon(merge, "b", b)
    assert results["a"].merged and results["b"].merged
    assert {results["a"].fast_forward, results["b"].fast_forward} == {True, False}
    head = await run_repo.head()
    parents = run_git(repo, "rev-list", "--parents", "-n1", head).split()
    assert len(parents) == 3  # a real merge commit
    assert set(run_git(repo, "ls-tree", "--name-only", head).split()) >= {"a.py", "b.py"}
    assert run_git(repo, "rev-list", "--count", "--no-merges",
                   f"{run_repo.base_commit}..{head}").strip() == "2"
    # The private merge worktree is gone again; the user's checkout never moved.
    assert names(wt_root) == ["a", "b"]
    assert snapshot(repo) == before


async def test_same_file_in_two_worktrees_conflicts(repo: Path, wt_root: Path) -> None:
    before = snapshot(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    a = await run_repo.add_worktree(wt_root, "a")
    b = await run_repo.add_worktree(wt_root, "b")
    (a / "app.py").write_text("def hello() -> str:\n    return 'from a'\n")
    (b / "app.py").write_text("def hello() -> str:\n    return 'from b'\n")
    (b / "extra.py").write_text("E = 1\n")
    first = await run_repo.commit_and_merge(a, "batch a")
    head_after_a = await run_repo.head()
    second = await run_repo.commit_and_merge(b, "batch b")
    assert first.merged
    assert not second.merged
    assert second.conflict_files == ["app.py"]
    assert second.commit is not None and second.commit != head_after_a
    # Nothing forced: the run branch still holds batch a's version.
    assert await run_repo.head() == head_after_a
    assert "from a" in run_git(repo, "show", f"{run_repo.branch}:app.py")
    assert snapshot(repo) == before
    # Re-running the batch on the new head resolves it.
    await run_repo.remove_worktree(b)
    b2 = await run_repo.add_worktree(wt_root, "b")
    assert "from a" in (b2 / "app.py").read_text()
    (b2 / "app.py").write_text("def hello() -> str:\n    return 'from a and b'\n")
    again = await run_repo.commit_and_merge(b2, "batch b, attempt 2")
    assert again.merged and again.fast_forward


async def test_empty_change_merges_with_no_commit(repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    result = await run_repo.commit_and_merge(wt, "nothing")
    assert result.merged and result.commit is None
    assert await run_repo.head() == run_repo.base_commit


async def test_caches_from_verification_are_not_committed(repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "__pycache__").mkdir()
    (wt / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\x00junk")
    (wt / ".pytest_cache").mkdir()
    (wt / ".pytest_cache" / "README.md").write_text("cache")
    (wt / "real.py").write_text("R = 1\n")
    result = await run_repo.commit_and_merge(wt, "b1")
    assert result.merged
    files = run_git(repo, "ls-tree", "-r", "--name-only", run_repo.branch).split()
    assert files == ["README.md", "app.py", "real.py"]


async def test_user_hooks_do_not_run_in_worktrees(repo: Path, wt_root: Path) -> None:
    marker = repo.parent / "hook-ran"
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    hook.chmod(0o755)
    run_repo = await prepare_run_repo(repo, "r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "x.py").write_text("X = 1\n")
    assert (await run_repo.commit_and_merge(wt, "b1")).merged
    assert not marker.exists()


async def test_orphan_worktrees_are_cleaned(repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    live = await run_repo.add_worktree(wt_root, "live")
    crashed = await run_repo.add_worktree(wt_root, "crashed")
    (crashed / "half.py").write_text("unfinished = (\n")
    stray = wt_root / "not-a-worktree"
    stray.mkdir()
    (stray / "f").write_text("x")
    # A worktree whose folder vanished but whose registration stayed behind.
    vanished = await run_repo.add_worktree(wt_root, "vanished")
    shutil.rmtree(vanished)
    removed = await cleanup_orphan_worktrees(repo, wt_root, keep={live})
    assert sorted(p.name for p in removed) == ["crashed", "not-a-worktree"]
    assert names(wt_root) == ["live"]
    assert sorted(worktrees(repo)) == sorted([str(real(repo)), str(live)])
    # keep by name works too, and a second pass finds nothing.
    assert await cleanup_orphan_worktrees(repo, wt_root, keep={"live"}) == []


async def test_orphan_cleanup_when_repository_is_gone(tmp_path: Path, wt_root: Path) -> None:
    (wt_root / "left").mkdir(parents=True)
    removed = await cleanup_orphan_worktrees(tmp_path / "deleted-repo", wt_root)
    assert [p.name for p in removed] == ["left"]
    assert names(wt_root) == []


async def test_add_worktree_replaces_a_leftover(repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    old = await run_repo.add_worktree(wt_root, "b1")
    (old / "stale.py").write_text("S = 1\n")
    new = await run_repo.add_worktree(wt_root, "b1")
    assert new == old and not (new / "stale.py").exists()


async def test_reopened_run_repo_merges(repo: Path, wt_root: Path) -> None:
    await prepare_run_repo(repo, "r1")
    run_repo = await RunRepo.open(repo, "buildrunner/r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "y.py").write_text("Y = 1\n")
    assert (await run_repo.commit_and_merge(wt, "b1")).merged


async def test_concurrent_worktree_changes_on_one_repository(repo: Path, wt_root: Path) -> None:
    # git itself fails when two `worktree add` run at once on a repository; two runs on the
    # same repository must not see that.
    first = await prepare_run_repo(repo, "r1")
    second = await prepare_run_repo(repo, "r2")
    paths: list[Path] = []

    async def add(run_repo: RunRepo, name: str) -> None:
        paths.append(await run_repo.add_worktree(wt_root, name))

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(add, first if n % 2 else second, f"w{n}")
    assert len(paths) == 6
    async with anyio.create_task_group() as tg:
        for n, path in enumerate(paths):
            tg.start_soon((first if n % 2 else second).remove_worktree, path)
        tg.start_soon(cleanup_orphan_worktrees, repo, wt_root / "other")
    assert worktrees(repo) == [str(real(repo))]
