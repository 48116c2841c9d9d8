"""Scheduling and daemon benchmarks (issue 3). Run: ``.venv/bin/python bench/sched_bench.py``.

1. Scheduling quality, on a virtual clock: random DAGs of 50-500 tasks with random durations,
   driven through the daemon's own policy code (``RunGraph`` + ``pick_next`` from
   ``buildrunnerd.daemon._scheduler``) and through a level-by-level barrier scheduler (each
   level waits for the previous one; longest task first inside a level). Both report
   makespan / lower bound, where lower bound = max(critical path, total work / workers).
   Targets: ours <= 1.10 on average; ours better than barrier on every DAG with > 1 level.
2. Daemon overhead: a real ``buildrunnerd`` subprocess (simulated backend, zero latency, a
   repository-less run so no git is involved), one spec of N tasks submitted over the socket;
   tasks/s from ``run.submit`` to the ``run.succeeded`` event (submit -> dispatch -> persist ->
   complete). Target >= 200 tasks/s.
3. ``brctl status RUN --json`` round trip against ``python -c pass`` (both fresh processes).
   Target < 2x.

``--quick`` runs fewer DAGs and repetitions (CI smoke); ``--json`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from buildrunnerd.daemon._scheduler import BatchSpec, RunGraph, RunSlot, pick_next  # noqa: E402


# --- 1. scheduling quality on a virtual clock ----------------------------------------------
def random_dag(rng: random.Random, n: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """A layered random DAG: ``deps`` (task -> its dependencies) and durations in minutes."""
    # From chain-like (critical path dominates) to wide (total work dominates).
    width = rng.choice([1, 2, 4, 8, 16, 32])
    names = [f"t{i:04d}" for i in range(n)]
    deps: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        # Dependencies only on earlier tasks, mostly recent ones: a realistic, deep-ish graph.
        window = names[max(0, i - 3 * width): i]
        k = rng.choice([0, 1, 1, 2, 2, 3]) if window else 0
        deps[name] = sorted(rng.sample(window, min(k, len(window))))
    durations = {name: rng.choice([15, 30, 45, 60, 90, 120, 180, 240]) for name in names}
    return deps, durations


def priorities(deps: dict[str, list[str]], durations: dict[str, int]) -> dict[str, int]:
    """Longest path (by duration) from each task to the end, itself included (the planner's
    ``priority_minutes``)."""
    dependents: dict[str, list[str]] = {t: [] for t in deps}
    for task, ds in deps.items():
        for d in ds:
            dependents[d].append(task)
    prio: dict[str, int] = {}
    for task in reversed(list(deps)):  # names are in topological order
        prio[task] = durations[task] + max((prio[x] for x in dependents[task]), default=0)
    return prio


def levels_of(deps: dict[str, list[str]]) -> list[list[str]]:
    level: dict[str, int] = {}
    for task in deps:
        level[task] = 1 + max((level[d] for d in deps[task]), default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values()) + 1)]
    for task, lv in level.items():
        out[lv].append(task)
    return out


def lower_bound(deps: dict[str, list[str]], durations: dict[str, int], workers: int) -> float:
    finish: dict[str, int] = {}
    for task in deps:
        finish[task] = durations[task] + max((finish[d] for d in deps[task]), default=0)
    return max(max(finish.values()), sum(durations.values()) / workers)


def simulate_ours(deps: dict[str, list[str]], durations: dict[str, int], workers: int) -> int:
    """Makespan of the daemon's dynamic policy (its real RunGraph and pick_next)."""
    prio = priorities(deps, durations)
    graph = RunGraph(BatchSpec(t, tuple(ds), prio[t]) for t, ds in deps.items())
    slot = RunSlot("bench", graph, workers=workers)
    clock = 0
    running: list[tuple[int, str]] = []
    while True:
        while len(running) < workers and pick_next([slot]) is not None:
            task = graph.pop_ready()
            assert task is not None
            slot.in_flight[task] = None  # type: ignore[assignment]  # counts toward the limit
            heapq.heappush(running, (clock + durations[task], task))
        if not running:
            break
        clock, task = heapq.heappop(running)
        del slot.in_flight[task]
        graph.succeed(task)
    assert graph.all_succeeded
    return clock


