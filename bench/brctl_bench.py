"""``brctl --json status`` round trip against ``python -c pass`` (issue 13: target <= 2x).

Run: ``.venv/bin/python bench/brctl_bench.py [--runs N] [--tasks-features F] [--json]``.

Starts a real ``buildrunnerd`` (simulated backend) in a temporary directory, submits one
repository-less run of F generated features (2 tasks each; it finishes at once) so
``status RUN`` has tasks to print, then times fresh processes, interleaved round-robin so that
load on a shared machine hits every command alike:

- ``python -c pass`` (the same interpreter: the baseline);
- for reference, the parts of the floor: ``python -S -c pass`` (the interpreter without
  ``site``, i.e. without the venv's ``.pth`` files: the editable install's import finder is
  part of the baseline), ``python -c "import click"``, the same with brctl's fast exit
  (``os._exit`` after flushing, which skips the teardown of click's modules), and that plus
  the ``run.list`` round trip written out by hand with ``json`` and ``socket`` (what
  ``brctl --json status`` does, minus click's parsing and brctl's own modules): the floor of
  a click client;
- ``brctl --json status`` (no run active: one ``run.list``), ``brctl --json status RUN``
  (``run.resolve``, ``run.get``) and ``brctl --json ping`` through the installed console
  script: the one click client (brctl/_cli.py), which imports late what it needs;
- ``brctl --json status`` with the socket from ``$BUILDRUNNER_SOCKET`` instead of
  ``--socket`` (the path rules of buildrunnerd.paths are imported then, with pathlib).

With ``--before TREE`` (a checkout of another commit, e.g. ``git worktree add /tmp/base main``)
the three brctl rows are also timed with that tree's code, interleaved with this one's: both
then run with ``PYTHONPATH`` set to their tree (the same import path for both; this venv's
editable install would otherwise favour neither exactly).

Bytecode caches are allowed (``PYTHONDONTWRITEBYTECODE`` is dropped from the children's
environment, as on a user's machine) and warmed up first. Reports medians and ratios of the
wall clock (what the target is about), the fastest runs, and the median CPU time (user +
system, which the load of a shared machine moves much less).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brctl._client import RpcClient  # noqa: E402
from brctl._errors import DaemonUnreachableError  # noqa: E402

READY_TIMEOUT_S = 30.0
# `brctl --json status` without brctl: import click, one run.list over the socket, print, exit
# fast. argv[1] is the socket.
FLOOR_PROGRAM = """
import click, json, os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"run.list"}\\n')
reply = b""
while not reply.endswith(b"\\n"):
    reply += sock.recv(65536)
