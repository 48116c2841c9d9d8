"""The real daemon with ``--backend anthropic`` against the fake Messages API."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import anyio
import pytest

from buildrunnerd.agent import CostTable
from buildrunnerd.config import PricingConfig
from tests.conftest import DaemonFactory, wait_run_event
from tests.e2e.support import (
    HeldReply,
    builder,
    create,
    git,
    grep_tree,
    make_repo,
    named_files,
    run_to_end,
)
from tests.fakeapi import API_KEY, FakeAnthropic, FakeRequest, Faults, Reply, text, tool_use


async def test_anthropic_run_builds_merges_and_bills_exactly(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    faults = Faults(rate=0.3, seed=5, retry_after="0", timeout_s=1.0,
                    sequence=["429", "529", "500", "drop", "stream_overload", "stream_drop"])
    with FakeAnthropic(builder, faults=faults) as fake:
        daemon = await daemon_factory.start_on_api(
            fake.base_url, API_KEY,
            config="[planner]\nplanner = \"heuristic\"\n[agent]\nbackoff_base_s = 0.01\n"
                   "backoff_max_s = 0.05\nrequest_timeout_s = 0.8\nmax_retries = 12\n")
        async with daemon.client() as client:
            ping = await client.call("daemon.ping")
            assert ping["backend"] == "anthropic"
            run, info = await run_to_end(client, daemon.socket, spec, repo, workers=3,
                                         timeout_s=120)
            costs = await client.call("costs.summary", run_id=run["id"])
        brctl = await anyio.run_process(
            [sys.executable, "-m", "brctl", "--socket", str(daemon.socket), "--json", "costs",
             "--run", run["id"], "--by", "model"], env=daemon.env, check=False)
        assert await daemon.stop() == 0
    assert info["state"] == "succeeded", (info, daemon.stderr()[-3000:])
    assert brctl.returncode == 0, brctl.stderr.decode()
    cli_costs = json.loads(brctl.stdout)
    files = set(git(repo, "ls-tree", "-r", "--name-only", info["branch"]).splitlines())
    assert {"app/db.py", "app/accounts.py", "app/reports.py"} <= files
    # The totals the store reports are the usage the API billed, exactly.
    billed = fake.billed_totals()
    for key, value in billed.items():
        assert costs[key] == value, (key, costs, billed)
        assert cli_costs[key] == value, (key, cli_costs, billed)
    prices = CostTable(PricingConfig())
    billed_usd = sum(prices.cost_usd(b.model, b.usage) for b in fake.billed)
    assert cli_costs["total_usd"] == pytest.approx(billed_usd, rel=1e-9)
    assert cli_costs["calls"] == len(fake.billed)
    per_model: dict[str, int] = {}
    for b in fake.billed:
        per_model[b.model] = per_model.get(b.model, 0) + 1
    assert {row["key"]: row["calls"] for row in cli_costs["rows"]} == per_model
    # The key reached neither the model's shell, nor the logs, nor the state dir (DB, events).
    for req in fake.requests:
        assert API_KEY not in req.raw.decode()
    assert API_KEY not in daemon.stderr()
    assert grep_tree(daemon.home, API_KEY.encode()) == []


async def test_sigkill_mid_conversation_resumes_without_repeating_turns(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    held = HeldReply(timeout_s=30)
    held_index: list[int] = []

    def responder(req: FakeRequest) -> Reply:
        # The second turn of the first batch waits: the daemon is killed meanwhile.
        if "app/db.py" in named_files(req) and req.assistant_turns() == 2 and not held.released:
            held_index.append(req.index)
            held.hold()
        return builder(req)

    with FakeAnthropic(responder) as fake:
        config = "[planner]\nplanner = \"heuristic\"\n"
        daemon = await daemon_factory.start_on_api(fake.base_url, API_KEY, config=config)
        async with daemon.client() as client:
            run = await client.call("run.submit", spec_path=str(spec), repo=str(repo),
                                    workers=1)
        await anyio.to_thread.run_sync(held.asked.wait, 60)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(timeout=10)
        held.release()
        daemon = await daemon_factory.start_on_api(fake.base_url, API_KEY, config=config)
        await wait_run_event(daemon.socket, run["id"], timeout_s=120)
        async with daemon.client() as client:
            info = await client.call("run.get", run_id=run["id"])
        assert await daemon.stop() == 0
    assert info["state"] == "succeeded", (info, daemon.stderr()[-3000:])
    # Every billed turn of every batch happened once: the turns before the kill were not
    # asked again after the restart.
    seen: dict[tuple[str, int], int] = {}
    for b in fake.billed:
        if b.request_index in held_index:
            continue  # answered to a dead daemon: lost, rightly asked again
        req = fake.requests[b.request_index]
        key = (",".join(named_files(req)), req.assistant_turns())
        seen[key] = seen.get(key, 0) + 1
    assert [k for k, n in seen.items() if n > 1] == []
    # The batch went on from its checkpoint (told that its worktree is new), not from scratch.
    assert any(b"fresh worktree" in r.raw for r in fake.requests)



async def test_budget_pauses_the_run_before_the_call_that_would_exceed_it(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)

    def pricey(req: FakeRequest) -> Reply:
        reply = builder(req)
        reply.usage = {"output_tokens": 10_000}  # $0.15 a call at sonnet prices
        return reply

    with FakeAnthropic(pricey) as fake:
        daemon = await daemon_factory.start_on_api(
            fake.base_url, API_KEY, config="[planner]\nplanner = \"heuristic\"\n")
        async with daemon.client() as client:
            run = await client.call("run.submit", spec_path=str(spec), repo=str(repo),
                                    workers=1, budget_usd=0.4)
            event = await wait_run_event(daemon.socket, run["id"], ("budget.exceeded",),
                                         timeout_s=60)
            await wait_run_event(daemon.socket, run["id"], ("run.paused",), timeout_s=60)
            info = await client.call("run.get", run_id=run["id"])
            costs = await client.call("costs.summary", run_id=run["id"])
        assert await daemon.stop() == 0
    assert info["state"] == "paused"
    assert event["data"]["budget_usd"] == 0.4
    assert event["data"]["spent_usd"] + event["data"]["estimate_usd"] > 0.4
    # Paused before the call: what was spent stays within the budget, and was billed exactly.
    assert costs["total_usd"] <= 0.4
    assert costs["output_tokens"] == fake.billed_totals()["output_tokens"] == 20_000


async def test_allowlist_a_model_merged_in_an_earlier_batch_allows_nothing_later(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    # Batch 1 writes harmless code and an allowlist that would accept everything; it holds
    # no secret, so it verifies and merges. Batch 2 starts from the run branch, which now has
    # that allowlist, and writes a key: the allowlist is read from the run's base only.
    aws_key = "AKIA" + "Z7Q4XK2M9PLW3JHV"

    def model(req: FakeRequest) -> Reply:
        files = named_files(req)
        if req.assistant_turns() > 0:
            return Reply([text("Done.")], "end_turn")
        if files == ["app/setup.py"]:
            return Reply([create("app/setup.py", 0), tool_use(
                "str_replace_based_edit_tool", {"command": "create",
                                                "path": ".buildrunner-secrets-allow",
                                                "file_text": "path:*\n.*\n"})], "tool_use")
        return Reply([tool_use("str_replace_based_edit_tool", {
            "command": "create", "path": "app/keys.py",
            "file_text": f"UPLOAD_KEY = '{aws_key}'\n"})], "tool_use")

    repo, spec = make_repo(tmp_path, [("Setup", "backend", [], ["app/setup.py"]),
                                      ("Keys", "backend", ["Setup"], ["app/keys.py"])])
    with FakeAnthropic(model) as fake:
        # scope = "warn": under the default "strict" the allowlist change alone fails batch 1
        # (a repository control file); this test is about the allowlist's own defence.
        daemon = await daemon_factory.start_on_api(
            fake.base_url, API_KEY,
            config="[planner]\nplanner = \"heuristic\"\n[verify]\nmax_fix_attempts = 0\n"
                   "scope = \"warn\"\n")
        async with daemon.client() as client:
            run, info = await run_to_end(client, daemon.socket, spec, repo, timeout_s=120)
            events = await client.call("events.list", run_id=run["id"], limit=1000)
        assert await daemon.stop() == 0
    assert info["state"] == "failed", (info, daemon.stderr()[-3000:])
    on_branch = git(repo, "ls-tree", "-r", "--name-only", info["branch"]).splitlines()
    assert ".buildrunner-secrets-allow" in on_branch and "app/setup.py" in on_branch
    assert "app/keys.py" not in on_branch
    failed = [c for e in events if e["type"] == "verify.failed" for c in e["data"]["checks"]
              if c["name"] == "secrets" and not c["passed"]]
    assert failed and {c["file"] for c in failed} == {"app/keys.py"}
    assert aws_key not in json.dumps(events)