def simulate_barrier(deps: dict[str, list[str]], durations: dict[str, int], workers: int) -> int:
    """Makespan of a level-by-level scheduler: a level starts when the previous one is done;
    inside a level, longest task first onto the least loaded worker."""
    clock = 0
    for level in levels_of(deps):
        loads = [0] * workers
        for task in sorted(level, key=lambda t: -durations[t]):
            i = loads.index(min(loads))
            loads[i] += durations[task]
        clock += max(loads)
    return clock


def bench_scheduling(rng: random.Random, count: int) -> dict[str, Any]:
    rows = []
    for _ in range(count):
        n = rng.randint(50, 500)
        workers = rng.choice([2, 4, 8])
        deps, durations = random_dag(rng, n)
        bound = lower_bound(deps, durations, workers)
        ours = simulate_ours(deps, durations, workers) / bound
        barrier = simulate_barrier(deps, durations, workers) / bound
        rows.append({"tasks": n, "workers": workers, "levels": len(levels_of(deps)),
                     "ours": round(ours, 4), "barrier": round(barrier, 4)})
    multi = [r for r in rows if r["levels"] > 1]
    return {
        "dags": len(rows),
        "ours_mean": round(statistics.mean(r["ours"] for r in rows), 4),
        "ours_max": max(r["ours"] for r in rows),
        "barrier_mean": round(statistics.mean(r["barrier"] for r in rows), 4),
        "ours_better_on_every_multilevel_dag": all(r["ours"] < r["barrier"] for r in multi),
        "rows": rows,
    }


# --- 2. daemon overhead ----------------------------------------------------------------------
def generated_spec(features: int) -> str:
    lines = ["# Throughput", "", "Generated for the daemon benchmark.", "", "## Features", ""]
    for i in range(features):
        lines += [f"### Feature {i}", ""]
        if i % 5:
            lines += [f"**Depends on:** Feature {i - 1}", ""]
        lines += ["Domain: backend", "", "#### Requirements", f"- [ ] `pkg/m{i}.py` does {i}.",
                  "", "#### Acceptance Criteria", f"- [ ] Feature {i} works.", ""]
    return "\n".join(lines)


class _Rpc:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buffer = b""
        self.next_id = 0

    def frame(self) -> Any:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("daemon closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        self.sock.sendall(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                                      "params": params}).encode() + b"\n")
        while True:
            reply = self.frame()
            if reply.get("id") == self.next_id:
                if reply.get("error"):
                    raise RuntimeError(reply["error"])
                return reply["result"]

    def close(self) -> None:
        self.sock.close()


class _Daemon:
    def __init__(self, workdir: Path, workers: int) -> None:
        self.home = workdir / "home"
        self.socket = Path(tempfile.mkdtemp(prefix="brb-")) / "d.sock"
        notify_path = workdir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDRUNNER_",
                                                                        "ANTHROPIC_"))}
        env.update(BUILDRUNNER_SIM_MS_PER_MINUTE="0", BUILDRUNNER_LOG_LEVEL="warning",
                   BUILDRUNNER_MAX_WORKERS_PER_RUN=str(workers),
                   NOTIFY_SOCKET=str(notify_path))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "buildrunnerd", "--backend", "simulated", "--workers",
             str(workers), "--home", str(self.home), "--socket", str(self.socket)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        notify.settimeout(30)
        while b"READY=1" not in notify.recv(4096):
            pass
        notify.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.socket.parent, ignore_errors=True)


