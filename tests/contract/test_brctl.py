"""Contract: brctl's commands, ``--json`` outputs, and exit codes 0/1/2/3, against a real
daemon (and against no daemon at all)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.contract._support import (
    RUN_STATES,
    TASK_STATES,
    TINY_SPEC,
    Daemon,
    brctl,
    check_event_shape,
    clean_env,
    json_out,
    make_repo,
    submit,
    wait_event,
    wait_run,
)

COMMANDS = ("ping", "plan", "submit", "status", "runs", "tasks", "task", "logs", "pause",
            "resume", "cancel", "retry", "costs", "shutdown")
COST_FIELDS = ("total_usd", "input_tokens", "output_tokens", "cache_read_input_tokens",
               "cache_creation_input_tokens")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def ok_run(daemon: Daemon, repo: Path) -> str:
    """A run of the tiny spec that succeeded."""
    run_id = submit(daemon, repo / "PROJECT_SPEC.md", repo)
    assert wait_run(daemon, run_id)["state"] == "succeeded"
    return run_id


@pytest.fixture(scope="module")
def failed_run(daemon: Daemon, repo: Path) -> str:
    """A run whose verification fails: ``--test-cmd false`` overrides the spec's ``true``."""
    run_id = submit(daemon, repo / "PROJECT_SPEC.md", repo, "--test-cmd", "false")
    assert wait_run(daemon, run_id)["state"] == "failed"
    return run_id


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_exists(command: str) -> None:
    result = brctl(command, "--help", env=clean_env())
    assert result.returncode == 0, (command, result.stderr)
    assert result.stdout.strip()


def test_ping(daemon: Daemon) -> None:
    result = daemon.brctl("ping")
    assert result.returncode == 0, result.stderr
    assert "simulated" in result.stdout.lower()
    ping = json_out(daemon.brctl("--json", "ping"))
    assert isinstance(ping["version"], str) and ping["version"]
    assert _number(ping["uptime_s"]) and ping["uptime_s"] >= 0
    assert ping["backend"] == "simulated"
    assert isinstance(ping["workers"], int) and ping["workers"] >= 1


def test_global_socket_and_env_socket(daemon: Daemon) -> None:
    """``--socket PATH`` and ``$BUILDRUNNER_SOCKET`` both reach the daemon."""
    by_env = brctl("--json", "ping", env=daemon.env)  # daemon.env has BUILDRUNNER_SOCKET
    by_flag = brctl("--socket", str(daemon.socket), "--json", "ping",
                    env=clean_env(BUILDRUNNER_SOCKET="/nonexistent/brd.sock"))
    assert json_out(by_env)["pid"] == json_out(by_flag)["pid"] == daemon.proc.pid


def test_submit_prints_the_run_id(daemon: Daemon, repo: Path) -> None:
    before = {r["id"] for r in json_out(daemon.brctl("--json", "runs"))}
    text = daemon.brctl("submit", str(repo / "PROJECT_SPEC.md"), "--repo", str(repo),
                        "--workers", "2", "--budget-usd", "5")
    assert text.returncode == 0, text.stderr
    new = {r["id"] for r in json_out(daemon.brctl("--json", "runs"))} - before
    assert len(new) == 1, new
    run_id = new.pop()
    assert run_id in text.stdout, text.stdout
    assert wait_run(daemon, run_id)["state"] == "succeeded"


def test_submit_follow_ends_with_the_run(daemon: Daemon, repo: Path) -> None:
    result = daemon.brctl("submit", str(repo / "PROJECT_SPEC.md"), "--repo", str(repo),
                          "--follow")
    assert result.returncode == 0, (result.stdout, result.stderr)


def test_submit_outside_git_needs_scratch_and_prints_where(
    daemon: Daemon, tmp_path: Path
) -> None:
    spec = tmp_path / "PROJECT_SPEC.md"
    spec.write_text(TINY_SPEC, encoding="utf-8")
    refused = daemon.brctl("submit", str(spec))
    assert refused.returncode == 1, refused
    assert "--scratch" in refused.stderr and "--repo" in refused.stderr, refused.stderr
    usage = daemon.brctl("submit", str(spec), "--scratch", "--repo", str(tmp_path))
    assert usage.returncode == 2, usage
    text = daemon.brctl("submit", str(spec), "--scratch")
    assert text.returncode == 0, text.stderr
    run_id = text.stdout.strip()  # stdout is just the id
    assert wait_run(daemon, run_id)["state"] == "succeeded"
    where = daemon.rpc("run.get", run_id=run_id)["scratch_dir"]
    assert where and f"kept in {where}" in text.stderr, text.stderr
    assert any(Path(where).rglob("*.py"))  # the results are there
    as_json = json_out(daemon.brctl("--json", "submit", str(spec), "--scratch"))
    assert set(as_json) == {"run_id", "scratch_dir"}
    wait_run(daemon, as_json["run_id"])


