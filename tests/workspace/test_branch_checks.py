"""Merges waiting for the run branch share one check of it (issue 13: every merge and every
check of the branch hold the branch lock, which bounds a git run). A merge made while another
batch waits to merge leaves its check to that batch's merge on top of it; when the group's head
fails, the first merge whose head fails is rolled back with its report and the merges on top of
it run again. The batches here are integrated at once, in the order they start (the test
holds the workspace's branch lock until each waits for it in turn)."""

from __future__ import annotations

from pathlib import Path

import anyio

from buildrunnerd.config import VerifyConfig
from buildrunnerd.workspace import GitWorkspace, Integration, prepare_run_repo
from buildrunnerd.workspace._git import record_git_calls

from ._helpers import run_git, task

CONFIG = VerifyConfig()


def branch_head(repo: Path) -> str:
    return run_git(repo, "rev-parse", "refs/heads/buildrunner/r1").strip()


def branch_files(repo: Path) -> set[str]:
    return set(run_git(repo, "ls-tree", "--name-only", "refs/heads/buildrunner/r1").split())


async def integrate_at_once(repo: Path, root: Path, names: list[str],
                            test_cmd: str) -> tuple[GitWorkspace, list[Integration], int]:
    """One verified batch per name (``<name>.txt``), each from the same head, integrated
    concurrently: the workspace, each batch's integration, and how many checks of the run
    branch ran (each resets a worktree of the pool for it, or adds one)."""
    tasks = [task(name, f"{name}.txt") for name in names]
    run_repo = await prepare_run_repo(repo, "r1")
    ws = GitWorkspace(run_repo, run_id="r1", worktree_root=root, project_root=repo,
                      base_commit=run_repo.base_commit, test_cmd=test_cmd, plan_tasks=tasks,
                      spec_path=None)
    started = [await ws.acquire() for _ in tasks]
    reports = []
    for (path, head), t in zip(started, tasks, strict=True):
        (path / t.files[0]).write_text(f"{t.id}\n")
        report = await ws.verify(path, [t], head=head, config=CONFIG, confinement=None)
        assert report.passed, report
        reports.append(report)
    results: list[Integration | None] = [None] * len(tasks)

    async def one(index: int) -> None:
        path, head = started[index]
        results[index] = await ws.integrate(path, tasks[index].id, reports[index], head=head,
                                            batch_id=f"b{index}", config=CONFIG,
                                            confinement=None)

    with record_git_calls() as calls:
        async with anyio.create_task_group() as tg:
            # The batches take the branch lock in the order they reach it (each makes its own
            # commit first, at whatever pace git goes): held here until every batch waits
            # for it, one after the other, so that the order is the names' (the lock is
            # first come, first served).
            async with ws._branch_lock:
                for index in range(len(tasks)):
                    tg.start_soon(one, index)
                    # No event marks a batch queued at the lock (the daemon needs none):
                    # its count of batches waiting to merge is watched, bounded in time.
                    with anyio.fail_after(30):
                        while ws._merging < index + 1:  # noqa: ASYNC110
                            await anyio.sleep(0.005)
    names_run = calls.subcommands()
    for path, _ in started:
        await ws.release(path)
    done = [r for r in results if r is not None]
    assert len(done) == len(tasks)
    # A check acquires a worktree: a new one (`worktree add`), or a reused one, whose HEAD the
    # reuse moves (`update-ref --no-deref HEAD`).
    reused = sum(1 for args in calls.commands if "--no-deref" in args)
    return ws, done, reused + names_run.count("worktree")


async def test_merges_waiting_for_the_branch_share_one_check(
        repo: Path, wt_root: Path) -> None:
    ws, (a, b, c), checks = await integrate_at_once(repo, wt_root, ["a", "b", "c"], "true")
    # a: a fast-forward of the tree its own tests ran on (no check); b merged while c waited
    # (its check left to c's merge, on top of it); c's merge checked both.
    assert a.merged and b.merged and c.merged, (a, b, c)
    assert checks == 1
    assert {"a.txt", "b.txt", "c.txt"} <= branch_files(repo)
    assert c.commit == branch_head(repo)
    assert ws.verified is not None and ws.verified.commit == branch_head(repo)
    final = await ws.verify_head(CONFIG, None)
    assert final is not None and final.verified is not None and final.failed is None
    await ws.close()


async def test_a_group_whose_first_merge_breaks_the_branch_rolls_it_back_and_reruns_the_rest(
        repo: Path, wt_root: Path) -> None:
    # a and b pass alone and break the tests together; b's merge (on a) is the group's first.
    ws, (a, b, c), checks = await integrate_at_once(
        repo, wt_root, ["a", "b", "c"], "test ! -e a.txt || test ! -e b.txt")
    assert a.merged and a.commit is not None
    assert not b.merged and b.rolled_back is not None and not b.rolled_back.passed
    assert b.rolled_back.first_failure().startswith("tests failed")
    # c's merge held b's work: it runs again (from the rolled-back head), not blamed.
    assert not c.merged and c.stale_start and c.rolled_back is None
    assert branch_head(repo) == a.commit  # back at the last passing head
    assert checks == 2  # the group's head, then b's head: the first that fails
    final = await ws.verify_head(CONFIG, None)
    assert final is not None and final.verified is not None
    assert final.verified.commit == a.commit
    await ws.close()


async def test_a_group_whose_last_merge_breaks_the_branch_keeps_the_merges_below(
        repo: Path, wt_root: Path) -> None:
    # a and c break the tests together; b's merge below c's is kept.
    ws, (a, b, c), checks = await integrate_at_once(
        repo, wt_root, ["a", "b", "c"], "test ! -e a.txt || test ! -e c.txt")
    assert a.merged and b.merged and b.commit is not None
    assert not c.merged and c.rolled_back is not None and not c.rolled_back.passed
    assert branch_head(repo) == b.commit
    assert {"a.txt", "b.txt"} <= branch_files(repo) and "c.txt" not in branch_files(repo)
    assert checks == 2  # the group's head (fails), then b's head (passes)
    assert ws.verified is not None and ws.verified.commit == b.commit
    # A batch that started on the rolled-back head runs again.
    path, head = await ws.acquire()
    assert head == b.commit
    await ws.release(path)
    await ws.close()
