"""brctl's control commands against a real daemon: pause, resume, cancel, retry."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.brctl.brctl_support import BRCTL, Daemon


def _json(daemon: Daemon, *args: str) -> object:
    result = daemon.brctl("--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_pause_resume_cancel(start_daemon: Callable[..., Daemon], realworld_repo: Path) -> None:
    # Slow enough (20 ms per estimated task minute: 1-2 s per batch) to act mid-run.
    daemon = start_daemon(ms_per_minute=20)
    submitted = _json(daemon, "submit", str(realworld_repo / "PROJECT_SPEC.md"))
    assert isinstance(submitted, dict)
    run_id = submitted["run_id"]

    paused = daemon.brctl("pause", run_id)
    assert paused.exit_code == 0, paused.output
    assert f"paused run {run_id} (now paused)" in paused.stdout
    status = _json(daemon, "status", run_id)
    assert isinstance(status, dict) and status["state"] == "paused"
    # A paused run is active: `status` without RUN lists it.
    active = _json(daemon, "status")
    assert isinstance(active, list) and [r["id"] for r in active] == [run_id]

    resumed = daemon.brctl("resume", run_id)
    assert resumed.exit_code == 0, resumed.output
    status = _json(daemon, "status", run_id)
    assert isinstance(status, dict) and status["state"] in ("running", "succeeded")

    cancelled = daemon.brctl("cancel", run_id)
    assert cancelled.exit_code == 0, cancelled.output
    follow = daemon.brctl("status", run_id, "--follow")
    assert follow.exit_code == 1, follow.output  # documented: a cancelled run ends with 1
    assert follow.stdout.strip(), follow.output
    assert "run cancelled" in follow.stdout.splitlines()[-1], follow.output
    tasks = _json(daemon, "tasks", run_id)
    assert isinstance(tasks, dict) and tasks["state"] == "cancelled"
    assert "cancelled" in {t["state"] for t in tasks["tasks"]}

    again = daemon.brctl("resume", run_id)
    assert again.exit_code == 1 and again.stderr.strip()  # a finished run cannot resume


def test_retry_after_a_failure_unblocks_and_succeeds(
    start_daemon: Callable[..., Daemon], realworld_repo: Path, tmp_path: Path
) -> None:
    # The test command runs confined: the gate folder is the one host path it may read.
    gate = tmp_path / "gate"
    gate.mkdir()
    config = tmp_path / "xdg-config" / "buildrunner" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[sandbox]\nreadonly_paths = ["{gate}"]\n')
    daemon = start_daemon()
    marker = gate / "tests-pass"
    submitted = _json(daemon, "submit", str(realworld_repo / "PROJECT_SPEC.md"),
                      "--test-cmd", f"test -e {marker}")
    assert isinstance(submitted, dict)
    run_id = submitted["run_id"]
    first = daemon.brctl("status", run_id, "--follow")
    assert first.exit_code == 1, first.output
    assert "run failed" in first.stdout.splitlines()[-1]

    tasks = _json(daemon, "tasks", run_id)
    assert isinstance(tasks, dict)
    states = {t["id"]: t["state"] for t in tasks["tasks"]}
    failed = [task_id for task_id, state in states.items() if state == "failed"]
    assert failed and "blocked" in states.values()

    # `brctl task` shows why it failed: the verification report with the failing check.
    why = _json(daemon, "task", failed[0])
    assert isinstance(why, dict) and why["verification"]["passed"] is False
    shown = daemon.brctl("task", failed[0]).stdout
    assert "verification: failed" in shown and "FAIL" in shown, shown

    marker.touch()
    retried_ids = []
    for task_id in failed:
        task = _json(daemon, "task", task_id)
        assert isinstance(task, dict)
        if task["state"] != "failed":
            continue  # re-queued with a batch mate that was retried first
        retried = daemon.brctl("retry", task_id)
        assert retried.exit_code == 0, retried.output
        assert f"re-queued task {task_id}" in retried.stdout
        retried_ids.append(task_id)
    assert retried_ids
    second = daemon.brctl("logs", run_id, "--follow")
    assert second.exit_code == 0, second.output
    assert "run succeeded" in second.stdout.splitlines()[-1]
    final = _json(daemon, "tasks", run_id)
    assert isinstance(final, dict)
    assert {t["state"] for t in final["tasks"]} == {"succeeded"}


def test_follow_survives_a_daemon_restart(
    start_daemon: Callable[..., Daemon], realworld_repo: Path
) -> None:
    daemon = start_daemon(ms_per_minute=8)
    submitted = _json(daemon, "submit", str(realworld_repo / "PROJECT_SPEC.md"))
    assert isinstance(submitted, dict)
    run_id = submitted["run_id"]
    follower = subprocess.Popen(
        [*BRCTL, "--socket", str(daemon.socket), "--json", "status", run_id, "--follow"],
        env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())  # following, mid-run
        assert first["run_id"] == run_id
        status = _json(daemon, "status", run_id)
        assert isinstance(status, dict) and status["state"] == "running"  # restart mid-run
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=60) == 0
        start_daemon(ms_per_minute=8)  # same socket and home: it recovers the run
        rest, errors = follower.communicate(timeout=90)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, errors
    events = [first, *(json.loads(line) for line in rest.splitlines())]
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))  # resumed after the last event seen: no gap shown twice
    assert events[-1]["type"] == "run.succeeded"