def test_submit_test_cmd_is_used(failed_run: str, daemon: Daemon) -> None:
    info = daemon.rpc("run.get", run_id=failed_run)
    assert info["state"] == "failed"


def _check_task(task: Any) -> None:
    assert isinstance(task["id"], str) and task["id"]
    assert task["state"] in TASK_STATES, task
    assert isinstance(task["attempts"], int) and task["attempts"] >= 0
    assert _number(task["cost_usd"]) and task["cost_usd"] >= 0


def test_status_json(daemon: Daemon, ok_run: str) -> None:
    status = json_out(daemon.brctl("--json", "status", ok_run))
    assert status["id"] == ok_run
    assert status["state"] == "succeeded" and status["state"] in RUN_STATES
    assert isinstance(status["tasks"], list) and status["tasks"]
    for task in status["tasks"]:
        _check_task(task)
        assert task["state"] == "succeeded"


def test_status_text_and_follow_of_a_finished_run(daemon: Daemon, ok_run: str) -> None:
    text = daemon.brctl("status", ok_run)
    assert text.returncode == 0 and ok_run in text.stdout, text
    follow = daemon.brctl("status", ok_run, "--follow")
    assert follow.returncode == 0, follow.stderr


def test_status_without_a_run(daemon: Daemon, ok_run: str) -> None:
    result = daemon.brctl("--json", "status")
    out = json_out(result)
    runs = out if isinstance(out, list) else [out]
    for run in runs:
        assert run["state"] in RUN_STATES and isinstance(run["id"], str)


def test_runs_json(daemon: Daemon, ok_run: str, failed_run: str) -> None:
    runs = json_out(daemon.brctl("--json", "runs"))
    assert isinstance(runs, list)
    by_id = {r["id"]: r for r in runs}
    assert by_id[ok_run]["state"] == "succeeded"
    assert by_id[failed_run]["state"] == "failed"
    assert all(r["state"] in RUN_STATES for r in runs)
    text = daemon.brctl("runs")
    assert text.returncode == 0 and ok_run in text.stdout


def test_tasks_json(daemon: Daemon, ok_run: str, failed_run: str) -> None:
    for run_id, expected in ((ok_run, "succeeded"), (failed_run, "failed")):
        out = json_out(daemon.brctl("--json", "tasks", run_id))
        assert out["id"] == run_id
        assert out["state"] == expected
        assert isinstance(out["tasks"], list) and out["tasks"]
        for task in out["tasks"]:
            _check_task(task)
    failed_states = {t["state"] for t in json_out(daemon.brctl("--json", "tasks",
                                                               failed_run))["tasks"]}
    assert "failed" in failed_states
    text = daemon.brctl("tasks", ok_run)
    assert text.returncode == 0, text.stderr


def test_task_in_full(daemon: Daemon, ok_run: str) -> None:
    tasks = json_out(daemon.brctl("--json", "tasks", ok_run))["tasks"]
    task_id = tasks[0]["id"]
    task = json_out(daemon.brctl("--json", "task", task_id))
    _check_task(task)
    assert task["id"] == task_id
    assert isinstance(task["prompt"], str) and task["prompt"]
    assert isinstance(task["files"], list) and task["files"]
    assert any(key.startswith("verif") and task[key] for key in task), sorted(task)
    assert isinstance(task["events"], list) and task["events"]
    text = daemon.brctl("task", task_id)
    assert text.returncode == 0 and task_id.split(":")[-1] in text.stdout


def test_logs_json_lines(daemon: Daemon, ok_run: str) -> None:
    result = daemon.brctl("logs", ok_run, "--json")  # as the contract writes it
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines
    events = [json.loads(line) for line in lines]
    for event in events:
        check_event_shape(event, ok_run)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    text = daemon.brctl("logs", ok_run)
    assert text.returncode == 0 and text.stdout.strip()


def test_costs_json(daemon: Daemon, ok_run: str) -> None:
    for args in ((), ("--run", ok_run), ("--by", "model"), ("--by", "day"), ("--by", "run")):
        out = json_out(daemon.brctl("--json", "costs", *args))
        for field in COST_FIELDS:
            assert _number(out[field]) and out[field] >= 0, (args, field, out)
        assert isinstance(out["rows"], list), out
        for row in out["rows"]:
            assert isinstance(row, dict)
            for field in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                          "cache_creation_input_tokens"):
                assert _number(row[field]), row
    text = daemon.brctl("costs")
    assert text.returncode == 0, text.stderr


