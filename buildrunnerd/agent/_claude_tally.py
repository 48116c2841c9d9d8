"""What a Claude Code session cost: exact per API call, priced with our table.

The CLI streams the raw Messages API events of every call it makes (``include_partial_messages``):
``message_start`` carries the input side of ``usage``, ``message_delta`` the final output
tokens. One :class:`~buildrunnerd.executor.ApiCall` row per call, from those two, is exactly
what the API billed (the ``assistant`` messages repeat the start usage once per content
block: summing them would count it twice).

At each ``result`` the CLI reports its own running totals per model (``modelUsage``), which
accumulate across ``--resume``. :class:`SessionTally` keeps the totals of the last result so
the difference is this invocation's; tokens the CLI counted that no streamed call showed
(calls it makes on the side) become one more row, and the CLI's own dollar figure is kept
beside ours (it uses its own price list).
"""

from __future__ import annotations

from typing import Any

import msgspec

from buildrunnerd.executor import ApiCall

__all__ = ["CallTracker", "SessionTally", "TOKEN_KEYS", "cli_usage_tokens"]

TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
              "cache_read_input_tokens")
_CLI_KEYS = {"inputTokens": "input_tokens", "outputTokens": "output_tokens",
             "cacheCreationInputTokens": "cache_creation_input_tokens",
             "cacheReadInputTokens": "cache_read_input_tokens"}


def cli_usage_tokens(model_usage: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    """The CLI's ``modelUsage`` as ``{model: {input_tokens, ...}}``."""
    out: dict[str, dict[str, int]] = {}
    for model, usage in (model_usage or {}).items():
        if isinstance(usage, dict):
            out[str(model)] = {ours: int(usage.get(theirs) or 0)
                               for theirs, ours in _CLI_KEYS.items()}
    return out


class SessionTally(msgspec.Struct, kw_only=True):
    """Checkpointed with the session: the CLI's totals at its last result, and the tokens
    recorded from streamed calls since then (so a crash between the two is not counted
    twice when the next result arrives)."""

    cli_tokens: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    cli_cost_usd: float = 0.0
    streamed_since: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    comparable: bool = True  # False after an invocation that ended without a result

    def add_streamed(self, call: ApiCall) -> None:
        row = self.streamed_since.setdefault(call.model, dict.fromkeys(TOKEN_KEYS, 0))
        for key in TOKEN_KEYS:
            row[key] += int(getattr(call, key))

    def settle(self, model_usage: dict[str, Any] | None, total_cost_usd: float | None
               ) -> tuple[dict[str, dict[str, int]], float | None]:
        """At a ``result``: the tokens per model the CLI counted but no streamed call showed,
        and the CLI's dollar figure for this invocation (None when the totals cannot be
        compared: the previous invocation ended without a result)."""
        now = cli_usage_tokens(model_usage)
        unseen: dict[str, dict[str, int]] = {}
        cli_cost: float | None = None
        if self.comparable:
            for model, tokens in now.items():
                before = self.cli_tokens.get(model, {})
                seen = self.streamed_since.get(model, {})
                extra = {k: tokens.get(k, 0) - before.get(k, 0) - seen.get(k, 0)
                         for k in TOKEN_KEYS}
                if any(v > 0 for v in extra.values()):
                    unseen[model] = {k: max(0, v) for k, v in extra.items()}
            if total_cost_usd is not None:
                cli_cost = max(0.0, total_cost_usd - self.cli_cost_usd)
        self.cli_tokens = now
        self.cli_cost_usd = float(total_cost_usd or 0.0)
        self.streamed_since = {}
        self.comparable = True
        return unseen, cli_cost


class CallTracker:
    """Turns the stream's ``message_start``/``message_delta`` events into calls."""

    def __init__(self) -> None:
        self._open: dict[str, Any] | None = None

    def feed(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Give one raw stream event; returns ``{model, usage, message_id, stop_reason}``
        when a call's final usage has arrived, else None."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._open = {"model": str(message.get("model") or ""),
                          "usage": dict(message.get("usage") or {}),
                          "message_id": message.get("id"), "stop_reason": None}
            return None
        if kind == "message_delta" and self._open is not None:
            call, self._open = self._open, None
            for key, value in (event.get("usage") or {}).items():
                if value is not None:
                    call["usage"][key] = value  # the final figures win over the start's
            call["stop_reason"] = (event.get("delta") or {}).get("stop_reason")
            return call
        return None
