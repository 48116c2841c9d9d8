"""A git run's worktree pool: it stays at the worker count, and the run's end removes it at once.

A verified batch gives its worktree back as soon as its commit is made, before it waits for
its merge, so the batch started on its worker reuses that worktree instead of adding one (the
counts of ``git worktree`` processes, not times). The run's end deletes the idle worktrees'
folders side by side and forgets them with one ``git worktree prune``, before ``run.succeeded``:
whoever sees that event sees them gone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from buildrunnerd import protocol
from buildrunnerd.daemon._intake import SubmitRequest
from buildrunnerd.executor import BatchJob, ExecutionContext, ExecutionOutcome
from buildrunnerd.workspace._git import GitCalls, record_git_calls

from .conftest import make_plan


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# project\n")
    _git(path, "add", "-A")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return path


class WritingExecutor:
    """A model stand-in that writes its batch's files at once and completes."""

    name = "writing"

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        await anyio.lowlevel.checkpoint()
        for rel in {f for t in job.tasks for f in t.files}:
            target = Path(job.worktree) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"# {job.batch_id}\n")
        return ExecutionOutcome(status="completed", model="writing", summary=job.batch_id)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def git_calls() -> Iterator[GitCalls]:
    # Entered before the harness: the daemon's tasks (and so every batch) inherit it.
    with record_git_calls() as calls:
        yield calls


def _worktree_calls(calls: GitCalls, action: str) -> int:
    return sum(1 for args in calls.commands
               if "worktree" in args and args[args.index("worktree") + 1] == action)


async def _run(harness: Any, repo: Path, tmp_path: Path, *, workers: int,
               batches: int) -> tuple[str, dict[str, Any], list[str]]:
    """One git run of ``batches`` independent batches; what the worktree root and git's
    worktree list held when ``run.succeeded`` was published; every attempt's worktree."""
    plan = make_plan({f"B{i}": ([], 10) for i in range(batches)}, files=True)
    seen_at_end: dict[str, Any] = {}
    async with harness(workers=workers, executor=WritingExecutor()) as h:

        def at_end(event: protocol.Event) -> None:
            if event.type == "run.succeeded":
                root = tmp_path / "home" / "worktrees" / event.run_id
                seen_at_end["folders"] = sorted(p.name for p in root.iterdir())
                seen_at_end["registered"] = _git(repo, "worktree", "list",
                                                 "--porcelain").count("worktree ")

        h.bus.add_listener(at_end)
        record = await h.runs.submit_plan(
            plan, spec_text="# Pool\n", spec_path=None,
            request=SubmitRequest(spec_text="# Pool\n", repo=str(repo), workers=workers))
        assert await h.wait_run(record.id) == "succeeded"
        worktrees = [a.worktree for b in await h.store.list_batches(record.id)
                     for a in await h.store.list_attempts(b.id) if a.worktree]
    return record.id, seen_at_end, worktrees


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_pool_stays_at_the_worker_count_while_batches_wait_to_merge(
        harness: Any, repo: Path, tmp_path: Path, git_calls: GitCalls, workers: int) -> None:
    run_id, _, worktrees = await _run(harness, repo, tmp_path, workers=workers, batches=6)
    # Every batch merged into the run branch (six commits and their merges on top of init).
    branch = f"buildrunner/{run_id}"
    assert sorted(_git(repo, "ls-tree", "-r", "--name-only", branch, "out").split()) == [
        f"out/B{i}.py" for i in range(6)]
    # Each batch's worker took the worktree the batch before it gave back with its commit:
    # no more worktrees than workers, though every batch waited for a merge meanwhile.
    assert len(worktrees) == 6
    assert len(set(worktrees)) <= workers
    assert _worktree_calls(git_calls, "add") <= workers
    if workers == 1:
        # The next batch waited for the fast-forward of the one before it (given back just
        # before that merge) and started from the new head: every merge a fast-forward.
        assert _git(repo, "rev-list", "--merges", "--count", branch).strip() == "0"
        assert "merge-tree" not in git_calls.subcommands()


async def test_the_runs_end_removes_its_pool_before_run_succeeded(
        harness: Any, repo: Path, tmp_path: Path, git_calls: GitCalls) -> None:
    _, seen, worktrees = await _run(harness, repo, tmp_path, workers=2, batches=4)
    assert len(set(worktrees)) == 2
    # Gone when the event was published: the folders, and git's registrations of them.
    assert seen == {"folders": [], "registered": 1}  # only the user's checkout
    assert not [w for w in worktrees if await anyio.Path(w).exists()]
    # Deleted and forgotten at once: one prune, no `worktree remove` one after the other.
    assert _worktree_calls(git_calls, "remove") == 0
    assert _worktree_calls(git_calls, "prune") == 1