def test_retry_a_failed_task(daemon: Daemon, failed_run: str) -> None:
    tasks = json_out(daemon.brctl("--json", "tasks", failed_run))["tasks"]
    failed = next(t for t in tasks if t["state"] == "failed")
    out = json_out(daemon.brctl("--json", "retry", failed["id"]))
    assert out["id"] == failed["id"]
    assert out["state"] in TASK_STATES and out["state"] != "failed"
    # it fails again (the test command is still `false`), and the run ends again
    assert wait_run(daemon, failed_run)["state"] == "failed"


# --- control of a run in flight (a daemon whose simulated batches take ~a day) ---------------

def test_pause_resume_cancel(slow_daemon: Daemon, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    spec = make_repo(repo)
    run_id = submit(slow_daemon, spec, repo)
    wait_event(slow_daemon, run_id, "batch.dispatched")

    paused = json_out(slow_daemon.brctl("--json", "pause", run_id))
    assert paused["id"] == run_id and paused["state"] == "paused"
    assert slow_daemon.rpc("run.get", run_id=run_id)["state"] == "paused"

    resumed = json_out(slow_daemon.brctl("--json", "resume", run_id))
    assert resumed["state"] == "running"

    cancelled = json_out(slow_daemon.brctl("--json", "cancel", run_id))
    assert cancelled["state"] == "cancelled"
    info = wait_run(slow_daemon, run_id, {"cancelled"})
    assert all(t["state"] in TASK_STATES for t in info["tasks"])

    # exit 1: the daemon answers with an error (a cancelled run cannot be resumed)
    again = slow_daemon.brctl("resume", run_id)
    assert again.returncode == 1 and again.stderr.strip(), again


# --- exit codes -------------------------------------------------------------------------------

# `brctl tasks` without RUN is not a usage error: it shows the latest run (issue 13, part 5).
@pytest.mark.parametrize("args", [("frobnicate",), ("tasks", "a", "b"), ("task",),
                                  ("costs", "--by", "week"), ("submit",),
                                  ("--no-such-flag", "ping")],
                         ids=["unknown-command", "tasks-two-runs", "task-no-id", "bad-choice",
                              "submit-no-spec", "unknown-flag"])
def test_usage_error_exits_2(daemon: Daemon, args: tuple[str, ...]) -> None:
    result = daemon.brctl(*args)
    assert result.returncode == 2, (args, result.returncode, result.stderr)


@pytest.mark.parametrize("args", [("status", "r-nope"), ("tasks", "r-nope"),
                                  ("task", "r-nope:x.1"), ("cancel", "r-nope"),
                                  ("logs", "r-nope")],
                         ids=["status", "tasks", "task", "cancel", "logs"])
def test_daemon_error_exits_1_with_a_message(daemon: Daemon, args: tuple[str, ...]) -> None:
    result = daemon.brctl(*args)
    assert result.returncode == 1, (args, result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip()
    as_json = daemon.brctl("--json", *args)
    assert as_json.returncode == 1


def test_invalid_state_exits_1(daemon: Daemon, ok_run: str) -> None:
    result = daemon.brctl("resume", ok_run)
    assert result.returncode == 1 and result.stderr.strip(), result


def test_unplannable_submit_exits_1(daemon: Daemon, tmp_path: Path) -> None:
    spec = tmp_path / "bad.md"
    spec.write_text("# Nothing here\n\nJust prose.\n", encoding="utf-8")
    result = daemon.brctl("submit", str(spec), "--repo", str(tmp_path))
    assert result.returncode == 1, result


def _check_unreachable(result: Any, socket_path: Path) -> None:
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    assert str(socket_path) in result.stderr, result.stderr
    assert "buildrunnerd" in result.stderr, "the message says how to start the daemon"


@pytest.mark.parametrize("args", [("ping",), ("runs",), ("status",), ("costs",),
                                  ("--json", "ping")])
def test_no_daemon_exits_3(tmp_path: Path, args: tuple[str, ...]) -> None:
    missing = tmp_path / "none" / "brd.sock"
    _check_unreachable(brctl("--socket", str(missing), *args, env=clean_env()), missing)


def test_no_daemon_on_the_env_socket_exits_3(tmp_path: Path) -> None:
    missing = tmp_path / "env.sock"
    _check_unreachable(brctl("ping", env=clean_env(BUILDRUNNER_SOCKET=str(missing))), missing)


def test_stale_socket_file_exits_3(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # a socket file nobody listens on (left by a crash)
    _check_unreachable(brctl("--socket", str(stale), "ping", env=clean_env()), stale)
