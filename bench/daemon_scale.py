"""The daemon at scale (issue 13). Run: ``.venv/bin/python bench/daemon_scale.py``.

One fresh ``buildrunnerd`` subprocess per run (simulated backend, zero latency, 4 workers), one
generated spec of N tasks (1,000, 5,000 and 10,000 by default), submitted over the socket:

- as a **scratch** run (``spec_text`` with ``scratch: true``: no git, the daemon alone), and
- in a **git** repository (the spec committed in a fresh repository, submitted by path: a
  worktree per batch, verification and a merge into the run branch; test command ``true``, so
  that a test suite growing with the run is not what is measured).

Reported per run: tasks/s from ``run.submit`` to the ``run.succeeded`` event (planning
included; a watcher subscribed to the run's events meanwhile, as ``brctl status --follow``
is), the daemon's peak RSS (``VmHWM``, read after the figures' queries; beside it the RSS
when the last batch succeeded), the database size (file + WAL) at the end, and the latency
of ``brctl --json status RUN`` and ``brctl --json logs RUN`` (fresh processes, median of
``--repeats``, 3) and of the daemon's ``run.get`` alone (median of 5, on an open connection).

Load-independent figures beside them (the machine is shared; its load moves tasks/s by more
than the target's margin): the daemon's CPU per batch from the first dispatch to the last batch
(``/proc/PID/stat`` every 20 ms, read back at the events' timestamps), the CPU and the time
from ``run.submit`` to the first dispatch (planning, storing and starting the run), and the
load average when the run ended. ``--rounds N`` runs the sizes N times, interleaved.

Target (scratch runs): tasks/s at 10,000 >= 0.8 x tasks/s at 1,000, i.e. a batch's CPU at
10,000 within 1.25 x its CPU at 1,000. A git run that does not finish within ``--timeout-s``
is reported with how far it got.

    .venv/bin/python bench/daemon_scale.py                       # everything (~10 min)
    .venv/bin/python bench/daemon_scale.py --kinds scratch --sizes 1000,10000 --rounds 3
    .venv/bin/python bench/daemon_scale.py --sizes 50 --json     # the smoke test's run
    .venv/bin/python bench/daemon_scale.py --kinds git --sizes 1000 --layout nested
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def generated_spec(tasks: int, layout: str = "flat") -> str:
    """A spec the heuristic planner turns into ``tasks`` tasks (two per feature: the feature's
    code and its tests), in chains of five features; batches of two tasks. ``layout``: every
    module in one folder ``pkg/`` (``flat``), or in sub-packages of 50 (``nested``, as real
    projects are: each commit then rewrites a small tree object, not one of N entries)."""
    features = max(1, tasks // 2)
    lines = ["# Scale", "", "Generated for the daemon scale benchmark.", "", "## Features", ""]
    for i in range(features):
        lines += [f"### Feature {i}", ""]
        if i % 5:
            lines += [f"**Depends on:** Feature {i - 1}", ""]
        lines += ["Domain: backend", "", "#### Requirements",
                  f"- [ ] `{_module(layout, i)}` does {i}.", "",
                  "#### Acceptance Criteria", f"- [ ] Feature {i} works.", ""]
    return "\n".join(lines)


def _module(layout: str, i: int) -> str:
    return f"pkg/m{i}.py" if layout == "flat" else f"pkg/s{i // 50}/m{i}.py"


class Rpc:
    """A minimal JSON-RPC client on the Unix socket (the bench measures the daemon, so the
    client stays out of the way: no brctl import)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buffer = b""
        self.next_id = 0

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        self.sock.sendall(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                                      "params": params}).encode() + b"\n")
        while True:
            line = self.line()
            if line.startswith(b'{"jsonrpc":"2.0","method":"event"'):
                continue
            reply = json.loads(line)
            if reply.get("id") == self.next_id:
                if reply.get("error"):
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """A ``buildrunnerd`` subprocess, ready once it sent sd_notify ``READY=1``."""

    def __init__(self, workdir: Path, workers: int, spans: list[str] | None = None,
                 profile: Path | None = None) -> None:
        self.home = workdir / "home"
        self.socket = Path(tempfile.mkdtemp(prefix="brs-")) / "d.sock"
        notify_path = workdir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BUILDRUNNER_", "ANTHROPIC_"))}
        env.pop("XDG_CONFIG_HOME", None)  # the built-in defaults, not the user's config
        env["HOME"] = str(workdir)
        env.update(BUILDRUNNER_SIM_MS_PER_MINUTE="0", BUILDRUNNER_LOG_LEVEL="warning",
                   BUILDRUNNER_MAX_WORKERS_PER_RUN=str(workers),
                   NOTIFY_SOCKET=str(notify_path))
        self.env = env
        # --spans: the same daemon through bench/daemon_spans.py (time per batch step);
        # --profile: through it too, under cProfile (thread CPU time), spans only if asked.
        self.spans_path = workdir / "spans.json"
        wrapped = spans is not None or profile is not None
        entry = ["-m", "buildrunnerd"] if not wrapped else [
            str(ROOT / "bench" / "daemon_spans.py"), str(self.spans_path),
            *([f"--detail={','.join(spans)}"] if spans else []),
            *([] if spans is not None else ["--cpu-only"]),
            *([f"--profile={profile}"] if profile is not None else [])]
        self.proc = subprocess.Popen(
            [sys.executable, *entry, "--backend", "simulated", "--workers",
             str(workers), "--home", str(self.home), "--socket", str(self.socket)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        notify.settimeout(60)
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
        finally:
            notify.close()

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        """The daemon's CPU seconds so far (user + system, every thread)."""
        return self.cpu_and_rss()[0]

    def cpu_and_rss(self) -> tuple[float, float]:
        """The daemon's CPU seconds so far (user + system, every thread) and its RSS in MB
        (MiB, as ``peak_rss_mb``) now, from the same read."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return ((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
                int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20))

    def db_mb(self) -> float:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            path = self.home / f"buildrunner.db{suffix}"
            if path.exists():
                total += path.stat().st_size
        return total / 1e6

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.socket.parent, ignore_errors=True)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _make_repo(path: Path, spec: str) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.email", "bench@example.invalid")
    _git(path, "config", "user.name", "bench")
    (path / "README.md").write_text("# bench\n")
    (path / "SPEC.md").write_text(spec)
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "spec")
    return path / "SPEC.md"


def _median_ms(argv: list[str], env: dict[str, str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


class CpuSampler:
    """The daemon's CPU seconds every 20 ms, on a thread: what it spent between two moments
    of the run (read back from the events' timestamps) is a measure no machine load moves
    much, unlike the wall-clock figures."""

    def __init__(self, daemon: Daemon) -> None:
        self.samples: list[tuple[float, float]] = []
        self.rss_mb: list[float] = []  # beside each sample
        self._stop = threading.Event()
        self._daemon = daemon
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            cpu_s, rss_mb = self._daemon.cpu_and_rss()
            self.samples.append((time.time(), cpu_s))
            self.rss_mb.append(rss_mb)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, when: float) -> float:
        """The CPU seconds of the first sample at or after ``when``."""
        return self.samples[self._index(when)][1]

    def rss_at(self, when: float) -> float:
        """The RSS in MB of the first sample at or after ``when``."""
        return self.rss_mb[self._index(when)]

    def max_rss_until(self, when: float) -> float:
        """The largest RSS in MB sampled up to ``when``."""
        return max(self.rss_mb[:self._index(when) + 1], default=float("nan"))

    def _index(self, when: float) -> int:
        return min(bisect.bisect_left(self.samples, (when, -1.0)), len(self.samples) - 1)


def _stamps(client: Rpc, run_id: str, event_type: str, limit: int = 5000) -> list[float]:
    stamps: list[float] = []
    since = 0
    while True:
        page = client.call("events.list", run_id=run_id, since=since, limit=limit,
                           types=[event_type])
        if not page:
            break
        stamps += [datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                   for e in page]
        since = page[-1]["id"]
        if len(stamps) >= limit:
            break
    return stamps


def _decile_rates(stamps: list[float]) -> tuple[float, float]:
    tenth = len(stamps) // 10
    if tenth < 2:
        return 0.0, 0.0

    def rate(part: list[float]) -> float:
        return round((len(part) - 1) / max(part[-1] - part[0], 1e-3), 1)

    return rate(stamps[:tenth]), rate(stamps[-tenth:])


def bench_one(
    kind: str, tasks: int, workers: int, timeout_s: float, repeats: int = 3,
    spans: list[str] | None = None, layout: str = "flat", profile_dir: Path | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"scale-{kind}-{tasks}-") as tmp:
        workdir = Path(tmp)
        spec = generated_spec(tasks, layout)
        params: dict[str, Any] = {"workers": workers}
        if kind == "git":
            params["spec_path"] = str(_make_repo(workdir / "repo", spec))
            # A constant test command: the figures are the daemon's git path (worktrees,
            # checks, merges), not pytest collecting a test suite that grows with the run.
            params["test_cmd"] = "true"
        else:
            params.update(spec_text=spec, scratch=True)
        profile = None
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            profile = profile_dir / f"{kind}-{layout}-{tasks}.prof"
        daemon = Daemon(workdir, workers, spans, profile)
        try:
            client = Rpc(daemon.socket)
            watcher = Rpc(daemon.socket)
            sampler = CpuSampler(daemon)
            start = time.perf_counter()
            start_wall = time.time()
            cpu_before = daemon.cpu_s()
            run = client.call("run.submit", **params)
            submit_s = time.perf_counter() - start
            run_id = run["id"]
            watcher.call("events.subscribe", run_id=run_id)
            deadline = start + timeout_s
            state = "timeout"
            try:
                while True:
                    # A deadline, not a per-recv timeout: events keep arriving while it runs.
                    watcher.sock.settimeout(max(0.1, deadline - time.perf_counter()))
                    if time.perf_counter() >= deadline:
                        break
                    line = watcher.line()
                    if b'"type":"run.succeeded"' in line:
                        state = "succeeded"
                        break
                    if b'"type":"run.failed"' in line or b'"type":"run.cancelled"' in line:
                        state = "failed"
                        break
            except TimeoutError:
                pass
            elapsed = time.perf_counter() - start
            cpu_end = daemon.cpu_s()
            sampler.stop()
            watcher.close()
            # A new connection for the figures: the daemon closes a client idle for longer
            # than its client_idle_timeout_s, as this one was during a long run.
            client.close()
            client = Rpc(daemon.socket)
            info = client.call("run.list")[0]
            succeeded = _stamps(client, run_id, "batch.succeeded")
            first_rate, last_rate = _decile_rates(succeeded)
            first_dispatch = _stamps(client, run_id, "batch.dispatched", limit=1)
            # Planning (parse, plan, store, start) vs the batches: the daemon's CPU up to the
            # first dispatch, and from there to the last batch, per batch.
            dispatched_at = first_dispatch[0] if first_dispatch else start_wall
            cpu_at_dispatch = sampler.at(dispatched_at)
            cpu_at_last = sampler.at(succeeded[-1]) if succeeded else cpu_end
            done = info["tasks_by_state"].get("succeeded", 0)
            rpc_times = []
            for _ in range(repeats + 2):
                t0 = time.perf_counter()
                client.call("run.get", run_id=run_id)
                rpc_times.append(time.perf_counter() - t0)
            client.close()
            brctl = str(Path(sys.executable).parent / "brctl")
            env = {**daemon.env, "BUILDRUNNER_SOCKET": str(daemon.socket)}
            row = {
                "kind": kind, "layout": layout, "tasks": info["task_count"], "state": state,
                "tasks_done": done, "elapsed_s": round(elapsed, 2),
                "submit_reply_s": round(submit_s, 3),
                "tasks_per_s": round(done / elapsed, 1),
                "to_first_dispatch_s": round(dispatched_at - start_wall, 2),
                "planning_cpu_s": round(cpu_at_dispatch - cpu_before, 2),
                "batches_done": len(succeeded),
                "cpu_ms_per_batch": round(
                    (cpu_at_last - cpu_at_dispatch) * 1000 / max(1, len(succeeded)), 2),
                "daemon_cpu_s": round(cpu_end - cpu_before, 2),
                # Within the run (the same machine load): batches/s in the first and the last
                # tenth of the run's batches. Equal when a batch costs the same at any size.
                "first_tenth_batches_per_s": first_rate,
                "last_tenth_batches_per_s": last_rate,
                "peak_rss_mb": round(daemon.peak_rss_mb(), 1),
                # The run's own memory, before the figures' queries below (run.get, events
                # and brctl read every task and event and peak on their own): the RSS when
                # the last batch succeeded and the largest sampled until then.
                "rss_at_last_batch_mb": round(sampler.rss_at(succeeded[-1]), 1)
                if succeeded else None,
                "max_rss_during_batches_mb": round(sampler.max_rss_until(succeeded[-1]), 1)
                if succeeded else None,
                "db_mb": round(daemon.db_mb(), 1),
                "run_get_ms": round(statistics.median(rpc_times) * 1000, 1),
                "status_ms": _median_ms([brctl, "--json", "status", run_id], env, repeats),
                "logs_ms": _median_ms([brctl, "--json", "logs", run_id], env, repeats),
            }
        finally:
            daemon.stop()
        if daemon.spans_path.exists():
            row["spans"] = json.loads(daemon.spans_path.read_text(encoding="utf-8"))
        if profile is not None:
            row["profile"] = str(profile)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--kinds", default="scratch,git")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout-s", type=float, default=900.0,
                        help="give up on a run after this long (reported as a timeout)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="brctl status/logs runs per figure (the median is reported)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every size this many times, interleaved (1k, 10k, 1k, 10k, "
                             "...), so that a pair runs back to back under the same load")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--spans", nargs="?", const="", default=None, metavar="MODULES",
                        help="run the daemon through bench/daemon_spans.py and report the "
                             "time of each batch step; MODULES (comma-separated) are timed "
                             "function by function too")
    parser.add_argument("--layout", choices=("flat", "nested"), default="flat",
                        help="modules in one folder pkg/ (flat) or in sub-packages of 50")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run the daemon under cProfile (each thread's CPU time as the "
                             "clock, from the submit on) and write DIR/KIND-LAYOUT-TASKS.prof")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for _ in range(args.rounds):
        for kind in args.kinds.split(","):
            for size in sizes:
                spans = None if args.spans is None else [m for m in args.spans.split(",") if m]
                row = bench_one(kind, size, args.workers, args.timeout_s, args.repeats, spans,
                                args.layout, args.profile)
                row["load_avg_1m"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                if not args.json:
                    print(json.dumps(row), flush=True)
    ratios: dict[str, float] = {}
    cpu_ratios: dict[str, float] = {}
    for kind in args.kinds.split(","):
        mine: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            if r["kind"] == kind and r["state"] == "succeeded":
                mine.setdefault(r["tasks"], []).append(r)
        if len(mine) >= 2:
            small, big = mine[min(mine)], mine[max(mine)]

            def median(of: list[dict[str, Any]], key: str) -> float:
                return float(statistics.median(r[key] for r in of))

            ratios[kind] = round(median(big, "tasks_per_s") / median(small, "tasks_per_s"), 2)
            cpu_ratios[kind] = round(
                median(big, "cpu_ms_per_batch") / median(small, "cpu_ms_per_batch"), 2)
    if args.json:
        print(json.dumps({"rows": rows, "ratio_largest_to_smallest": ratios,
                          "cpu_per_batch_ratio_largest_to_smallest": cpu_ratios}, indent=2))
        return 0
    print()
    print("| run | tasks | state | s | tasks/s | to 1st dispatch s | planning CPU s |"
          " CPU ms/batch | batches/s first / last tenth | peak RSS MB | DB MB | status ms |"
          " logs ms | run.get ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        state = r["state"] if r["state"] != "timeout" else f"timeout ({r['tasks_done']} done)"
        print(f"| {r['kind']} | {r['tasks']:,} | {state} | {r['elapsed_s']} | {r['tasks_per_s']}"
              f" | {r['to_first_dispatch_s']} | {r['planning_cpu_s']} | {r['cpu_ms_per_batch']}"
              f" | {r['first_tenth_batches_per_s']} / {r['last_tenth_batches_per_s']}"
              f" | {r['peak_rss_mb']} | {r['db_mb']} | {r['status_ms']} | {r['logs_ms']} |"
              f" {r['run_get_ms']} |")
    for kind, ratio in ratios.items():
        print(f"{kind}: tasks/s at the largest size / at the smallest = {ratio} (target >= 0.8;"
              f" medians over the runs); daemon CPU per batch, largest / smallest ="
              f" {cpu_ratios[kind]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
