"""The agent loop through the real SDK over HTTP to the fake Messages API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildrunnerd.agent import AnthropicExecutor
from buildrunnerd.executor import BatchJob
from buildrunnerd.prompt import BatchPrompt
from tests.agent.support import SYSTEM, Recorder, make_config, make_job
from tests.fakeapi import (
    API_KEY,
    FakeAnthropic,
    Reply,
    count_tokens,
    redacted_thinking,
    text,
    thinking,
    tool_use,
)

EDIT = "str_replace_based_edit_tool"


def build_script() -> list[Reply]:
    return [
        Reply([text("I will create the app."),
               tool_use(EDIT, {"command": "create", "path": "app.py",
                               "file_text": "print('hello')\n"})], "tool_use"),
        Reply([tool_use(EDIT, {"command": "str_replace", "path": "app.py",
                               "old_str": "hello", "new_str": "hello, world"})], "tool_use"),
        Reply([tool_use("bash", {"command": "python3 app.py > out.txt && cat out.txt"})],
              "tool_use"),
        Reply([text("Built app.py; it prints a greeting.")], "end_turn"),
    ]


@pytest.mark.parametrize("stream", [True, False])
async def test_batch_creates_edits_and_runs(fake_api: FakeAnthropic, worktree: Path,
                                           stream: bool) -> None:
    fake_api.set_responder(build_script())
    ex = AnthropicExecutor(make_config(stream=stream), api_key=API_KEY,
                           base_url=fake_api.base_url)
    ctx = Recorder()
    outcome = await ex.run_batch(make_job(worktree), ctx)
    await ex.aclose()

    assert outcome.status == "completed", outcome.reason
    assert outcome.summary == "Built app.py; it prints a greeting."
    assert outcome.model == "claude-sonnet-5-5"  # medium complexity
    assert (worktree / "app.py").read_text() == "print('hello, world')\n"
    assert (worktree / "out.txt").read_text() == "hello, world\n"
    assert all(r.stream is stream for r in fake_api.requests)
    # The bash output went back to the model as a tool_result.
    last = fake_api.requests[-1].messages[-1]["content"]
    assert last[0]["type"] == "tool_result" and "hello, world" in last[0]["content"]
    assert not any(b.get("is_error") for b in last)
    # Progress reached the events, small.
    types = ctx.types()
    assert types.count("tool.call") == 3 and types.count("tool.result") == 3
    assert ("agent.text", {"text": "I will create the app.", "chars": 22}) in ctx.events
    # Every billed call recorded once, with the server's usage.
    assert len(ctx.calls) == len(fake_api.billed) == 4
    assert ctx.totals() == fake_api.billed_totals()
    assert [c.request_id for c in ctx.calls] == [b.request_id for b in fake_api.billed]
    assert all(c.cost_usd > 0 for c in ctx.calls)
    assert len(ctx.checkpoints) >= 4


async def test_request_shape_and_cache_breakpoints(fake_api: FakeAnthropic, worktree: Path,
                                                   executor: AnthropicExecutor) -> None:
    fake_api.set_responder(build_script())
    ctx = Recorder()
    assert (await executor.run_batch(make_job(worktree), ctx)).status == "completed"
    body = fake_api.requests[1].body
    assert body["tools"][0] == {"type": "text_editor_20250728", "name": EDIT,
                                "max_characters": 30000}
    assert body["tools"][1]["type"] == "bash_20250124" and body["tools"][1]["name"] == "bash"
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    # The run's system prompt, then the rules every batch shares, cached together; nothing
    # of this batch before the breakpoint (its worktree's path is in the first message).
    assert body["system"][0] == {"type": "text", "text": SYSTEM}
    assert body["system"][1]["cache_control"] == {"type": "ephemeral"}
    assert str(worktree) not in json.dumps(body["system"])
    first = body["messages"][0]["content"]
    assert first[0]["text"] == "[batch B001] Build app.py." and str(worktree) in first[-1]["text"]
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert json.dumps(body).count("cache_control") == 3  # never more than the API allows
    assert "x-api-key" in fake_api.requests[0].headers or \
        "authorization" in fake_api.requests[0].headers
    # Later turns read the conversation so far from the cache.
    assert ctx.calls[0].cache_read_input_tokens == 0
    assert ctx.calls[0].cache_creation_input_tokens > 0
    for call in ctx.calls[1:]:
        assert call.cache_read_input_tokens > ctx.calls[0].cache_read_input_tokens
    # A second batch of the same run reads the tools and the system prompt from the cache.
    wt2 = worktree.parent / "wt2"
    wt2.mkdir()
    fake_api.set_responder([Reply([text("done")], "end_turn")])
    ctx2 = Recorder()
    assert (await executor.run_batch(make_job(wt2, batch_id="B002"), ctx2)).status == "completed"
    assert ctx2.calls[0].cache_read_input_tokens > 0


@pytest.mark.parametrize("stream", [True, False])
async def test_thinking_blocks_round_trip_unchanged(fake_api: FakeAnthropic, worktree: Path,
                                                    stream: bool) -> None:
    blocks = [thinking("Let me plan the file layout first. " * 5),
              redacted_thinking("EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8c"),
              text("Creating it."),
              tool_use(EDIT, {"command": "create", "path": "a.txt", "file_text": "a\n"})]
    fake_api.set_responder([Reply([dict(b) for b in blocks], "tool_use"),
                            Reply([text("done")], "end_turn")])
    ex = AnthropicExecutor(make_config(stream=stream), api_key=API_KEY,
                           base_url=fake_api.base_url)
    assert (await ex.run_batch(make_job(worktree), Recorder())).status == "completed"
    await ex.aclose()
    sent = json.loads(fake_api.requests[1].raw)["messages"][1]
    assert sent["role"] == "assistant"
    # Byte for byte: same JSON, same keys, no marker added to the thinking blocks.
    for original, echoed in zip(blocks[:2], sent["content"][:2], strict=True):
        assert json.dumps(echoed, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert sent["content"][2] == blocks[2]
    assert sent["content"][3] == blocks[3]


async def test_max_tokens_continues(fake_api: FakeAnthropic, worktree: Path,
                                    executor: AnthropicExecutor) -> None:
    fake_api.set_responder([Reply([text("Part one of a long answer")], "max_tokens"),
                            Reply([text("and the end.")], "end_turn")])
    outcome = await executor.run_batch(make_job(worktree), Recorder())
    assert outcome.status == "completed"
    second = fake_api.requests[1].messages
    assert second[1] == {"role": "assistant", "content": [text("Part one of a long answer")]}
    assert second[2]["role"] == "user"
    assert "cut off" in second[2]["content"][0]["text"]


async def test_max_tokens_drops_a_cut_tool_call(fake_api: FakeAnthropic, worktree: Path,
                                                executor: AnthropicExecutor) -> None:
    done = tool_use(EDIT, {"command": "create", "path": "one.txt", "file_text": "1"})
    cut = tool_use(EDIT, {"command": "create", "path": "two.txt", "file_text": "2" * 50})
    fake_api.set_responder([Reply([done, cut], "max_tokens"), Reply([text("ok")], "end_turn")])
    # The fake streams only half of the last call's JSON (the output limit hit it).
    outcome = await executor.run_batch(make_job(worktree), Recorder())
    assert outcome.status == "completed"
    assert (worktree / "one.txt").read_text() == "1"
    assert not (worktree / "two.txt").exists()
    assert [b["id"] for b in fake_api.requests[1].messages[1]["content"]] == [done["id"]]
    follow = fake_api.requests[1].messages[-1]["content"]
    assert [b["type"] for b in follow][-1] == "text" and "cut off" in follow[-1]["text"]
    assert [b["tool_use_id"] for b in follow if b["type"] == "tool_result"] == [done["id"]]


async def test_pause_turn_is_sent_back_as_is(fake_api: FakeAnthropic, worktree: Path,
                                             executor: AnthropicExecutor) -> None:
    paused = [text("Searching..."),
              {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search",
               "input": {"query": "python packaging"}}]
    fake_api.set_responder([Reply([dict(b) for b in paused], "pause_turn"),
                            Reply([text("finished")], "end_turn")])
    outcome = await executor.run_batch(make_job(worktree), Recorder())
    assert outcome.status == "completed"
    messages = fake_api.requests[1].messages
    assert messages[-1]["role"] == "assistant"  # no user turn added
    assert messages[-1]["content"][0] == paused[0]
    assert {k: v for k, v in messages[-1]["content"][1].items() if k != "cache_control"} \
        == paused[1]


@pytest.mark.parametrize(("stop", "words"), [
    ("refusal", "refused"),
    ("model_context_window_exceeded", "context window"),
])
async def test_terminal_stop_reasons_fail_clearly(fake_api: FakeAnthropic, worktree: Path,
                                                  executor: AnthropicExecutor, stop: str,
                                                  words: str) -> None:
    fake_api.set_responder([Reply([text("...")], stop)])
    ctx = Recorder()
    outcome = await executor.run_batch(make_job(worktree), ctx)
    assert outcome.status == "failed"
    assert words in (outcome.reason or "") and stop in (outcome.reason or "")
    assert len(ctx.calls) == 1 and len(fake_api.requests) == 1


async def test_turn_limit(fake_api: FakeAnthropic, worktree: Path) -> None:
    loop = Reply([tool_use("bash", {"command": "true"})], "tool_use")
    fake_api.set_responder(lambda req: loop)
    ex = AnthropicExecutor(make_config(max_turns=4), api_key=API_KEY, base_url=fake_api.base_url)
    ctx = Recorder()
    outcome = await ex.run_batch(make_job(worktree), ctx)
    await ex.aclose()
    assert outcome.status == "failed" and "turn limit" in (outcome.reason or "")
    assert "after escalating the model" in (outcome.reason or "")
    # The limit escalates the model once (half the turns again), then gives up.
    [escalated] = [d for t, d in ctx.events if t == "agent.escalated"]
    assert escalated["reason"] == "turn limit" and escalated["turns"] == 4
    models = [r.body["model"] for r in fake_api.requests]
    assert len(models) == 6 and len(set(models[:4])) == 1
    assert models[4:] == [escalated["to"]] * 2 and escalated["to"] != models[0]


async def test_a_loop_of_cut_off_answers_escalates_then_stops(fake_api: FakeAnthropic,
                                                              worktree: Path) -> None:
    # Non-streamed: the cut-off tool call's JSON parses, yet it must never be applied.
    cut = Reply([tool_use("str_replace_based_edit_tool",
                          {"command": "create", "path": "half.py", "file_text": "def f(:"})],
                "max_tokens")
    fake_api.set_responder(lambda req: cut)
    config = make_config(max_turns=80, stream=False)
    ex = AnthropicExecutor(config, api_key=API_KEY, base_url=fake_api.base_url)
    ctx = Recorder()
    outcome = await ex.run_batch(make_job(worktree), ctx)
    await ex.aclose()
    assert outcome.status == "failed" and "cut off" in (outcome.reason or "")
    assert len(fake_api.requests) == 6  # three cut-offs, escalation, three more: not 80
    assert [t for t, _ in ctx.events].count("agent.escalated") == 1
    assert not (worktree / "half.py").exists()


async def test_batch_timeout(fake_api: FakeAnthropic, worktree: Path) -> None:
    fake_api.set_responder(lambda req: Reply([tool_use("bash", {"command": "sleep 5"})],
                                             "tool_use"))
    ex = AnthropicExecutor(make_config(batch_timeout_s=1.0), api_key=API_KEY,
                           base_url=fake_api.base_url)
    outcome = await ex.run_batch(make_job(worktree), Recorder())
    await ex.aclose()
    assert outcome.status == "failed" and "timed out" in (outcome.reason or "")


async def test_routing_by_complexity_and_escalation(fake_api: FakeAnthropic, worktree: Path,
                                                    executor: AnthropicExecutor) -> None:
    fake_api.set_responder(lambda req: Reply([text("ok")], "end_turn"))
    o1 = await executor.run_batch(make_job(worktree, complexity="simple"), Recorder())
    o2 = await executor.run_batch(make_job(worktree, complexity="simple", escalation=1,
                                           batch_id="B002"), Recorder())
    o3 = await executor.run_batch(make_job(worktree, complexity="critical", batch_id="B003"),
                                  Recorder())
    assert [r.body["model"] for r in fake_api.requests] == [
        "claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5"]
    assert (o1.model, o2.model, o3.model) == (
        "claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5")


async def test_long_text_streams_to_events_in_pieces(fake_api: FakeAnthropic, worktree: Path,
                                                     executor: AnthropicExecutor) -> None:
    long = "".join(f"line {i} of a long explanation\n" for i in range(120))
    fake_api.set_responder([Reply([text(long)], "end_turn")])
    ctx = Recorder()
    assert (await executor.run_batch(make_job(worktree), ctx)).status == "completed"
    pieces = [d for t, d in ctx.events if t == "agent.text"]
    assert len(pieces) > 2 and all(p.get("partial") for p in pieces[:-1])
    assert "partial" not in pieces[-1]
    assert "".join(p["text"] for p in pieces) == long


async def test_secrets_in_tool_results_are_redacted_before_they_are_stored(
        fake_api: FakeAnthropic, worktree: Path) -> None:
    key = "sk-ant-" + "api03-Xq9Lm2Nb7Vc4Kd8Rt1Yw6Hs3Pf5Gj0"
    (worktree / "notes.txt").write_text(f"the key is {key}\n")
    fake_api.set_responder([
        Reply([tool_use("bash", {"command": "cat notes.txt"})], "tool_use"),
        Reply([tool_use(EDIT, {"command": "view", "path": "notes.txt"})], "tool_use"),
        Reply([tool_use("bash", {"command": f"echo {key} | wc -c"})], "tool_use"),
        Reply([text("Done.")], "end_turn"),
    ])
    ex = AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake_api.base_url)
    ctx = Recorder()
    outcome = await ex.run_batch(make_job(worktree), ctx)
    await ex.aclose()
    assert outcome.status == "completed", outcome.reason
    results = [d for t, d in ctx.events if t == "tool.result"]
    assert len(results) == 3
    assert all("[REDACTED:anthropic_api_key]" in d["output"] for d in results[:2])
    calls = [d for t, d in ctx.events if t == "tool.call"]
    assert calls[2]["command"] == "echo [REDACTED:anthropic_api_key] | wc -c"
    # Not in any event, not in what the model got back, and not in the checkpointed
    # conversation until the model itself wrote the key into its third command.
    assert key not in json.dumps(ctx.events)
    assert len(ctx.checkpoints) >= 3
    assert all(key.encode() not in c for c in ctx.checkpoints[:2])
    sent = [b for r in fake_api.requests for m in r.messages if m["role"] == "user"
            for b in (m["content"] if isinstance(m["content"], list) else [])
            if b.get("type") == "tool_result"]
    assert len(sent) >= 3 and key not in json.dumps(sent)


async def test_batches_of_a_run_read_the_shared_context_from_the_cache(
        fake_api: FakeAnthropic, worktree: Path, executor: AnthropicExecutor) -> None:
    # The prompt builder's blocks: the run's shared context (overview, "already built", one
    # block each) then the batch's own part. A later batch repeats an earlier one's shared
    # blocks and adds what finished since: its first call reads that prefix from the cache.
    overview = "# Project: Demo\n" + "A demo project with a long overview. " * 200 + "\n"
    summaries = [f"- B00{i}: built module {i} with its tests and docs.\n" for i in range(1, 4)]

    def job(wt: Path, batch_id: str, built: int) -> BatchJob:
        blocks = [overview, *summaries[:built], f"\n# Your tasks: batch {batch_id}\n"
                  f"[batch {batch_id}] Build app.py."]
        base = make_job(wt, batch_id=batch_id)
        base.prompt = BatchPrompt(system=SYSTEM, user="".join(blocks), tokens=100,
                                  context_tokens=10, user_blocks=blocks)
        return base

    fake_api.set_responder([Reply([text("done")], "end_turn")])
    first = Recorder()
    assert (await executor.run_batch(job(worktree, "B004", 2), first)).status == "completed"
    body = fake_api.requests[-1].body
    assert json.dumps(body).count("cache_control") == 4  # the API's limit, never more
    shared_end = body["messages"][0]["content"][2]
    assert shared_end["text"] == summaries[1] and shared_end["cache_control"]
    wt2 = worktree.parent / "wt2"
    wt2.mkdir()
    fake_api.set_responder([Reply([text("done")], "end_turn")])
    second = Recorder()
    assert (await executor.run_batch(job(wt2, "B005", 3), second)).status == "completed"
    # Read: tools, system and the first batch's shared blocks (the overview is most of it);
    # written: the newest summary and the batch's own part only.
    assert second.calls[0].cache_read_input_tokens > count_tokens(overview)
    assert second.calls[0].cache_creation_input_tokens < count_tokens(overview) // 2
