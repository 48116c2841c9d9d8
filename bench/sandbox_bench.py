"""Sandbox benchmark: what confinement adds to one test-command run.

    .venv/bin/python bench/sandbox_bench.py [--runs 40] [--json]

Side by side, through the same runner (``run_confined``: own session, output tail, group kill
at the end), in one temporary worktree:

- **baseline**: the ``off`` sandbox (the command runs with the daemon's rights);
- **bwrap**: the bubblewrap profile BuildRunner uses (every namespace, a root built from the
  system folders, private /tmp, prlimit limits, the venv bound read-only).

for two commands: ``sh -c true`` (the fixed cost) and ``python -c pass`` with the venv's
interpreter (a test command's interpreter start). It prints the median and p90 per run of each
and the overhead (bwrap - baseline). Target: under 50 ms. Figures are recorded in
docs/benchmarks.md under "## Sandbox".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from buildrunnerd.sandbox import (  # noqa: E402
    Sandbox,
    SandboxPolicy,
    run_confined,
    select_sandbox,
    toolchain_paths,
)


async def _time(sandbox: Sandbox, argv: list[str], policy: SandboxPolicy, runs: int
                ) -> list[float]:
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        result = await run_confined(sandbox, argv, policy, timeout_s=30)
        times.append((time.perf_counter() - start) * 1000)
        if result.returncode != 0:
            raise SystemExit(f"{sandbox.name}: {argv} exited {result.returncode}: "
                             f"{result.output.decode(errors='replace')}")
    return times


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1], 2)}


async def main_async(runs: int) -> dict[str, Any]:
    bwrap = await select_sandbox("bwrap")
    off = await select_sandbox("off")
    commands = {
        "sh -c true": ["/bin/sh", "-c", "true"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as folder:
        policy = SandboxPolicy(worktree=folder,
                               readonly_paths=toolchain_paths(f"{sys.executable} -c pass"))
        for name, argv in commands.items():
            await _time(off, argv, policy, 3)  # warm the page cache for both
            await _time(bwrap, argv, policy, 3)
            # Interleaved rounds, so a burst of load on the machine hits both alike.
            base: list[float] = []
            confined: list[float] = []
            for _ in range(runs):
                base += await _time(off, argv, policy, 1)
                confined += await _time(bwrap, argv, policy, 1)
            b, c = _stats(base), _stats(confined)
            rows[name] = {"baseline": b, "bwrap": c,
                          "overhead_median_ms": round(c["median_ms"] - b["median_ms"], 2)}
    return {"runs": runs, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                      "platform": platform.platform()}, "commands": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = anyio.run(main_async, args.runs)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['runs']} runs each, {result['machine']['cpus']} cores, "
          f"Python {result['machine']['python']}")
    print(f"{'command':<16} {'baseline med/p90':>18} {'bwrap med/p90':>16} {'overhead':>9}")
    for name, row in result["commands"].items():
        b, c = row["baseline"], row["bwrap"]
        print(f"{name:<16} {b['median_ms']:>8.1f}/{b['p90_ms']:<8.1f} ms "
              f"{c['median_ms']:>7.1f}/{c['p90_ms']:<7.1f} ms {row['overhead_median_ms']:>6.1f} ms")


if __name__ == "__main__":
    main()
