"""A batch's conversation: what is checkpointed after every turn, and how requests are built.

The state is a msgspec Struct encoded as JSON; ``ctx.checkpoint`` stores it, and
``job.resume_state`` brings it back after a restart so no finished turn is paid for twice.
Content blocks are plain JSON as the API sent them (see ``_calls``).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec

from buildrunnerd.prompt import TokenCounter, fix_prompt
from buildrunnerd.protocol import VerificationReport

__all__ = ["ConversationState", "with_cache_breakpoint", "append_user", "count_request_tokens",
           "format_fix_report", "last_text"]

_EPHEMERAL = {"type": "ephemeral"}
# Blocks that cannot carry cache_control (the API rejects it on them).
_NO_CACHE_CONTROL = ("thinking", "redacted_thinking")


class ConversationState(msgspec.Struct, kw_only=True):
    # 2: the worktree's path is in the first message (1: in the system prompt of each call).
    version: int = 2
    model: str
    messages: list[dict[str, Any]]
    turns: int = 0  # billed model turns so far
    tokens: int = 0  # input + output tokens so far (the batch's token limit)
    output_tokens: int = 0  # output tokens so far (the budget check projects the next turn's)
    pending_tools: bool = False  # the last assistant message has tool_use blocks not yet run
    continue_after_tools: bool = False  # ... and it was cut by max_tokens
    done: bool = False  # the model ended its turn
    fix_round: int = 0  # the fix-up round this conversation has reached
    summary: str = ""
    last_request_tokens: int = 0  # the token counter's count of the last request
    worktree: str = ""  # where the conversation's edits were made
    pending_note: str = ""  # a user note to add before the next call (after tool results)
    escalations: int = 0  # steps up the model ladder within this conversation (limits hit)
    extra_turns: int = 0  # turns granted beyond agent.max_turns by an escalation
    cutoffs: int = 0  # answers in a row cut off by max_tokens

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> ConversationState:
        return msgspec.json.decode(data, type=cls)


def with_cache_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of ``messages`` with ``cache_control`` on the last block of the last message,
    so the next turn reads the whole conversation so far from the cache. Only the request
    carries the marker, never the stored history: old markers would pile up past the API's
    limit of four breakpoints. (The history keeps one marker of its own: the end of the run's
    shared context in the first message, which never moves.)"""
    if not messages:
        return messages
    out = list(messages)
    last = copy.deepcopy(out[-1])
    content = last.get("content")
    if isinstance(content, str):
        if content:
            last["content"] = [{"type": "text", "text": content, "cache_control": _EPHEMERAL}]
    elif isinstance(content, list):
        for block in reversed(content):
            if block.get("type") in _NO_CACHE_CONTROL:
                continue
            if block.get("type") == "text" and not block.get("text"):
                continue
            block["cache_control"] = dict(_EPHEMERAL)
            break
    out[-1] = last
    return out


def append_user(messages: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> None:
    """Add user content, merging into a trailing user message (the API wants alternation)."""
    if messages and messages[-1].get("role") == "user":
        content = messages[-1]["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        messages[-1]["content"] = [*content, *blocks]
    else:
        messages.append({"role": "user", "content": blocks})


def last_text(content: list[dict[str, Any]]) -> str:
    """The text of an assistant message (its summary of the work)."""
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text").strip()


def count_request_tokens(counter: TokenCounter, params: dict[str, Any]) -> int:
    """Estimate a request's input tokens with the planning engine's counter, one message at a
    time (the counter caches repeated texts, and a conversation repeats all but its end).

    An estimate for budgeting only: Claude's tokenizer differs, billing uses ``usage``."""
    total = counter.count(json.dumps(params.get("system", "")))
    total += counter.count(json.dumps(params.get("tools", [])))
    for message in params.get("messages", []):
        total += counter.count(json.dumps(message))
    return total


def format_fix_report(report: VerificationReport) -> str:
    """The fix-up turn's text (``buildrunnerd.prompt.fix_prompt``)."""
    return fix_prompt(report)
