"""Workspace benchmark: the per-batch git overhead of BuildRunner against bare git.

    .venv/bin/python bench/worktree_bench.py [--batches 30] [--files 200] [--json]

On one generated repository (``--files`` files in a few folders, one commit) it times, per
batch:

- **baseline**: a plain ``git worktree add --detach`` + ``git worktree remove`` pair (the least
  any worktree-per-batch design pays);
- **buildrunner**: ``RunRepo.add_worktree`` + writing one file + ``commit_and_merge``
  (commit, fast-forward of the run branch) + ``remove_worktree``: a fresh worktree per batch;
- **reused**: what the daemon does now, ``acquire_worktree`` (a pooled worktree reset to the
  head: ``reset --hard`` + ``clean -ffdx`` + a clean ``status``) + one file +
  ``commit_and_merge`` + ``release_worktree``; verification excluded (its cost is the
  project's own tests).

It prints the median per batch of each and their ratio (target: under 3x). Figures are recorded
in docs/benchmarks.md under "## Workspaces".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from buildrunnerd.workspace import RunRepo, prepare_run_repo
from buildrunnerd.workspace._git import git_env


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env=git_env(), check=True, capture_output=True)


def make_repo(path: Path, files: int) -> Path:
    """A repository with ``files`` small Python files in 10 folders, one commit."""
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.name", "Bench")
    _git(path, "config", "user.email", "bench@localhost")
    for n in range(files):
        folder = path / f"pkg{n % 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"mod{n}.py").write_text(f'"""Module {n}."""\n\nVALUE = {n}\n' * 5)
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "init")
    return path


async def baseline_batch(repo: Path, root: Path, n: int) -> float:
    """Plain ``git worktree add`` + ``remove``, as async subprocesses (same cost model)."""
    env = git_env()
    path = root / f"plain-{n}"
    start = time.perf_counter()
    await anyio.run_process(["git", "worktree", "add", "--detach", "--quiet", str(path),
                             "HEAD"], cwd=repo, env=env)
    await anyio.run_process(["git", "worktree", "remove", "--force", str(path)],
                            cwd=repo, env=env)
    return time.perf_counter() - start


async def buildrunner_batch(run_repo: RunRepo, root: Path, n: int) -> float:
    """add_worktree + one written file + commit_and_merge + remove_worktree."""
    start = time.perf_counter()
    wt = await run_repo.add_worktree(root, f"b{n}")
    await anyio.Path(wt / f"batch_{n}.py").write_text(f"BATCH = {n}\n")
    result = await run_repo.commit_and_merge(wt, f"bench batch {n}")
    await run_repo.remove_worktree(wt)
    elapsed = time.perf_counter() - start
    if not (result.merged and result.fast_forward):
        raise SystemExit(f"batch {n} did not fast-forward: {result}")
    return elapsed


async def reused_batch(run_repo: RunRepo, root: Path, n: int) -> float:
    """What the daemon does now: acquire (a pooled worktree, reset to the head) + one written
    file + commit_and_merge + release (back to the pool)."""
    start = time.perf_counter()
    wt = await run_repo.acquire_worktree(root)
    await anyio.Path(wt / f"reused_{n}.py").write_text(f"BATCH = {n}\n")
    result = await run_repo.commit_and_merge(wt, f"bench reused batch {n}")
    await run_repo.release_worktree(wt)
    elapsed = time.perf_counter() - start
    if not result.merged:
        raise SystemExit(f"reused batch {n} did not merge: {result}")
    return elapsed


async def main_async(batches: int, files: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="br-wt-bench-") as tmp:
        repo = make_repo(Path(tmp) / "repo", files)
        root = Path(tmp) / "worktrees"
        run_repo = await prepare_run_repo(repo, "bench")
        baseline: list[float] = []
        ours: list[float] = []
        reused: list[float] = []
        # Interleaved, after one warm-up of each, so caches and background load (other jobs
        # on the machine) weigh on both sides alike.
        for n in range(-1, batches):
            base_s = await baseline_batch(repo, root, n)
            ours_s = await buildrunner_batch(run_repo, root, n)
            reused_s = await reused_batch(run_repo, root / "pool", n)
            if n >= 0:
                baseline.append(base_s)
                ours.append(ours_s)
                reused.append(reused_s)
        await run_repo.close()
    base_ms = statistics.median(baseline) * 1000
    ours_ms = statistics.median(ours) * 1000
    reused_ms = statistics.median(reused) * 1000
    return {
        "reused_ms_per_batch": round(reused_ms, 1),
        "reused_ratio": round(reused_ms / base_ms, 2),
        "batches": batches,
        "files": files,
        "baseline_ms_per_batch": round(base_ms, 1),
        "buildrunner_ms_per_batch": round(ours_ms, 1),
        "ratio": round(ours_ms / base_ms, 2),
        "target_ratio": 3.0,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = anyio.run(main_async, args.batches, args.files)
    result["git"] = subprocess.run(["git", "--version"], capture_output=True, text=True,
                                   check=True).stdout.strip()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"repository: {result['files']} files; {result['batches']} batches each "
              f"({result['git']}, Python {result['python']}, {result['cpus']} CPUs)")
        print(f"  git worktree add + remove         {result['baseline_ms_per_batch']:8.1f} ms")
        print(f"  add + commit + merge + remove     {result['buildrunner_ms_per_batch']:8.1f} ms")
        print(f"  ratio                             {result['ratio']:8.2f}x (target < 3x)")
        print(f"  reused: reset + commit + merge    {result['reused_ms_per_batch']:8.1f} ms "
              f"({result['reused_ratio']:.2f}x)")
    return 0 if result["ratio"] < result["target_ratio"] else 1


if __name__ == "__main__":
    sys.exit(main())
