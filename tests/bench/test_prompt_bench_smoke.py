"""The prompt bench still runs on a small plan, and its two ways of building agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_prompt_bench_builds_identical_prompts_both_ways() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "prompt_bench.py"), "--tasks", "40",
         "--repeat", "1", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)["rows"]
    assert [r["case"] for r in rows] == ["scale", "files"]
    assert all(r["identical_prompts"] and r["batches"] > 0 for r in rows)
