"""Retries, faults, the shared limiter, fallback, auth, budgets and resuming."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from buildrunnerd.agent import AnthropicExecutor, CostTable
from buildrunnerd.agent._conversation import ConversationState
from buildrunnerd.config import PricingConfig
from buildrunnerd.protocol import CheckResult, VerificationReport
from tests.agent.support import Recorder, batch_key, make_config, make_job, make_worktree
from tests.fakeapi import (
    API_KEY,
    ErrorReply,
    FakeAnthropic,
    Faults,
    Reply,
    agent_script,
    text,
    tool_use,
)

EDIT = "str_replace_based_edit_tool"


def batch_steps(batch: str) -> list[Reply]:
    return [
        Reply([tool_use(EDIT, {"command": "create", "path": f"{batch}.py",
                               "file_text": f"NAME = {batch!r}\n"})], "tool_use"),
        Reply([tool_use("bash", {"command": f"python3 {batch}.py && echo ran-{batch}"})],
              "tool_use"),
        Reply([text(f"{batch} done")], "end_turn"),
    ]


@pytest.mark.parametrize("stream", [True, False])
async def test_multi_batch_run_survives_30_percent_faults(tmp_path: Path, stream: bool) -> None:
    batches = [f"B00{i}" for i in range(1, 7)]
    # Every kind once up front (so each is surely exercised), then 30% at random.
    faults = Faults(rate=0.3, seed=11, retry_after="0", timeout_s=1.0,
                    sequence=["429", "529", "500", "drop", "timeout", "stream_overload",
                              "stream_drop"])
    responder = agent_script({b: batch_steps(b) for b in batches}, batch_key)
    with FakeAnthropic(responder, faults=faults) as fake:
        ex = AnthropicExecutor(make_config(request_timeout_s=0.6, max_retries=12, stream=stream),
                               api_key=API_KEY, base_url=fake.base_url)
        ctxs = {b: Recorder() for b in batches}
        outcomes = {}
        worktrees = {b: make_worktree(tmp_path, b) for b in batches}

        async def one(b: str) -> None:
            outcomes[b] = await ex.run_batch(make_job(worktrees[b], batch_id=b), ctxs[b])

        async with anyio.create_task_group() as tg:
            for b in batches:
                tg.start_soon(one, b)
        await ex.aclose()

    assert all(o.status == "completed" for o in outcomes.values()), outcomes
    for b in batches:
        assert (worktrees[b] / f"{b}.py").read_text() == f"NAME = {b!r}\n"
    kinds = {r.outcome for r in fake.requests}
    expected = {"fault:429", "fault:529", "fault:500", "fault:drop", "fault:timeout"}
    if stream:  # mid-stream faults need a stream (without one they are plain 529s)
        expected |= {"fault:stream_overload", "fault:stream_drop"}
    assert expected <= kinds
    # Every billed call counted once, exactly: tokens and cost.
    calls = [c for ctx in ctxs.values() for c in ctx.calls]
    assert len(calls) == len(fake.billed) == 3 * len(batches)
    assert sorted(c.request_id or "" for c in calls) == sorted(b.request_id for b in fake.billed)
    keys = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_read_input_tokens")
    assert {k: sum(getattr(c, k) for c in calls) for k in keys} == fake.billed_totals()
    table = CostTable(PricingConfig())
    expected_usd = sum(table.cost_usd(b.model, b.usage) for b in fake.billed)
    assert sum(c.cost_usd for c in calls) == pytest.approx(expected_usd, rel=1e-12)
    # One retry per fault the fake served; a timeout can also be the client's own, on a
    # request the fake answered late on a loaded machine (request_timeout_s is 0.6 s), so
    # timeouts are counted at least as many as the fake's.
    retried = [e[1] for ctx in ctxs.values() for e in ctx.events if e[0] == "agent.retry"]
    faults_served = [r.outcome for r in fake.requests if r.outcome != "ok"]
    timeouts = sum(1 for d in retried if d["error"] == "timeout")
    assert timeouts >= faults_served.count("fault:timeout")
    assert len(retried) - timeouts == len(faults_served) - faults_served.count("fault:timeout")


async def test_429_retry_after_pauses_every_worker(fake_api: FakeAnthropic, tmp_path: Path,
                                                   executor: AnthropicExecutor) -> None:
    fake_api.faults = Faults(sequence=["429"], retry_after="1")
    fake_api.set_responder(lambda req: Reply([text("ok")], "end_turn"))
    wt1, wt2 = make_worktree(tmp_path, "a"), make_worktree(tmp_path, "b")
    results = []

    async def one(wt: Path, b: str) -> None:
        results.append(await executor.run_batch(make_job(wt, batch_id=b), Recorder()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, wt1, "B001")
        await anyio.sleep(0.2)  # the second worker starts while the first is told to wait
        tg.start_soon(one, wt2, "B002")
    assert [r.status for r in results] == ["completed", "completed"]
    limited = fake_api.requests[0]
    assert limited.outcome == "fault:429"
    later = fake_api.requests[1:]
    assert len(later) == 2
    # Both workers honoured the retry-after of the first one's 429 (a lower bound only).
    assert all(r.arrived_s - limited.arrived_s >= 1.0 for r in later)
    assert executor.limiter.pauses >= 1


async def test_529_burst_switches_to_the_fallback_model(fake_api: FakeAnthropic, worktree: Path,
                                                        executor: AnthropicExecutor) -> None:
    fake_api.faults = Faults(sequence=["529", "529", "stream_overload"])
    fake_api.set_responder(lambda req: Reply([text("ok")], "end_turn"))
    ctx = Recorder()
    outcome = await executor.run_batch(make_job(worktree, complexity="complex"), ctx)
    assert outcome.status == "completed"
    models = [r.body["model"] for r in fake_api.requests]
    assert models == ["claude-opus-5-5"] * 3 + ["claude-sonnet-5-5"]
    assert outcome.model == "claude-sonnet-5-5"
    assert ("agent.fallback", {"from": "claude-opus-5-5", "to": "claude-sonnet-5-5",
                               "overloads": 3}) in ctx.events
    assert len(ctx.calls) == 1 and ctx.calls[0].model == "claude-sonnet-5-5"


@pytest.mark.parametrize("reply", [
    ErrorReply(429, "rate_limit_error", "You have reached your spend limit.",
               details={"error_code": "enforced_spend_limit_reached"}),
    ErrorReply(400, "invalid_request_error", "messages: field required"),
    ErrorReply(403, "permission_error", "not allowed"),
    ErrorReply(413, "request_too_large", "Request exceeds the maximum size"),
])
async def test_permanent_errors_are_not_retried(fake_api: FakeAnthropic, worktree: Path,
                                                executor: AnthropicExecutor,
                                                reply: ErrorReply) -> None:
    fake_api.set_responder(lambda req: reply)
    outcome = await executor.run_batch(make_job(worktree), Recorder())
    assert outcome.status == "failed"
    assert reply.type in (outcome.reason or "") and "Not retried" in (outcome.reason or "")
    assert len(fake_api.requests) == 1


async def test_a_streamed_event_that_is_not_json_is_retried(fake_api: FakeAnthropic,
                                                            worktree: Path,
                                                            executor: AnthropicExecutor) -> None:
    # The stream's events are decoded by us (not the SDK's typed stream): one cut short on the
    # way is a broken stream, tried again, not a crash of the batch or half an answer.
    fake_api.faults = Faults(sequence=["stream_garbled"])
    fake_api.set_responder(lambda req: Reply([text("all done here")], "end_turn"))
    ctx = Recorder()
    outcome = await executor.run_batch(make_job(worktree), ctx)
    assert outcome.status == "completed", outcome.reason
    assert outcome.summary == "all done here"
    assert [r.outcome for r in fake_api.requests] == ["fault:stream_garbled", "ok"]
    retries = [d for t, d in ctx.events if t == "agent.retry"]
    assert len(retries) == 1 and retries[0]["error"] == "connection"
    assert len(ctx.calls) == 1 == len(fake_api.billed)


async def test_401_fails_fast_with_a_clear_message(fake_api: FakeAnthropic,
                                                   worktree: Path) -> None:
    fake_api.set_responder(lambda req: Reply([text("never")], "end_turn"))
    ex = AnthropicExecutor(make_config(), api_key="sk-ant-wrong", base_url=fake_api.base_url)
    ctx = Recorder()
    outcome = await ex.run_batch(make_job(worktree), ctx)
    await ex.aclose()
    assert outcome.status == "failed"
    assert (outcome.reason or "").startswith("ANTHROPIC_API_KEY rejected by")
    assert "sk-ant-wrong" not in (outcome.reason or "")
    assert len(fake_api.requests) == 1 and ctx.calls == []


async def test_retries_give_up_after_max_retries(fake_api: FakeAnthropic,
                                                 worktree: Path) -> None:
    fake_api.set_responder(lambda req: ErrorReply(500, "api_error", "boom"))
    ex = AnthropicExecutor(make_config(max_retries=2), api_key=API_KEY,
                           base_url=fake_api.base_url)
    outcome = await ex.run_batch(make_job(worktree), Recorder())
    await ex.aclose()
    assert outcome.status == "failed" and "failed 3 times" in (outcome.reason or "")
    assert len(fake_api.requests) == 3


async def test_budget_pauses_before_the_call_that_would_exceed_it(
        fake_api: FakeAnthropic, worktree: Path, executor: AnthropicExecutor) -> None:
    fake_api.set_responder(lambda req: Reply(
        [tool_use("bash", {"command": "echo " + "x" * 4000})], "tool_use",
        usage={"output_tokens": 20_000}))  # $0.30 a turn at sonnet prices
    ctx = Recorder(budget_usd=0.7)
    outcome = await executor.run_batch(make_job(worktree), ctx)
    assert outcome.status == "budget_exceeded"
    assert "budget" in (outcome.reason or "")
    assert len(ctx.calls) == 2 == len(fake_api.requests)
    assert sum(c.cost_usd for c in ctx.calls) <= 0.7


async def test_resume_from_checkpoint_repeats_no_turn(fake_api: FakeAnthropic, worktree: Path
                                                      ) -> None:
    steps = [
        Reply([tool_use(EDIT, {"command": "create", "path": "a.txt", "file_text": "a"})],
              "tool_use"),
        Reply([tool_use(EDIT, {"command": "create", "path": "b.txt", "file_text": "b"})],
              "tool_use"),
        Reply([tool_use(EDIT, {"command": "create", "path": "c.txt", "file_text": "c"})],
              "tool_use"),
        Reply([text("all three")], "end_turn"),
    ]
    fake_api.set_responder(agent_script({"B001": steps}, batch_key))
    first = AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake_api.base_url)
    ctx = Recorder()
    with anyio.CancelScope() as scope:
        async def kill_after(n: int) -> None:
            if n == 4:  # after turn 2's tools ran and were saved: the daemon dies here
                scope.cancel()
        ctx.on_checkpoint = kill_after
        await first.run_batch(make_job(worktree), ctx)
    await first.aclose()
    assert len(fake_api.requests) == 2 and (worktree / "b.txt").exists()
    state = ConversationState.decode(ctx.checkpoints[-1])
    assert state.turns == 2 and not state.pending_tools

    second = AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake_api.base_url)
    ctx2 = Recorder()
    outcome = await second.run_batch(make_job(worktree, resume_state=ctx.checkpoints[-1]), ctx2)
    await second.aclose()
    assert outcome.status == "completed" and outcome.summary == "all three"
    turns = [r.assistant_turns() for r in fake_api.requests]
    assert turns == [0, 1, 2, 3]  # each turn asked for exactly once
    assert len(ctx.calls) + len(ctx2.calls) == len(fake_api.billed) == 4
    assert (worktree / "c.txt").read_text() == "c"
    # A finished conversation resumes to its outcome without any call.
    done = await AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake_api.base_url
                                   ).run_batch(make_job(worktree,
                                                        resume_state=ctx2.checkpoints[-1]),
                                               Recorder())
    assert done.status == "completed" and len(fake_api.requests) == 4


async def test_fix_round_continues_the_conversation(fake_api: FakeAnthropic, worktree: Path,
                                                    executor: AnthropicExecutor) -> None:
    fake_api.set_responder([Reply([text("first try")], "end_turn"),
                            Reply([text("fixed")], "end_turn")])
    ctx = Recorder()
    assert (await executor.run_batch(make_job(worktree), ctx)).status == "completed"
    report = VerificationReport(passed=False, checks=[
        CheckResult("tests", False, "1 failed", file="app.py", line=3,
                    output_tail="AssertionError: 2 != 3")])
    outcome = await executor.run_batch(make_job(worktree, fix_round=1, fix_report=report,
                                                escalation=1), ctx)
    assert outcome.status == "completed" and outcome.summary == "fixed"
    req = fake_api.requests[1]
    assert req.body["model"] == "claude-opus-5-5"  # escalated one step up the ladder
    assert [m["role"] for m in req.messages] == ["user", "assistant", "user"]
    fix_text = req.messages[-1]["content"][-1]["text"]
    assert "AssertionError: 2 != 3" in fix_text and "app.py" in fix_text


async def test_resume_in_another_worktree_tells_the_model(fake_api: FakeAnthropic,
                                                         tmp_path: Path) -> None:
    fake_api.set_responder([
        Reply([tool_use(EDIT, {"command": "create", "path": "a.txt", "file_text": "a"})],
              "tool_use"),
        Reply([text("redone")], "end_turn")])
    first = AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake_api.base_url)
    ctx = Recorder()
    with anyio.CancelScope() as scope:
        async def kill_after(n: int) -> None:
            if n == 1:  # the assistant turn is saved, its tool call not yet run
                scope.cancel()
        ctx.on_checkpoint = kill_after
        await first.run_batch(make_job(make_worktree(tmp_path, "old")), ctx)
    await first.aclose()
    new = make_worktree(tmp_path, "new")
    second = AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake_api.base_url)
    outcome = await second.run_batch(make_job(new, resume_state=ctx.checkpoints[-1]), Recorder())
    await second.aclose()
    assert outcome.status == "completed"
    assert (new / "a.txt").read_text() == "a"  # the pending tool call ran in the new worktree
    last = fake_api.requests[-1].messages[-1]["content"]
    assert last[0]["type"] == "tool_result"  # results first, then the note
    assert "fresh worktree" in last[1]["text"] and str(new) in last[1]["text"]


async def test_exhausted_rate_limit_headers_hold_every_call() -> None:
    from datetime import UTC, datetime, timedelta

    from buildrunnerd.agent import RateLimiter

    limiter = RateLimiter()
    limiter.observe({"anthropic-ratelimit-tokens-remaining": "5000",
                     "anthropic-ratelimit-tokens-reset": "2000-01-01T00:00:00Z"})
    assert limiter.wait_s == 0  # capacity left: no pause
    reset = (datetime.now(UTC) + timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    limiter.observe({"anthropic-ratelimit-requests-remaining": "0",
                     "anthropic-ratelimit-requests-reset": reset})
    assert 1.0 < limiter.wait_s <= 3.0
    limiter.observe({"retry-after": "30"}, status=429)
    assert limiter.wait_s > 20  # a retry-after extends the pause for everyone
    with anyio.move_on_after(0.05) as scope:
        await limiter.wait()
    assert scope.cancelled_caught  # still held
