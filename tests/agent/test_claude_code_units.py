"""The claude-code backend's decisions, one by one: how a session's end is read, how its
usage is counted, and which tool calls the guard refuses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

claude_agent_sdk = pytest.importorskip("claude_agent_sdk")

from buildrunnerd.agent._claude_code import _Guard, classify_ending  # noqa: E402
from buildrunnerd.agent._claude_tally import CallTracker, SessionTally  # noqa: E402
from buildrunnerd.executor import ApiCall  # noqa: E402

NOW = 1_800_000_000.0


def result(**fields: Any) -> Any:
    base: dict[str, Any] = {"subtype": "success", "duration_ms": 10, "duration_api_ms": 5,
                            "is_error": False, "num_turns": 3, "session_id": "s",
                            "stop_reason": "end_turn", "result": "Built it."}
    base.update(fields)
    return claude_agent_sdk.ResultMessage(**base)


def ending(res: Any, **kw: Any) -> Any:
    return classify_ending(res, limit_resets_at=kw.get("at"), limit_type=kw.get("type"),
                           crash=kw.get("crash", ""), now=NOW, wait_s=300.0)


@pytest.mark.parametrize(("fields", "words"), [
    ({}, "says it is done"),
    ({"subtype": "error_max_turns", "is_error": True, "num_turns": 40}, "turn limit (40"),
    ({"subtype": "error_during_execution", "is_error": True, "errors": ["boom"]}, "boom"),
    ({"is_error": True, "result": "API Error: 400 bad"}, "ended with an error: API Error"),
    ({"result": ""}, "empty result"),
    ({"stop_reason": "tool_use"}, "middle of a tool call"),
])
def test_every_ending_with_a_result_goes_to_verification(fields: dict[str, Any],
                                                         words: str) -> None:
    # "success" is never trusted more than the others: all of them are only a signal.
    got = ending(result(**fields))
    assert got.kind == "verify"
    assert words in got.note and "verification decides" in got.note


def test_no_result_is_a_crash_whatever_the_stream_said() -> None:
    got = ending(None, crash="ProcessError: exit code -9")
    assert got.kind == "crashed" and "exit code -9" in got.note


def test_limits_pause_until_the_reset_and_never_fail() -> None:
    limited = ending(result(is_error=True, api_error_status=429), at=NOW + 3600,
                     type="five_hour")
    assert limited.kind == "limited" and limited.resume_at == NOW + 3600
    assert "five-hour usage limit" in limited.note
    # A 429 without a reset time waits the configured time; so does an exhausted 529.
    assert ending(result(is_error=True, api_error_status=429)).resume_at == NOW + 300
    overloaded = ending(result(is_error=True, api_error_status=529))
    assert overloaded.kind == "limited" and overloaded.resume_at == NOW + 300
    # A rate-limit event without a result (the CLI died after it) is still a limit.
    assert ending(None, at=NOW + 60).kind == "limited"


def test_an_auth_failure_says_how_to_log_in() -> None:
    got = ending(result(is_error=True, api_error_status=401, result="Invalid API key"))
    assert got.kind == "auth" and "log in again" in got.note


def call(model: str, **tokens: int) -> ApiCall:
    return ApiCall(model, tokens.get("input_tokens", 0), tokens.get("output_tokens", 0),
                   tokens.get("cache_creation_input_tokens", 0),
                   tokens.get("cache_read_input_tokens", 0))


def cli_usage(**models: tuple[int, int, int, int]) -> dict[str, Any]:
    return {m.replace("_", "-"): {"inputTokens": i, "outputTokens": o,
                                  "cacheCreationInputTokens": w, "cacheReadInputTokens": r,
                                  "costUSD": 1.0}
            for m, (i, o, w, r) in models.items()}


def test_the_tally_finds_calls_the_stream_did_not_show_and_the_clis_own_price() -> None:
    tally = SessionTally()
    tally.add_streamed(call("sonnet", input_tokens=10, output_tokens=5))
    unseen, cli_cost = tally.settle(cli_usage(sonnet=(10, 5, 0, 0), haiku=(7, 2, 0, 0)), 0.25)
    assert unseen == {"haiku": {"input_tokens": 7, "output_tokens": 2,
                                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
    assert cli_cost == 0.25
    # The CLI's totals accumulate across --resume: the next invocation is the difference.
    tally.add_streamed(call("sonnet", input_tokens=1, output_tokens=1))
    unseen, cli_cost = tally.settle(cli_usage(sonnet=(11, 6, 0, 0), haiku=(7, 2, 0, 0)), 0.30)
    assert unseen == {} and cli_cost == pytest.approx(0.05)


def test_after_an_invocation_without_result_the_totals_are_not_compared() -> None:
    tally = SessionTally()
    tally.settle(cli_usage(sonnet=(10, 5, 0, 0)), 0.1)
    tally.add_streamed(call("sonnet", input_tokens=3, output_tokens=3))
    tally.comparable = False  # the CLI crashed: whether its totals kept those calls is unknown
    unseen, cli_cost = tally.settle(cli_usage(sonnet=(99, 99, 0, 0)), 0.9)
    assert unseen == {} and cli_cost is None
    # ...and from the next result on they are again.
    unseen, cli_cost = tally.settle(cli_usage(sonnet=(99, 99, 0, 4)), 0.95)
    assert unseen["sonnet"]["cache_read_input_tokens"] == 4


def test_a_call_is_message_start_plus_the_final_usage_of_message_delta() -> None:
    tracker = CallTracker()
    start = {"type": "message_start", "message": {
        "id": "msg_1", "model": "claude-sonnet-5-5",
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 100, "output_tokens": 1}}}
    assert tracker.feed(start) is None
    assert tracker.feed({"type": "content_block_delta"}) is None
    done = tracker.feed({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                         "usage": {"output_tokens": 42, "input_tokens": None}})
    assert done == {"model": "claude-sonnet-5-5", "message_id": "msg_1",
                    "stop_reason": "tool_use",
                    "usage": {"input_tokens": 3, "cache_read_input_tokens": 100,
                              "output_tokens": 42}}
    # A delta without a start (a subagent's, say) is not a call of ours.
    assert tracker.feed({"type": "message_delta", "usage": {"output_tokens": 1}}) is None


async def _no_event(*args: Any, **kwargs: Any) -> None:
    return None


def test_the_guard_keeps_file_tools_in_the_worktree(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    (wt / ".git").mkdir(parents=True)
    (wt / "app").mkdir()
    os.symlink(tmp_path, wt / "out")
    guard = _Guard(wt, ["Read", "Write", "Edit", "Glob", "Grep", "mcp__buildrunner__bash"],
                   _no_event)
    assert guard.check("Write", {"file_path": str(wt / "app/x.py")}) is None
    assert guard.check("Read", {"file_path": "app/x.py"}) is None
    assert guard.check("Read", {"file_path": str(wt / ".git/config")}) is None  # reading is fine
    assert guard.check("Glob", {"pattern": "**/*.py"}) is None
    assert guard.check("mcp__buildrunner__bash", {"command": "ls /"}) is None  # confined itself
    refused = {
        "outside": guard.check("Write", {"file_path": str(tmp_path / "x")}),
        "climb": guard.check("Edit", {"file_path": "../x", "old_string": "a", "new_string": "b"}),
        "git": guard.check("Write", {"file_path": str(wt / ".git/hooks/pre-commit")}),
        "symlink": guard.check("Write", {"file_path": str(wt / "out/x")}),
        "read": guard.check("Read", {"file_path": "/etc/passwd"}),
        "grep": guard.check("Grep", {"pattern": "x", "path": "/"}),
        "glob": guard.check("Glob", {"pattern": "/etc/*"}),
        "glob-climb": guard.check("Glob", {"pattern": "../**"}),
        "no path": guard.check("Write", {"content": "x"}),
        "their bash": guard.check("Bash", {"command": "curl example.com"}),
        "web": guard.check("WebFetch", {"url": "http://x"}),
    }
    assert [k for k, v in refused.items() if v is None] == []
    assert "read-only" in str(refused["git"]) and "symlink" in str(refused["symlink"])
