"""Everyday commands against a real daemon: `runs` newest first, ids by prefix and without the
run prefix, `tasks` of the latest run, shell completion of run and task ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from brctl._errors import RemoteError
from buildrunnerd import protocol
from tests.brctl.brctl_support import Daemon, base_env, make_repo


def _spec(feature: str, path: str) -> str:
    return "\n".join([
        f"# {feature}", "", "A one-feature spec for the everyday-command tests.", "",
        "## Features", "", f"### {feature}", "", "Domain: backend", "", "#### Requirements",
        f"- [ ] `{path}` does it.", "", "#### Acceptance Criteria", "- [ ] It works.", "",
    ])


def _json(daemon: Daemon, *args: str) -> Any:
    result = daemon.brctl("--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _submit_and_finish(daemon: Daemon, spec: Path) -> str:
    run_id = str(_json(daemon, "submit", str(spec))["run_id"])
    done = daemon.brctl("status", run_id, "--follow")
    assert done.exit_code == 0, done.output
    return run_id


@pytest.fixture
def three_runs(daemon: Daemon, tmp_path: Path) -> tuple[Daemon, list[str]]:
    """Two runs of one small spec, then one of another (in that order)."""
    shared = make_repo(tmp_path / "shared", {"SPEC.md": _spec("Greeting", "greet/hello.py")})
    other = make_repo(tmp_path / "other", {"SPEC.md": _spec("Farewell", "bye/bye.py")})
    ids = [_submit_and_finish(daemon, shared / "SPEC.md"),
           _submit_and_finish(daemon, shared / "SPEC.md"),
           _submit_and_finish(daemon, other / "SPEC.md")]
    return daemon, ids


def test_runs_newest_first_and_ids_by_prefix(three_runs: tuple[Daemon, list[str]]) -> None:
    daemon, (first, second, third) = three_runs
    assert [r["id"] for r in _json(daemon, "runs")] == [third, second, first]
    text = daemon.brctl("runs").stdout.splitlines()
    assert text[0].split()[0] == "RUN" and [line.split()[0] for line in text[1:]] == [
        third, second, first]
    assert "newest first" in daemon.brctl("runs", "--help").stdout

    # A unique prefix, with or without the "r-", names the run; an exact id always does.
    for typed in (first, first[:6], first.removeprefix("r-")[:4]):
        if sum(run_id.startswith(typed) or run_id[2:].startswith(typed)
               for run_id in (first, second, third)) == 1:
            assert _json(daemon, "status", typed)["id"] == first, typed
    # Several runs share "r-": exit 1, listing each of them.
    ambiguous = daemon.brctl("status", "r-")
    assert ambiguous.exit_code == 1
    assert "'r-' matches 3 runs" in ambiguous.stderr
    assert all(run_id in ambiguous.stderr for run_id in (first, second, third))
    as_json = daemon.brctl("--json", "logs", "r-")
    assert as_json.exit_code == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == protocol.INVALID_PARAMS
    assert error["data"]["candidates"] == [third, second, first]
    unknown = daemon.brctl("cancel", "r-nope")
    assert unknown.exit_code == 1 and "no run matches 'r-nope'" in unknown.stderr


def test_task_ids_without_the_run_prefix(three_runs: tuple[Daemon, list[str]]) -> None:
    daemon, (first, second, third) = three_runs
    small_tasks = _json(daemon, "tasks", third)["tasks"]
    local = small_tasks[0]["id"].partition(":")[2]
    # Only the small spec's run has this task: its id within the run is enough.
    task = _json(daemon, "task", local)
    assert task["id"] == f"{third}:{local}" and task["run_id"] == third
    assert local in daemon.brctl("task", local).stdout

    # Both runs of the shared spec have this one: exit 1 naming both, and how to choose.
    shared = _json(daemon, "tasks", first)["tasks"][0]["id"].partition(":")[2]
    ambiguous = daemon.brctl("task", shared)
    assert ambiguous.exit_code == 1
    assert f"'{shared}' matches 2 tasks; add the run prefix (RUN:TASK)" in ambiguous.stderr
    assert f"{first}:{shared}" in ambiguous.stderr and f"{second}:{shared}" in ambiguous.stderr
    # A run prefix and the id within the run.
    assert _json(daemon, "task", f"{first[:8]}:{shared}")["id"] == f"{first}:{shared}"
    assert daemon.brctl("retry", "nope.1").exit_code == 1


def test_tasks_defaults_to_the_latest_run(three_runs: tuple[Daemon, list[str]]) -> None:
    daemon, (_, _, third) = three_runs
    latest = _json(daemon, "tasks")
    assert latest["id"] == third and latest["tasks"]
    assert daemon.brctl("tasks").stdout.startswith(f"run {third}  succeeded\n")


def test_tasks_without_any_run_says_how_to_start(daemon: Daemon) -> None:
    result = daemon.brctl("tasks")
    assert result.exit_code == 1
    assert "no runs yet (start one with: brctl submit SPEC)" in result.stderr
    with daemon.client() as client:
        assert client.call("run.resolve", {"run_id": "r-"}) == {"run_ids": []}
        assert client.call("task.resolve", {"task_id": "a.1"}) == {"task_ids": []}
        for method, param in (("run.resolve", "run_id"), ("task.resolve", "task_id")):
            with pytest.raises(RemoteError) as empty:
                client.call(method, {param: ""})
            assert empty.value.code == protocol.INVALID_PARAMS


def _complete(env: dict[str, str], *words: str) -> subprocess.CompletedProcess[str]:
    """What bash gets when the user presses Tab after ``brctl WORDS``."""
    line = " ".join(["brctl", *words])
    return subprocess.run(
        [sys.executable, "-m", "brctl"],
        env={**env, "_BRCTL_COMPLETE": "bash_complete", "COMP_WORDS": line,
             "COMP_CWORD": str(len(words))},
        capture_output=True, text=True, timeout=60, check=False,
    )


def _values(result: subprocess.CompletedProcess[str]) -> list[str]:
    # bash_complete prints "type,value" per line.
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line.partition(",")[2] for line in result.stdout.splitlines()]


def test_shell_completion_of_run_and_task_ids(three_runs: tuple[Daemon, list[str]]) -> None:
    daemon, (first, second, third) = three_runs
    env = {**daemon.env, "BUILDRUNNER_SOCKET": str(daemon.socket)}
    assert _values(_complete(env, "status", "r-")) == [third, second, first]
    assert _values(_complete(env, "cancel", first[:7])) == [
        r for r in (third, second, first) if r.startswith(first[:7])]
    assert _values(_complete(env, "costs", "--run", "")) == [third, second, first]
    # --socket on the command line is honoured too.
    assert _values(_complete(daemon.env, "--socket", str(daemon.socket), "logs", "")) == [
        third, second, first]

    # Tasks: the latest run's, without the run prefix.
    small = [t["id"] for t in _json(daemon, "tasks", third)["tasks"]]
    assert _values(_complete(env, "task", "")) == [t.partition(":")[2] for t in small]
    # With a run prefix and ":", that run's tasks in full.
    first_tasks = [t["id"] for t in _json(daemon, "tasks", first)["tasks"]]
    assert _values(_complete(env, "retry", f"{first}:")) == first_tasks
    local = first_tasks[0].partition(":")[2]
    assert _values(_complete(env, "retry", f"{first}:{local}")) == [
        t for t in first_tasks if t.startswith(f"{first}:{local}")]


def test_shell_completion_is_silent_without_a_daemon(tmp_path: Path) -> None:
    env = {**base_env(tmp_path), "BUILDRUNNER_SOCKET": str(tmp_path / "none.sock")}
    for words in (("status", ""), ("task", "x"), ("--socket", "/dev/null", "logs", "")):
        result = _complete(env, *words)
        assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", ""), words