print(json.dumps(json.loads(reply)["result"], indent=2))
sys.stdout.flush()
os._exit(0)
"""
RUN_TIMEOUT_S = 120.0


def generated_spec(features: int) -> str:
    """A chain of ``features`` small features (the planner makes 2 tasks of each)."""
    lines = ["# brctl bench", "", "Generated for the brctl round-trip benchmark.", "",
             "## Features", ""]
    for i in range(features):
        lines += [f"### Feature {i}", ""]
        if i % 5:
            lines += [f"**Depends on:** Feature {i - 1}", ""]
        lines += ["Domain: backend", "", "#### Requirements", f"- [ ] `pkg/m{i}.py` does {i}.",
                  "", "#### Acceptance Criteria", f"- [ ] Feature {i} works.", ""]
    return "\n".join(lines)


class Daemon:
    """A buildrunnerd subprocess on a socket in a temporary directory."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.socket = workdir / "d.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "buildrunnerd", "--backend", "simulated",
             "--home", str(workdir / "home"), "--socket", str(self.socket)],
            env={**env, "BUILDRUNNER_SIM_MS_PER_MINUTE": "0"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with RpcClient(self.socket, timeout_s=5.0) as client:
                    client.call("daemon.ping")
                return
            except DaemonUnreachableError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("buildrunnerd did not start") from None
                time.sleep(0.05)

    def submit(self, features: int) -> tuple[str, int]:
        """Submit a run, wait for it to end; its id and task count."""
        with RpcClient(self.socket, timeout_s=RUN_TIMEOUT_S) as client:
            submitted = client.call("run.submit", {"spec_text": generated_spec(features)})
            run_id = str(submitted.get("run_id") or submitted["id"])
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                run = client.call("run.get", {"run_id": run_id})
                if run["state"] in ("succeeded", "failed", "cancelled"):
                    return run_id, len(run.get("tasks") or [])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {run_id} did not finish")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def measure(commands: dict[str, tuple[list[str], dict[str, str]]], runs: int,
            warmup: int = 3) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU (user + system) seconds of each command, ``runs`` times, interleaved
    round-robin. The CPU time, from ``RUSAGE_CHILDREN`` around each run, moves far less with
    the machine's load than the wall clock."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu_times: dict[str, list[float]] = {name: [] for name in commands}
    for round_no in range(warmup + runs):
        for name, (argv, env) in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, check=False)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if result.returncode != 0:
                raise RuntimeError(f"{name} exited {result.returncode}: {result.stderr!r}")
            if round_no >= warmup:
                times[name].append(elapsed)
                cpu_times[name].append(after.ru_utime - before.ru_utime
                                       + after.ru_stime - before.ru_stime)
    return times, cpu_times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="timed runs of each command")
    parser.add_argument("--tasks-features", type=int, default=10,
                        help="features of the run that `status RUN` prints (2 tasks each)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help="also time brctl from this source tree (before/after pairs)")
    args = parser.parse_args()
    if args.before is not None and not (args.before / "brctl" / "_cli.py").is_file():
        parser.error(f"--before {args.before}: no brctl/_cli.py in that tree")

    brctl = shutil.which("brctl", path=str(Path(sys.executable).parent))
    if brctl is None:
        parser.error("no brctl console script next to this interpreter: pip install -e .")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BUILDRUNNER_", "ANTHROPIC_", "BRCTL_"))
           and k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="brctl-bench-") as tmp:
        daemon = Daemon(Path(tmp), env)
        try:
            run_id, task_count = daemon.submit(args.tasks_features)
            sock = ["--socket", str(daemon.socket)]
            socket_env = {**env, "BUILDRUNNER_SOCKET": str(daemon.socket)}
            commands = {
                "python -c pass": ([sys.executable, "-c", "pass"], env),
                "python -S -c pass (no site, no .pth)": ([sys.executable, "-S", "-c", "pass"], env),
                "python -c 'import click'": ([sys.executable, "-c", "import click"], env),
                "import click + fast exit":
                    ([sys.executable, "-c", "import click, os, sys; sys.stdout.flush(); "
                      "os._exit(0)"], env),
                "+ run.list by hand (the floor)":
                    ([sys.executable, "-c", FLOOR_PROGRAM, str(daemon.socket)], env),
                "brctl --json status": ([brctl, *sock, "--json", "status"], env),
                "brctl --json status RUN": ([brctl, *sock, "--json", "status", run_id], env),
                "brctl --json ping": ([brctl, *sock, "--json", "ping"], env),
                "brctl --json status ($BUILDRUNNER_SOCKET)":
                    ([brctl, "--json", "status"], socket_env),
            }
            if args.before is not None:
                polled = {"status": ["status"], "status RUN": ["status", run_id],
                          "ping": ["ping"]}
                for label, tree in (("before", args.before.resolve()), ("after", ROOT)):
                    tree_env = {**env, "PYTHONPATH": str(tree)}
                    for name, words in polled.items():
                        commands[f"{label}: brctl --json {name}"] = (
                            [brctl, *sock, "--json", *words], tree_env)
            load_before = os.getloadavg()
            times, cpu_times = measure(commands, args.runs)
            load_after = os.getloadavg()
        finally:
            daemon.stop()

    baseline = statistics.median(times["python -c pass"])
    baseline_cpu = statistics.median(cpu_times["python -c pass"])
    baseline_min = min(times["python -c pass"])
    result: dict[str, Any] = {
        "runs": args.runs, "status_run_tasks": task_count,
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "commands": {name: {"median_ms": round(statistics.median(t) * 1000, 1),
                            "min_ms": round(min(t) * 1000, 1),
                            "ratio": round(statistics.median(t) / baseline, 2),
                            # On a loaded machine the medians carry the load; the fastest runs
                            # show what the program itself costs.
                            "min_ratio": round(min(t) / baseline_min, 2),
                            "cpu_median_ms": round(statistics.median(cpu_times[name]) * 1000, 1),
                            "cpu_ratio": round(statistics.median(cpu_times[name]) / baseline_cpu,
                                               2)}
                     for name, t in times.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.runs} runs each, interleaved; Python {result['python']}, "
          f"{result['cpus']} CPUs, load average {load_before[0]:.2f} -> {load_after[0]:.2f}; "
          f"status RUN prints {task_count} tasks")
    for name, figures in result["commands"].items():
        print(f"  {name:<44} median {figures['median_ms']:6.1f} ms  "
              f"{figures['ratio']:.2f}x  (min {figures['min_ms']:6.1f} ms  "
              f"{figures['min_ratio']:.2f}x)  cpu {figures['cpu_median_ms']:5.1f} ms  "
              f"{figures['cpu_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
