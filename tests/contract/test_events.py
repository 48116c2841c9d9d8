"""Contract: events (shape, increasing ids, RFC 3339 times) and the listed types appear in
real runs, read back with ``brctl logs RUN --json`` (JSON lines)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.contract._support import (
    TINY_SPEC,
    Daemon,
    check_event_shape,
    make_repo,
    submit,
    wait_event,
    wait_run,
)

# A spec whose second feature edits the first feature's file: a file.modified in a good run.
MODIFYING_SPEC = """\
# Modifying

Test command: `true`

## Features

### Core
Domain: backend

- [ ] `app/core.py` implements the core.

### Extra
**Depends on:** Core
Domain: backend

- [ ] `app/core.py` also gets the extra part.
"""


def _logs(daemon: Daemon, run_id: str) -> list[dict[str, Any]]:
    """``brctl logs RUN --json``: one JSON event per line."""
    result = daemon.brctl("logs", run_id, "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    for event in events:
        check_event_shape(event, run_id)
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), "ids increase strictly"
    times = [datetime.fromisoformat(e["ts"].replace("Z", "+00:00")
                                    .replace("z", "+00:00")) for e in events]
    assert times == sorted(times), "ts follows the event order"
    return events


def _types(events: list[dict[str, Any]]) -> set[str]:
    return {e["type"] for e in events}


@pytest.fixture(scope="module")
def good_run(daemon: Daemon, repo: Path) -> list[dict[str, Any]]:
    run_id = submit(daemon, repo / "PROJECT_SPEC.md", repo)
    assert wait_run(daemon, run_id)["state"] == "succeeded"
    return _logs(daemon, run_id)


def test_a_successful_run_has_the_listed_events(good_run: list[dict[str, Any]]) -> None:
    assert {"run.submitted", "run.started", "batch.dispatched", "batch.succeeded",
            "task.state_changed", "file.created", "verify.passed", "run.succeeded"} <= _types(
                good_run), sorted(_types(good_run))
    assert good_run[0]["type"] == "run.submitted"
    assert good_run[-1]["type"] == "run.succeeded"


def test_task_state_changed_data(good_run: list[dict[str, Any]]) -> None:
    changes = [e for e in good_run if e["type"] == "task.state_changed"]
    assert changes
    for event in changes:
        assert {"from", "to", "reason"} <= set(event["data"]), event
        assert event["task_id"], event
    assert {"succeeded"} <= {e["data"]["to"] for e in changes}


def test_batch_and_file_events_name_their_batch_and_path(
        good_run: list[dict[str, Any]]) -> None:
    for event in good_run:
        if event["type"].startswith("batch."):
            assert event.get("batch_id"), event
        if event["type"] in ("file.created", "file.modified"):
            assert isinstance(event["data"].get("path"), str), event
    created = {e["data"]["path"] for e in good_run if e["type"] == "file.created"}
    assert {"app/core.py", "app/extra.py"} <= created


def test_api_call_events_carry_model_tokens_and_cost(good_run: list[dict[str, Any]]) -> None:
    # The simulated backend calls no model; any api.call it reports must still be well formed.
    for event in good_run:
        if event["type"] == "api.call":
            assert {"model", "cost_usd"} <= set(event["data"]), event
            assert any("tokens" in key for key in event["data"]), event


def test_a_run_that_edits_a_file_reports_file_modified(daemon: Daemon,
                                                       tmp_path: Path) -> None:
    repo = tmp_path / "mod"
    spec = make_repo(repo, MODIFYING_SPEC)
    run_id = submit(daemon, spec, repo)
    assert wait_run(daemon, run_id)["state"] == "succeeded"
    events = _logs(daemon, run_id)
    modified = [e for e in events if e["type"] == "file.modified"]
    assert modified and all(e["data"]["path"] == "app/core.py" for e in modified), sorted(
        _types(events))


def test_a_failing_run_has_the_failure_events(daemon: Daemon, repo: Path) -> None:
    run_id = submit(daemon, repo / "PROJECT_SPEC.md", repo, "--test-cmd", "false")
    assert wait_run(daemon, run_id)["state"] == "failed"
    types = _types(_logs(daemon, run_id))
    assert {"verify.failed", "batch.failed", "run.failed"} <= types, sorted(types)


def test_paused_resumed_cancelled_events(slow_daemon: Daemon, tmp_path: Path) -> None:
    repo = tmp_path / "slow"
    spec = make_repo(repo, TINY_SPEC)
    run_id = submit(slow_daemon, spec, repo)
    wait_event(slow_daemon, run_id, "batch.dispatched")
    slow_daemon.rpc("run.pause", run_id=run_id)
    slow_daemon.rpc("run.resume", run_id=run_id)
    slow_daemon.rpc("run.cancel", run_id=run_id)
    wait_run(slow_daemon, run_id, {"cancelled"})
    events = _logs(slow_daemon, run_id)
    order = [e["type"] for e in events if e["type"].startswith("run.")]
    assert order[:2] == ["run.submitted", "run.started"], order
    assert order.index("run.paused") < order.index("run.resumed") < order.index(
        "run.cancelled"), order


def test_event_ids_increase_across_runs(daemon: Daemon, good_run: list[dict[str, Any]]) -> None:
    every = daemon.rpc("events.list", limit=10000)
    ids = [e["id"] for e in every]
    assert ids == sorted(set(ids))
    assert {e["id"] for e in good_run} <= set(ids)
