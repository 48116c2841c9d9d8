"""brctl against a real daemon: submit a real-world spec to success and inspect the run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from buildrunnerd import protocol
from tests.brctl.brctl_support import Daemon


def _submit(daemon: Daemon, repo: Path, *extra: str) -> str:
    result = daemon.brctl("--json", "submit", str(repo / "PROJECT_SPEC.md"), *extra)
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    assert isinstance(run_id, str) and run_id
    return run_id


def test_submit_follow_to_success_then_inspect(daemon: Daemon, realworld_repo: Path) -> None:
    run_id = _submit(daemon, realworld_repo, "--workers", "3", "--budget-usd", "5")

    # Follow it to the end with plain lines (CliRunner's stdout is not a terminal).
    follow = daemon.brctl("status", run_id, "--follow")
    assert follow.exit_code == 0, follow.output
    lines = follow.stdout.splitlines()
    assert any("run succeeded" in line for line in lines), follow.stdout
    assert all(line.split()[1] == run_id for line in lines if line.strip())

    status = json.loads(daemon.brctl("status", run_id, "--json").stdout)
    assert status["id"] == run_id
    assert status["state"] == "succeeded"
    assert status["branch"] == f"buildrunner/{run_id}"
    assert status["budget_usd"] == 5
    assert status["tasks"], status
    for task in status["tasks"]:
        assert task["state"] == "succeeded"
        assert task["attempts"] >= 1
        assert task["cost_usd"] == 0.0

    tasks = json.loads(daemon.brctl("--json", "tasks", run_id).stdout)
    assert tasks["id"] == run_id and tasks["state"] == "succeeded"
    assert {t["id"] for t in tasks["tasks"]} == {t["id"] for t in status["tasks"]}
    assert set(tasks["tasks"][0]) >= {"id", "state", "attempts", "cost_usd", "title"}

    one = tasks["tasks"][0]["id"]
    task = json.loads(daemon.brctl("task", one, "--json").stdout)
    # The spec names no file: its tasks require none (the planner's guesses are suggestions).
    assert task["id"] == one and task["prompt"] and task["files"] == []
    human_task = daemon.brctl("task", one).stdout
    assert "prompt:" in human_task and task["title"] in human_task

    logs = daemon.brctl("logs", run_id, "--json").stdout
    events = [json.loads(line) for line in logs.splitlines()]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    types = [e["type"] for e in events]
    assert types[0] == "run.submitted" and types[-1] == "run.succeeded"
    succeeded = [e["task_id"] for e in events
                 if e["type"] == "task.state_changed" and e["data"]["to"] == "succeeded"]
    assert sorted(succeeded) == sorted(t["id"] for t in status["tasks"])  # each exactly once

    # Following a finished run replays its history and ends with its outcome.
    replayed = daemon.brctl("--json", "status", run_id, "--follow")
    assert replayed.exit_code == 0
    assert [json.loads(line) for line in replayed.stdout.splitlines()] == events

    exported = daemon.brctl("export", run_id)
    assert [json.loads(line) for line in exported.stdout.splitlines()] == events

    human_logs = daemon.brctl("logs", run_id).stdout.splitlines()
    assert len(human_logs) == len(events) and "run succeeded" in human_logs[-1]

    runs = json.loads(daemon.brctl("runs", "--json").stdout)
    assert [r["id"] for r in runs] == [run_id]
    assert run_id in daemon.brctl("runs").stdout

    costs = json.loads(daemon.brctl("costs", "--json", "--run", run_id).stdout)
    for key in ("total_usd", "input_tokens", "output_tokens", "cache_read_input_tokens",
                "cache_creation_input_tokens", "rows"):
        assert key in costs
    assert costs["total_usd"] == 0.0
    assert "total" in daemon.brctl("costs", "--by", "day").stdout

    status_human = daemon.brctl("status", run_id).stdout
    assert "succeeded" in status_human and f"buildrunner/{run_id}" in status_human

    # No RUN and nothing active: says so, exit 0.
    idle = daemon.brctl("status")
    assert idle.exit_code == 0 and "no active runs" in idle.stdout
    assert json.loads(daemon.brctl("status", "--json").stdout) == []


def test_submit_follow_in_a_subprocess_prints_plain_lines(
    daemon: Daemon, realworld_repo: Path
) -> None:
    done = daemon.brctl_process("submit", str(realworld_repo / "PROJECT_SPEC.md"), "--follow")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    run_id = lines[0].strip()
    assert run_id.startswith("r-")
    assert "\x1b[" not in done.stdout  # piped: no terminal control sequences
    assert "run succeeded" in lines[-1]
    assert any("dispatched" in line for line in lines)
    ping = daemon.brctl_process("--json", "ping")
    assert ping.returncode == 0
    info = json.loads(ping.stdout)
    assert info["backend"] == "simulated" and info["simulated"] is True
    assert info["socket"] == str(daemon.socket)


def test_plan_through_the_daemon(daemon: Daemon, realworld_repo: Path) -> None:
    plan = daemon.brctl("plan", str(realworld_repo / "PROJECT_SPEC.md"), "--json")
    assert plan.exit_code == 0, plan.output
    data = json.loads(plan.stdout)
    assert data["tasks"] and data["batches"] and data["critical_path"]["task_ids"]
    human = daemon.brctl("plan", str(realworld_repo / "PROJECT_SPEC.md"))
    assert "critical path:" in human.stdout and data["tasks"][0]["id"] in human.stdout


def test_invalid_spec_exits_1_with_line_numbers(daemon: Daemon, tmp_path: Path) -> None:
    spec = tmp_path / "bad.md"
    spec.write_text(
        "# Broken\n\n## Feature: A\nDepends on: Nowhere\n- Build a\n  Files: a.py\n"
    )
    result = daemon.brctl("--json", "plan", str(spec))
    assert result.exit_code == 1
    errors = json.loads(result.stdout)["errors"]
    assert errors and all("message" in e and "line" in e for e in errors)
    assert str(spec) in result.stderr or "bad.md" in result.stderr


def test_daemon_errors_exit_1_with_the_message(daemon: Daemon) -> None:
    missing = daemon.brctl("status", "r-doesnotexist")
    assert missing.exit_code == 1
    assert "r-doesnotexist" in missing.stderr
    polled = daemon.brctl_process("--json", "status", "r-doesnotexist")
    assert polled.returncode == 1 and polled.stderr.startswith("error: no run matches")
    assert json.loads(polled.stdout)["error"] == {
        "code": protocol.NOT_FOUND, "message": polled.stderr.removeprefix("error: ").strip(),
        "data": {"kind": "run", "id": "r-doesnotexist"}, "exit_code": 1}
    as_json = daemon.brctl("--json", "pause", "r-doesnotexist")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"]["code"] == protocol.NOT_FOUND
    assert daemon.brctl("retry", "r-x:nope").exit_code == 1
    usage = daemon.brctl("submit")
    assert usage.exit_code == 2


def test_status_follow_without_run_follows_every_active_run(
    start_daemon: Callable[..., Daemon], realworld_repo: Path
) -> None:
    daemon = start_daemon(ms_per_minute=3)  # over a second per run: both are still active
    spec = str(realworld_repo / "PROJECT_SPEC.md")
    first, second = _submit(daemon, realworld_repo), _submit(daemon, realworld_repo)
    active = json.loads(daemon.brctl("status", "--json").stdout)
    assert {r["id"] for r in active} == {first, second}
    follow = daemon.brctl_process("status", "--follow", "--exit-when-idle")
    assert follow.returncode == 0, follow.stderr
    ended = [line for line in follow.stdout.splitlines() if " run succeeded" in line]
    assert sorted(line.split()[1] for line in ended) == sorted([first, second])
    assert spec  # both runs built the same spec, on their own branches
    runs = json.loads(daemon.brctl("runs", "--json").stdout)
    assert {r["branch"] for r in runs} == {f"buildrunner/{first}", f"buildrunner/{second}"}


def test_shutdown_stops_the_daemon_then_brctl_exits_3(daemon: Daemon) -> None:
    stopped = daemon.brctl_process("shutdown", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["stopping"] is True
    assert daemon.process.wait(timeout=30) == 0
    assert not daemon.socket.exists()  # removed on exit
    after = daemon.brctl_process("ping")
    assert after.returncode == 3
    assert str(daemon.socket) in after.stderr and "buildrunnerd &" in after.stderr