def bench_daemon(workdir: Path, features: int, repeats: int, workers: int) -> dict[str, Any]:
    daemon = _Daemon(workdir, workers)
    try:
        rates: list[float] = []
        exec_rates: list[float] = []
        run_id = ""
        for _ in range(repeats):
            watcher = _Rpc(daemon.socket)
            client = _Rpc(daemon.socket)
            start = time.perf_counter()
            run = client.call("run.submit", spec_text=generated_spec(features), workers=workers)
            run_id = run["id"]
            watcher.call("events.subscribe", run_id=run_id)
            while True:
                note = watcher.frame()
                if note.get("params", {}).get("type") in ("run.succeeded", "run.failed"):
                    break
            elapsed = time.perf_counter() - start
            info = client.call("run.get", run_id=run_id)
            assert info["state"] == "succeeded", info["state"]
            rates.append(info["task_count"] / elapsed)
            # Execution alone (dispatch -> persist -> complete), from the stored timestamps.
            exec_rates.append(info["task_count"] / max(info["elapsed_s"], 1e-6))
            tasks = info["task_count"]
            watcher.close()
            client.close()
        brctl = _brctl_round_trip(daemon.socket, run_id, repeats=max(5, repeats * 3))
        # The daemon's share of a status: the two calls brctl makes, on an open connection.
        client = _Rpc(daemon.socket)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            client.call("run.get", run_id=run_id)
            client.call("task.list", run_id=run_id)
            times.append(time.perf_counter() - start)
        client.close()
        brctl["daemon_status_calls_ms"] = round(statistics.median(times) * 1000, 2)
    finally:
        daemon.stop()
    return {"tasks_per_run": tasks, "workers": workers,
            "tasks_per_s_median": round(statistics.median(rates), 1),
            "tasks_per_s_all": [round(r, 1) for r in rates],
            "execution_tasks_per_s_median": round(statistics.median(exec_rates), 1),
            "execution_tasks_per_s_all": [round(r, 1) for r in exec_rates], **brctl}


def _median_run(argv: list[str], repeats: int, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _brctl_round_trip(sock: Path, run_id: str, repeats: int) -> dict[str, Any]:
    brctl = shutil.which("brctl", path=str(Path(sys.executable).parent)) or "brctl"
    baseline = _median_run([sys.executable, "-c", "pass"], repeats)
    status = _median_run([brctl, "--socket", str(sock), "--json", "status", run_id], repeats)
    return {"python_c_pass_ms": round(baseline * 1000, 1),
            "brctl_status_json_ms": round(status * 1000, 1),
            "brctl_ratio": round(status / baseline, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer DAGs and repetitions")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--no-daemon", action="store_true", help="scheduling part only")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    result: dict[str, Any] = {"scheduling": bench_scheduling(rng, 20 if args.quick else 100)}
    if not args.no_daemon:
        with tempfile.TemporaryDirectory(prefix="sched-bench-") as tmp:
            result["daemon"] = bench_daemon(Path(tmp), features=100 if args.quick else 250,
                                            repeats=2 if args.quick else 3, workers=4)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s = result["scheduling"]
    print(f"scheduling: {s['dags']} random DAGs (50-500 tasks, 2/4/8 workers)")
    print(f"  makespan / lower bound  ours: mean {s['ours_mean']:.3f}, max {s['ours_max']:.3f}"
          f"   barrier: mean {s['barrier_mean']:.3f}")
    print(f"  ours better than barrier on every multi-level DAG: "
          f"{s['ours_better_on_every_multilevel_dag']}")
    if "daemon" in result:
        d = result["daemon"]
        print(f"daemon: {d['tasks_per_run']} tasks, {d['workers']} workers, zero latency")
        print(f"  submit -> run.succeeded (parse + plan included): {d['tasks_per_s_median']} "
              f"tasks/s (runs: {d['tasks_per_s_all']})")
        print(f"  run started -> finished (dispatch, persist, complete): "
              f"{d['execution_tasks_per_s_median']} tasks/s "
              f"(runs: {d['execution_tasks_per_s_all']})")
        print(f"  brctl status --json {d['brctl_status_json_ms']} ms vs python -c pass "
              f"{d['python_c_pass_ms']} ms: {d['brctl_ratio']}x (the daemon's part: "
              f"run.get + task.list of {d['tasks_per_run']} tasks in "
              f"{d['daemon_status_calls_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
