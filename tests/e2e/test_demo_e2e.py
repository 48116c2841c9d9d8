"""The README's run command, end to end: ./scripts/demo on the simulated backend."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_builds_the_example_and_stops_the_daemon(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANTHROPIC_API_KEY", "BUILDRUNNER_SOCKET", "BUILDRUNNER_HOME",
                        "BUILDRUNNER_CONFIG", "NOTIFY_SOCKET")}
    env.update(BUILDRUNNER_DEMO_DIR=str(demo), BUILDRUNNER_SIM_MS_PER_MINUTE="0")
    result = subprocess.run([str(ROOT / "scripts" / "demo")], env=env, capture_output=True,
                            text=True, timeout=110, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "SIMULATED backend" in output

    repo = demo / "todo-api"
    branches = subprocess.run(
        ["git", "-C", str(repo), "for-each-ref", "--format=%(refname:short)",
         "refs/heads/buildrunner/*"], capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()
    assert len(branches) == 1
    assert f"the result is on branch {branches[0]}" in output

    # Every file the plan names is on the run branch.
    plan = json.loads(subprocess.run(
        [str(ROOT / ".venv" / "bin" / "buildrunnerd"), "plan", "--json",
         str(ROOT / "examples" / "todo-api" / "PROJECT_SPEC.md")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout)
    on_branch = set(subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "--name-only", branches[0]],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split())
    named = {f for task in plan["tasks"] for f in task["files"]}
    assert named and named <= on_branch

    # The daemon was stopped by the script's exit trap: it logged its stop and its pid is gone.
    log = (demo / "buildrunnerd.log").read_text()
    assert "daemon.stopped" in log
    logged_pid = re.search(r"\bpid=(\d+)", log)
    assert logged_pid is not None, log
    pid = int(logged_pid.group(1))
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not (demo / "buildrunnerd.sock").exists()


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    env = {**os.environ, "BUILDRUNNER_DEMO_DIR": str(precious)}
    env.pop("ANTHROPIC_API_KEY", None)
    result = subprocess.run([str(ROOT / "scripts" / "demo")], env=env, capture_output=True,
                            text=True, timeout=110, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "was not made by this demo" in result.stderr
    assert (precious / "notes.txt").read_text() == "keep me"
