"""Workspace bench at scale: one steady-state batch's git work on a small and a large repository.

    .venv/bin/python bench/workspace_scale.py [--files 1000,10000] [--batches 8]
        [--layout flat|nested] [--json]

For each repository size it makes a repository of ``--files`` small modules (``--layout flat``:
all in one folder ``pkg/``, as bench/daemon_scale.py's spec lays them out; ``nested``: in
sub-packages of 50, as real projects are), then runs batches through the real
:class:`~buildrunnerd.workspace.GitWorkspace` one after the other, as a worker does: acquire
(a pooled worktree after the first batch), write two files under the file monitor
(``watch``: the workspace's monitor open around the writes, as around a backend; its events
are checked to be exactly the two files), verify (test command ``true``),
integrate (a fast-forward), release. The first two batches warm the pool and the caches; the
rest are measured.

Per step it reports the git processes (counted by the workspace's own git runner), the CPU
seconds of those processes (``getrusage(RUSAGE_CHILDREN)``: what a busy machine does not
inflate much; the test command's sandbox counts there too), the bench process's own CPU (the
daemon's part: parsing listings, the checks) and the median wall time. The load-independent
figures are the calls and CPU per batch at 10,000 files against 1,000; the last lines give
verification's alone (its git processes by subcommand, git and daemon CPU). Run it with
``PYTHONPATH=<checkout of another commit>`` to compare before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from buildrunnerd.config import VerifyConfig
from buildrunnerd.plan._model import Task
from buildrunnerd.workspace import ChangeKind, GitWorkspace, prepare_run_repo
from buildrunnerd.workspace._git import git_env, record_git_calls

STEPS = ("acquire", "watch", "verify", "integrate", "release")
CONFIG = VerifyConfig(test_cmd="true")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env=git_env(), check=True, capture_output=True)


def _module(layout: str, n: int) -> str:
    return f"pkg/m{n}.py" if layout == "flat" else f"pkg/s{n // 50}/m{n}.py"


def make_repo(path: Path, files: int, layout: str) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.name", "Bench")
    _git(path, "config", "user.email", "bench@localhost")
    for n in range(files):
        target = path / _module(layout, n)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f'"""Module {n}."""\n\n\ndef f{n}() -> int:\n    return {n}\n')
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "init")
    return path


def _task(n: int, layout: str, files: int) -> Task:
    first, second = _module(layout, files + 2 * n), _module(layout, files + 2 * n + 1)
    return Task(id=f"t{n}", feature="F1", title=f"batch {n}", domain="backend",
                complexity="simple", estimate_minutes=5, files=[first, second])


async def _write(path: Path, task: Task, n: int) -> None:
    for name in task.files:
        target = anyio.Path(path / name)
        await target.parent.mkdir(parents=True, exist_ok=True)
        # New content every batch and every run (a blob read before would come from the cache).
        await target.write_text(f"def g() -> int:\n    return {n}  # {name}\n")


async def _watched_write(ws: GitWorkspace, path: Path, task: Task, n: int) -> None:
    """The writes under the workspace's file monitor, as a backend's are: its cost at entry
    and at exit is what this step measures."""
    seen: list[tuple[str, str]] = []

    async def on_change(kind: ChangeKind, rel: str) -> None:
        seen.append((kind, rel))

    async with ws.watch(path, [task], on_change) as watch:
        await _write(path, task, n)
    changes, _report = await watch.settle()
    seen += [(c.kind, c.path) for c in changes]
    if sorted(seen) != sorted(("created", name) for name in task.files):
        raise SystemExit(f"batch {n}: the monitor reported {seen}, not the two new files")


class _Steps:
    """Times and counts the steps of one batch into ``row``."""

    def __init__(self, row: dict[str, tuple[int, float, float, float]],
                 subcommands: Counter[str] | None,
                 verify_subcommands: Counter[str] | None = None) -> None:
        self.row = row
        self.subcommands = subcommands
        self.verify_subcommands = verify_subcommands

    async def run(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        cpu, own, wall = _child_cpu_s(), _own_cpu_s(), time.perf_counter()
        with record_git_calls() as calls:
            out = await fn()
        self.row[name] = (len(calls), _child_cpu_s() - cpu, time.perf_counter() - wall,
                          _own_cpu_s() - own)
        if self.subcommands is not None:
            self.subcommands.update(calls.subcommands())
        if self.verify_subcommands is not None and name == "verify":
            self.verify_subcommands.update(calls.subcommands())
        return out


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_size(files: int, batches: int, layout: str, tmp: Path) -> dict[str, Any]:
    repo = make_repo(tmp / f"repo-{files}", files, layout)
    tasks = [_task(n, layout, files) for n in range(batches)]
    run_repo = await prepare_run_repo(repo, "bench")
    ws = GitWorkspace(run_repo, run_id="bench", worktree_root=tmp / f"wt-{files}",
                      project_root=repo, base_commit=run_repo.base_commit, test_cmd="true",
                      plan_tasks=tasks, spec_path=None)
    rows: list[dict[str, tuple[int, float, float, float]]] = []
    subcommands: Counter[str] = Counter()
    verify_subcommands: Counter[str] = Counter()
    try:
        for n, task in enumerate(tasks):
            row: dict[str, tuple[int, float, float, float]] = {}
            steps = _Steps(row, subcommands if n >= 2 else None,
                           verify_subcommands if n >= 2 else None)
            path, head = await steps.run("acquire", ws.acquire)
            await steps.run("watch", partial(_watched_write, ws, path, task, n))
            report = await steps.run("verify", partial(
                ws.verify, path, [task], head=head, config=CONFIG, confinement=None))
            if not report.passed:
                raise SystemExit(f"verification failed: {report.first_failure()}")
            done = await steps.run("integrate", partial(
                ws.integrate, path, f"bench batch {n}", report, head=head, batch_id=f"b{n}",
                config=CONFIG, confinement=None))
            if not done.merged:
                raise SystemExit(f"batch {n} did not merge: {done}")
            await steps.run("release", partial(ws.release, path))
            if n >= 2:  # the first two warm the pool and the caches
                rows.append(row)
    finally:
        await ws.close()
    per_step = {
        name: {
            "git_calls": statistics.median(r[name][0] for r in rows),
            "git_cpu_ms": round(1000 * statistics.median(r[name][1] for r in rows), 1),
            "wall_ms": round(1000 * statistics.median(r[name][2] for r in rows), 1),
            "daemon_cpu_ms": round(1000 * statistics.median(r[name][3] for r in rows), 1),
        }
        for name in STEPS
    }
    return {
        "files": files,
        "layout": layout,
        "batches": len(rows),
        "steps": per_step,
        "git_calls": sum(s["git_calls"] for s in per_step.values()),
        "git_cpu_ms": round(sum(s["git_cpu_ms"] for s in per_step.values()), 1),
        "wall_ms": round(sum(s["wall_ms"] for s in per_step.values()), 1),
        "daemon_cpu_ms": round(sum(s["daemon_cpu_ms"] for s in per_step.values()), 1),
        "subcommands_per_batch": {k: round(v / len(rows), 2)
                                  for k, v in sorted(subcommands.items())},
        "verify_subcommands_per_batch": {k: round(v / len(rows), 2)
                                         for k, v in sorted(verify_subcommands.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="1000,10000")
    parser.add_argument("--batches", type=int, default=8, help="including 2 warm-up batches")
    parser.add_argument("--layout", choices=("flat", "nested"), default="flat")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.files.split(",") if s]
    results = []
    with tempfile.TemporaryDirectory(prefix="ws-scale-") as tmp:
        for files in sizes:
            results.append(anyio.run(run_size, files, max(args.batches, 3), args.layout,
                                     Path(tmp)))
    if args.json:
        print(json.dumps({"python": platform.python_version(), "load": os.getloadavg(),
                          "results": results}, indent=2))
        return
    print(f"layout {args.layout}, load average {os.getloadavg()[0]:.1f}, "
          f"{results[0]['batches']} measured batches each (median per batch)")
    print("| files | step | git calls | git CPU ms | daemon CPU ms | wall ms |")
    print("|---|---|---|---|---|---|")
    for res in results:
        for name in STEPS:
            s = res["steps"][name]
            print(f"| {res['files']:,} | {name} | {s['git_calls']:g} | {s['git_cpu_ms']} | "
                  f"{s['daemon_cpu_ms']} | {s['wall_ms']} |")
        print(f"| {res['files']:,} | **batch** | {res['git_calls']:g} | {res['git_cpu_ms']} | "
              f"{res['daemon_cpu_ms']} | {res['wall_ms']} |")
    # Verification alone: its git processes and CPU (git's and the daemon's) per batch, and
    # how they grow from the smallest repository to each larger one.
    first = results[0]["steps"]["verify"]
    for res in results:
        v = res["steps"]["verify"]
        cpu, first_cpu = v["git_cpu_ms"] + v["daemon_cpu_ms"], (first["git_cpu_ms"]
                                                                  + first["daemon_cpu_ms"])
        print(f"verify at {res['files']:,} files: {v['git_calls']:g} git processes ("
              + ", ".join(f"{k} {n:g}" for k, n in res["verify_subcommands_per_batch"].items())
              + f"), {v['git_cpu_ms']} ms git CPU + {v['daemon_cpu_ms']} ms daemon CPU = "
              f"{cpu:.1f} ms, x{cpu / first_cpu if first_cpu else 0:.2f} of "
              f"{results[0]['files']:,} files")
    for res in results:
        print(f"{res['files']:,} files:", ", ".join(
            f"{k} {v:g}" for k, v in res["subcommands_per_batch"].items()), file=sys.stderr)


if __name__ == "__main__":
    main()
