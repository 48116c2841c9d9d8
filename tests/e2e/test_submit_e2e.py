"""``run.submit`` fails fast and loses nothing (issue 13, part 3), through the real daemon:
a spec outside git needs ``scratch`` (whose folder is reported), a dirty repository is refused
before any API call, the reply comes while Claude is still planning (state ``planning``, with
events), an unreachable or unauthorised API fails the run with the URL and the fix, and a
planner fall-back says why."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonFactory, RpcClient, RpcError, wait_run_event, write_spec
from tests.e2e.support import (
    FEATURES,
    HeldReply,
    builder,
    claude_tasks,
    is_planner,
    make_repo,
    rejected_plan,
)
from tests.fakeapi import API_KEY, FakeAnthropic, FakeRequest, Reply


async def _events(client: RpcClient, run_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await client.call("events.list", run_id=run_id)
    return events


async def test_a_spec_outside_git_is_refused_unless_scratch_which_says_where(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    (tmp_path / "loose").mkdir()
    spec = write_spec(tmp_path / "loose" / "PROJECT_SPEC.md", FEATURES)
    daemon = await daemon_factory.start()
    async with daemon.client() as client:
        with pytest.raises(RpcError) as refused:
            await client.call("run.submit", spec_path=str(spec))
        assert refused.value.code == -32011
        assert str(spec) in refused.value.message
        assert "--repo" in refused.value.message and "--scratch" in refused.value.message
        assert await client.call("run.list") == []  # nothing was stored
        with pytest.raises(RpcError) as both:
            await client.call("run.submit", spec_path=str(spec), scratch=True,
                              repo=str(tmp_path))
        assert both.value.code == -32602 and "scratch" in both.value.message

        run = await client.call("run.submit", spec_path=str(spec), scratch=True)
        scratch = Path(run["scratch_dir"])
        assert scratch == daemon.home / "runs" / run["id"] / "scratch"
        assert (await wait_run_event(daemon.socket, run["id"]))["type"] == "run.succeeded"
        submitted = [e for e in await _events(client, run["id"])
                     if e["type"] == "run.submitted"]
        info = await client.call("run.get", run_id=run["id"])
    assert submitted[0]["data"]["scratch_dir"] == str(scratch)
    assert info["scratch_dir"] == str(scratch) and info["repo"] is None
    # The results are kept where the reply said.
    assert (scratch / "app" / "db.py").is_file()
    assert await daemon.stop() == 0


async def test_a_dirty_repository_is_refused_before_any_api_call(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    (repo / "PROJECT_SPEC.md").write_text(spec.read_text() + "\nedited\n")
    with FakeAnthropic(claude_tasks) as fake:
        daemon = await daemon_factory.start_on_api(fake.base_url, API_KEY)
        async with daemon.client() as client:
            with pytest.raises(RpcError) as refused:
                await client.call("run.submit", spec_path=str(spec))
            assert refused.value.code == -32011 and "uncommitted" in refused.value.message
            assert await client.call("run.list") == []
        assert await daemon.stop() == 0
    assert fake.requests == [] and fake.count_tokens_calls == 0


async def test_submit_replies_while_claude_plans_in_the_daemon(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    planner = HeldReply()

    def responder(req: FakeRequest) -> Reply:
        if is_planner(req):
            planner.hold()  # until the test has the submit reply
            return claude_tasks(req, depends_on=[])
        return builder(req)

    with FakeAnthropic(responder) as fake:
        daemon = await daemon_factory.start_on_api(fake.base_url, API_KEY)
        try:
            async with daemon.client() as client:
                run = await client.call("run.submit", spec_path=str(spec))
                # The reply did not wait for the planner (it is still holding its answer).
                assert run["state"] == "planning" and not planner.released
                assert run["task_count"] == 0
                await wait_run_event(daemon.socket, run["id"], ("run.planning",))
                listed = await client.call("run.get", run_id=run["id"])
                assert listed["state"] == "planning"
                planner.release()
                await wait_run_event(daemon.socket, run["id"], ("run.started",), timeout_s=60)
                await client.call("run.cancel", run_id=run["id"])
                events = await _events(client, run["id"])
        finally:
            planner.release()
        assert await daemon.stop() == 0
    assert planner.asked.is_set() and fake.count_tokens_calls == 1
    types = [e["type"] for e in events]
    assert types.index("run.submitted") < types.index("run.planning") < types.index(
        "run.planned") < types.index("run.started")
    planned = next(e for e in events if e["type"] == "run.planned")
    assert planned["data"]["planner"] == "claude" and planned["data"]["tasks"] == 3
    steps = [e["data"]["step"] for e in events if e["type"] == "run.planning"]
    assert steps == ["checking the API", "Claude is planning the features"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("problem", ["unreachable", "unauthorised", "no key"])
async def test_an_unusable_api_fails_the_run_at_once_with_the_url_and_the_fix(
    daemon_factory: DaemonFactory, tmp_path: Path, problem: str
) -> None:
    repo, spec = make_repo(tmp_path)
    with FakeAnthropic(claude_tasks, api_key="sk-ant-the-real-one") as fake:
        url = fake.base_url if problem != "unreachable" else f"http://127.0.0.1:{_closed_port()}"
        env = daemon_factory.base_env(ANTHROPIC_BASE_URL=url)
        if problem != "no key":
            env["ANTHROPIC_API_KEY"] = API_KEY
        daemon = await daemon_factory.start("--backend", "anthropic", env=env)
        async with daemon.client() as client:
            run = await client.call("run.submit", spec_path=str(spec))
            assert run["state"] == "planning"
            # Far less than the SDK's retries would take (minutes): one call, no backoff.
            failed = await wait_run_event(daemon.socket, run["id"], timeout_s=20)
            info = await client.call("run.get", run_id=run["id"])
        assert await daemon.stop() == 0
    assert failed["type"] == "run.failed" and info["state"] == "failed"
    reason = info["reason"]
    assert url in reason and "ANTHROPIC_" in reason, reason
    if problem == "unreachable":
        assert "unreachable" in reason and failed["data"]["reason"] == "unreachable"
    elif problem == "unauthorised":
        assert "refused the key" in reason and failed["data"]["status"] == 401
        assert fake.count_tokens_calls == 1
    else:
        assert "no Anthropic API key" in reason and failed["data"]["reason"] == "no_api_key"
        assert fake.count_tokens_calls == 0
    assert fake.requests == []  # nothing was paid for


async def test_a_planner_fallback_says_why(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    with FakeAnthropic(rejected_plan) as fake:  # the planner's answer breaks the schema, twice
        daemon = await daemon_factory.start_on_api(fake.base_url, API_KEY)
        async with daemon.client() as client:
            run = await client.call("run.submit", spec_path=str(spec))
            await wait_run_event(daemon.socket, run["id"], ("run.planned",), timeout_s=60)
            planned = await client.call("events.list", run_id=run["id"], types=["run.planned"])
            await client.call("run.cancel", run_id=run["id"])
        assert await daemon.stop() == 0
    data = planned[0]["data"]
    assert data["planner"] == "heuristic"
    assert data["reason"].startswith("fell back: Claude's answer was rejected twice")
    assert "complexity" in data["reason"]


async def test_a_run_killed_while_planning_is_planned_again_at_the_next_start(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    planner = HeldReply()

    def responder(req: FakeRequest) -> Reply:
        planner.hold()  # the planner never answers before the daemon is killed
        return claude_tasks(req)

    with FakeAnthropic(responder) as fake:
        first = await daemon_factory.start_on_api(fake.base_url, API_KEY)
        try:
            async with first.client() as client:
                run = await client.call("run.submit", spec_path=str(spec))
            async with RpcClient.connect(first.socket) as watcher:
                await watcher.call("events.subscribe", run_id=run["id"])
                while True:
                    event = (await watcher.next_notification())["params"]
                    if event["data"].get("step") == "Claude is planning the features":
                        break
            first.kill()  # kill -9 in the middle of Claude's planning
        finally:
            planner.release()
    # Back with the simulated backend: the stored spec is planned again, heuristically.
    second = await daemon_factory.start()
    async with second.client() as client:
        done = await wait_run_event(second.socket, run["id"], timeout_s=120)
        planned = await client.call("events.list", run_id=run["id"], types=["run.planned"])
    assert await second.stop() == 0
    assert done["type"] == "run.succeeded", second.stderr()[-3000:]
    assert [p["data"]["planner"] for p in planned] == ["heuristic"]
    assert planned[0]["data"]["reason"] == "the backend is simulated"
