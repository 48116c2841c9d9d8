"""The scale bench still runs (a tiny size; the real figures come from running it by hand,
see docs/benchmarks.md): both kinds of run succeed and every reported figure is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_scale_bench_runs_scratch_and_git_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "daemon_scale.py"), "--sizes", "20",
         "--kinds", "scratch,git", "--workers", "2", "--timeout-s", "120", "--repeats", "1",
         "--json"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)["rows"]
    assert [(r["kind"], r["tasks"], r["state"]) for r in rows] == [
        ("scratch", 20, "succeeded"), ("git", 20, "succeeded")]
    for row in rows:
        assert row["tasks_done"] == 20 and row["tasks_per_s"] > 0
        assert row["peak_rss_mb"] > 0 and row["db_mb"] > 0
        assert row["status_ms"] > 0 and row["logs_ms"] > 0 and row["run_get_ms"] > 0
        # The load-independent figures: the daemon's CPU before the first dispatch and per
        # batch after it (a batch costs some CPU; /proc is read in clock ticks, hence >= 0).
        assert row["batches_done"] > 0 and row["to_first_dispatch_s"] >= 0
        assert row["planning_cpu_s"] >= 0 and row["cpu_ms_per_batch"] >= 0
        assert row["daemon_cpu_s"] > 0
