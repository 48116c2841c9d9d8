"""The real daemon with ``--backend anthropic`` plans runs with Claude (fake Messages API):
the planner's tool answer becomes the run's tasks, its calls are the run's costs, an invalid
answer falls back to the heuristic planner with a warning; and the model's shell sees neither
the daemon's socket nor its state dir nor its environment."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonFactory
from tests.e2e.support import (
    builder,
    claude_tasks,
    git,
    is_planner,
    make_repo,
    named_files,
    rejected_plan,
    run_to_end,
)
from tests.fakeapi import API_KEY, FakeAnthropic, FakeRequest, Reply, tool_use


@pytest.fixture
def outside_tmp(daemon_factory: DaemonFactory) -> Iterator[tuple[Path, Path]]:
    """State dir and socket outside /tmp (the sandbox replaces /tmp with an empty tmpfs, which
    would hide them anyway): (home, socket)."""
    base = Path(tempfile.mkdtemp(prefix="brp-", dir="/var/tmp"))
    daemon_factory.home = base / "home"
    daemon_factory.socket_dir = base / "sock"
    daemon_factory.socket = base / "sock" / "d.sock"
    try:
        yield daemon_factory.home, daemon_factory.socket
    finally:
        daemon_factory.cleanup()
        shutil.rmtree(base, ignore_errors=True)


async def test_claude_plans_the_run_and_its_calls_are_the_runs_costs(
    daemon_factory: DaemonFactory, outside_tmp: tuple[Path, Path], tmp_path: Path
) -> None:
    assert shutil.which("bwrap"), "bubblewrap is required (CI installs it)"
    home, sock = outside_tmp
    repo, spec = make_repo(tmp_path)
    probe = (f'echo "SOCK""ET=$(test -e {sock} && echo visible || echo hidden)"; '
             f'echo "D""B=$(test -e {home}/buildrunner.db && echo visible || echo hidden)"; '
             'echo "BR""VARS=$(env | grep -c -e ^BUILDRUNNER_ -e ^ANTHROPIC_)"')

    def responder(req: FakeRequest) -> Reply:
        if is_planner(req):
            return claude_tasks(req)
        if req.assistant_turns() == len(named_files(req)):
            return Reply([tool_use("bash", {"command": probe})], "tool_use")
        return builder(req)

    with FakeAnthropic(responder) as fake:
        # planner = "auto" (the default): Claude, because the backend is anthropic.
        daemon = await daemon_factory.start_on_api(fake.base_url, API_KEY, "--socket", str(sock))
        async with daemon.client() as client:
            preview = await client.call("spec.plan", spec_path=str(spec))
            assert not [r for r in fake.requests if is_planner(r)]  # spec.plan: heuristic
            run, info = await run_to_end(client, daemon.socket, spec, repo, timeout_s=120)
            warnings = await client.call("events.list", run_id=run["id"],
                                         types=["plan.warning"])
            calls = await client.call("events.list", run_id=run["id"], types=["api.call"])
            costs = await client.call("costs.summary", run_id=run["id"])
        assert await daemon.stop() == 0
    assert info["state"] == "succeeded", (info, daemon.stderr()[-3000:])
    # The planner's answer is the run's plan (not the heuristic preview).
    tasks = {t["id"].split(":", 1)[1]: t for t in info["tasks"]}
    assert set(tasks) == {"storage.1", "accounts.1", "reports.1"}
    assert tasks["accounts.1"]["title"] == "Build accounts the Claude way"
    assert {f for t in preview["tasks"] for f in t["files"]} >= {"app/db.py"}
    files = set(git(repo, "ls-tree", "-r", "--name-only", info["branch"]).splitlines())
    assert {"lib/storage.py", "lib/accounts.py", "lib/reports.py"} <= files
    assert "app/db.py" not in files
    # The dropped dependency is a warning of the run.
    assert any("ghost.7" in w["data"]["message"] for w in warnings), warnings
    # One planner call, charged to the run (no batch), and the totals are the billed usage.
    planner_calls = [c for c in calls if c["data"]["purpose"] == "planner"]
    assert len(planner_calls) == 1 and planner_calls[0].get("batch_id") is None
    assert len(calls) == len(fake.billed) == costs["calls"]
    for key, value in fake.billed_totals().items():
        assert costs[key] == value, (key, costs)
    # The model's shell: no daemon socket, no database, no daemon or API environment.
    tool_output = b"".join(r.raw for r in fake.requests)
    assert b"SOCKET=hidden" in tool_output and b"SOCKET=visible" not in tool_output
    assert b"DB=hidden" in tool_output and b"DB=visible" not in tool_output
    assert b"BRVARS=0" in tool_output


async def test_an_invalid_planner_answer_falls_back_to_the_heuristic_plan(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    with FakeAnthropic(rejected_plan) as fake:  # the planner's answer breaks the schema, twice
        daemon = await daemon_factory.start_on_api(
            fake.base_url, API_KEY, config='[planner]\nplanner = "claude"\n')
        async with daemon.client() as client:
            preview = await client.call("spec.plan", spec_path=str(spec))
            run, info = await run_to_end(client, daemon.socket, spec, repo, timeout_s=120)
            warnings = await client.call("events.list", run_id=run["id"],
                                         types=["plan.warning"])
            costs = await client.call("costs.summary", run_id=run["id"])
        assert await daemon.stop() == 0
    assert info["state"] == "succeeded", (info, daemon.stderr()[-3000:])
    assert len([r for r in fake.requests if is_planner(r)]) == 2  # asked once more, then not
    # The heuristic plan, exactly as `brctl plan` shows it.
    assert [t["id"].split(":", 1)[1] for t in info["tasks"]] == [
        t["id"] for t in preview["tasks"]]
    messages = [w["data"]["message"] for w in warnings]
    assert any("heuristic planner instead" in m for m in messages), messages
    assert any("complexity" in m for m in messages), messages
    # The rejected answers were billed: they are the run's costs too.
    for key, value in fake.billed_totals().items():
        assert costs[key] == value, (key, costs)
