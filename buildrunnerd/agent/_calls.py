"""One Messages API call, streamed or not, with BuildRunner's own retries around it.

Content blocks are kept as the plain JSON the API sent (rebuilt from the stream's deltas when
streaming): thinking, redacted_thinking and any block type we do not know go back in the
history exactly as they came, which extended thinking requires.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import anyio
import msgspec
import structlog

from buildrunnerd.agent._retry import TRANSPORT_ERRORS, RateLimiter, backoff_s, classify
from buildrunnerd.config import AgentConfig
from buildrunnerd.errors import AgentError

__all__ = ["Turn", "CallSettings", "call_with_retries", "call_once"]

_log = structlog.get_logger("buildrunnerd.agent.calls")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
# Text progress: ``(piece, final)``. Streaming hands out a long block in pieces as it grows.
OnText = Callable[[str, bool], Awaitable[None]]
_PIECE_CHARS = 800  # a streamed text block is reported every this many characters


@dataclass
class Turn:
    """The model's answer to one call."""

    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: dict[str, int]
    model: str
    request_id: str | None
    latency_ms: int


@dataclass
class CallSettings:
    stream: bool
    timeout_s: float
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    overloads_before_fallback: int
    fallback_model: str
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_config(cls, agent: AgentConfig, fallback_model: str) -> CallSettings:
        return cls(stream=agent.stream, timeout_s=agent.request_timeout_s,
                   max_retries=agent.max_retries, backoff_base_s=agent.backoff_base_s,
                   backoff_max_s=agent.backoff_max_s,
                   overloads_before_fallback=agent.overloads_before_fallback,
                   fallback_model=fallback_model)


# Every exception a call can end with that classify() understands.
_RETRY_CANDIDATES: tuple[type[Exception], ...] = (anthropic.APIError, *TRANSPORT_ERRORS)


def _usage(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    return {k: int(v) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}


async def call_once(client: anthropic.AsyncAnthropic, params: dict[str, Any], *,
                    stream: bool, timeout_s: float, limiter: RateLimiter,
                    on_text: OnText | None = None) -> Turn:
    """Make one call; raises the SDK's exceptions (the caller classifies them)."""
    started = time.monotonic()
    if not stream:
        raw = await client.messages.with_raw_response.create(**params, timeout=timeout_s)
        limiter.observe(raw.headers)
        body = await raw.json()
        if not isinstance(body, dict):
            raise AgentError(f"the Messages API answered with a non-object body: {body!r:.200}")
        content = list(body.get("content") or [])
        for block in content:
            if block.get("type") == "text" and on_text is not None:
                await on_text(block.get("text", ""), True)
        return Turn(content, body.get("stop_reason"), _usage(body.get("usage")),
                    str(body.get("model") or params["model"]), raw.headers.get("request-id"),
                    int((time.monotonic() - started) * 1000))

    # The stream's events as the server sent them (``AsyncStream.raw_events``, public since
    # anthropic 0.125), decoded to plain JSON here: the SDK's typed stream builds a model per
    # event, which we only turned back into a dict (about 1 ms of CPU a call, measured in
    # docs/benchmarks.md). The error handling is the SDK's: an HTTP error status raises its
    # APIStatusError before the body is read, an ``error`` event becomes one here.
    async with client.messages.with_streaming_response.create(
            **params, stream=True, timeout=timeout_s) as response:
        limiter.observe(response.headers)
        http = response.http_response
        message = _StreamedMessage(str(params["model"]), on_text)
        try:
            async for sse in anthropic.AsyncStream.raw_events(http):
                if sse.event in (None, "ping") or (not sse.data and sse.event != "error"):
                    continue
                if sse.event == "error":
                    # As the SDK's stream raises it: an APIStatusError with the stream's status
                    # (200) and the event's body, so its ``type`` (``overloaded_error``, ...)
                    # is classified as an error status's would be.
                    text, body = _stream_error(sse.data, http.status_code)
                    raise anthropic.APIStatusError(text, response=http, body=body)
                try:
                    event = msgspec.json.decode(sse.data)
                except msgspec.DecodeError as exc:
                    # Garbled on the way (a proxy?): the answer cannot be trusted, try again.
                    raise anthropic.APIConnectionError(
                        message=f"the stream sent an event that is not JSON: {sse.data!r:.200}",
                        request=http.request) from exc
                if isinstance(event, dict):
                    await message.feed(event)
        except TRANSPORT_ERRORS as exc:
            if "Timeout" in type(exc).__name__:
                raise anthropic.APITimeoutError(request=http.request) from exc
            raise anthropic.APIConnectionError(message=f"the stream broke: {exc}",
                                               request=http.request) from exc
        if not message.complete:
            # The stream ended without message_stop: the answer is incomplete, try again.
            raise anthropic.APIConnectionError(message="stream ended before message_stop",
                                               request=http.request)
        return Turn(message.content(), message.stop_reason, message.usage, message.model,
                    response.headers.get("request-id"), int((time.monotonic() - started) * 1000))


def _stream_error(data: str, status: int) -> tuple[str, object]:
    """The message and body of an ``error`` event in the middle of a stream, as the SDK's
    own stream reads them (the body is the event's JSON, else its text)."""
    try:
        body: object = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data or f"Error code: {status}", data
    return f"{body}", body


class _StreamedMessage:
    """Rebuilds a message from its stream events, block by block, as plain JSON."""

    def __init__(self, model: str, on_text: OnText | None) -> None:
        self.model = model
        self.on_text = on_text
        self.blocks: dict[int, dict[str, Any]] = {}
        self.partial_json: dict[int, str] = {}
        self.reported: dict[int, int] = {}  # text block index -> characters handed to on_text
        self.usage: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.complete = False

    def content(self) -> list[dict[str, Any]]:
        return [self.blocks[i] for i in sorted(self.blocks)]

    async def feed(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "message_start":
            message = ev.get("message") or {}
            self.usage.update(_usage(message.get("usage")))
            self.model = str(message.get("model") or self.model)
        elif kind == "content_block_start":
            self.blocks[int(ev["index"])] = dict(ev["content_block"])
        elif kind == "content_block_delta":
            await self._delta(int(ev["index"]), ev.get("delta") or {})
        elif kind == "content_block_stop":
            idx = int(ev["index"])
            block = self.blocks[idx]
            if idx in self.partial_json:
                text = self.partial_json.pop(idx)
                try:
                    block["input"] = json.loads(text) if text else {}
                except json.JSONDecodeError:
                    # A tool_use cut off by max_tokens: the caller drops it.
                    block["input"] = {}
                    block["_truncated"] = True
            if block.get("type") == "text" and self.on_text is not None:
                await self.on_text(block.get("text", "")[self.reported.get(idx, 0):], True)
        elif kind == "message_delta":
            self.stop_reason = (ev.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.usage.update(_usage(ev.get("usage")))
        elif kind == "message_stop":
            self.complete = True

    async def _delta(self, idx: int, delta: dict[str, Any]) -> None:
        block = self.blocks[idx]
        dtype = delta.get("type")
        if dtype == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
            done = self.reported.get(idx, 0)
            if self.on_text is not None and len(block["text"]) - done >= _PIECE_CHARS:
                self.reported[idx] = len(block["text"])
                await self.on_text(block["text"][done:], False)
        elif dtype == "input_json_delta":
            self.partial_json[idx] = self.partial_json.get(idx, "") + delta.get("partial_json", "")
        elif dtype == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif dtype == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif dtype == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))


async def call_with_retries(
    client: anthropic.AsyncAnthropic, params: dict[str, Any], *, settings: CallSettings,
    limiter: RateLimiter, emit: Emit,
    on_text: OnText | None = None,
) -> Turn:
    """:func:`call_once` with retries, the shared limiter and the overload fallback.

    After ``overloads_before_fallback`` overloads in a row the call switches to the fallback
    model (``params["model"]`` is updated, so the rest of the batch uses it too)."""
    overloads = 0
    attempt = 0
    while True:
        await limiter.wait()
        try:
            return await call_once(client, params, stream=settings.stream,
                                   timeout_s=settings.timeout_s, limiter=limiter,
                                   on_text=on_text)
        except _RETRY_CANDIDATES as exc:
            error: Exception = exc
            failure = classify(exc)
            if isinstance(exc, anthropic.APIStatusError):
                limiter.observe(exc.response.headers, status=exc.status_code)
        where = f"{client.base_url} (model {params['model']})"
        if failure.auth:
            raise AgentError(
                f"ANTHROPIC_API_KEY rejected by {where}: {failure.message}. Set a valid key "
                "in the daemon's environment (or ANTHROPIC_BASE_URL for a proxy) and restart "
                "it, or run with --backend simulated.",
                data={"status": failure.status, "type": failure.error_type},
            ) from error
        if not failure.retryable:
            raise AgentError(
                f"The Messages API refused the request at {where}: HTTP {failure.status} "
                f"{failure.error_type}: {failure.message}. Not retried: this will not pass by "
                "waiting.",
                data={"status": failure.status, "type": failure.error_type},
            ) from error
        overloads = overloads + 1 if failure.overloaded else 0
        if (failure.overloaded and overloads >= settings.overloads_before_fallback
                and params["model"] != settings.fallback_model):
            await emit("agent.fallback", {"from": params["model"],
                                          "to": settings.fallback_model,
                                          "overloads": overloads})
            _log.warning("model overloaded; switching to the fallback model",
                         model=params["model"], fallback=settings.fallback_model)
            params["model"] = settings.fallback_model
            overloads = 0
        if attempt >= settings.max_retries:
            raise AgentError(
                f"The Messages API at {where} failed {attempt + 1} times in a row; last: "
                f"{failure.error_type or 'error'} {failure.status or ''} {failure.message}. "
                "Check the API status and retry the task (brctl retry TASK).",
                data={"status": failure.status, "type": failure.error_type},
            ) from error
        delay = backoff_s(attempt, base_s=settings.backoff_base_s, max_s=settings.backoff_max_s,
                          retry_after=failure.retry_after_s, rng=settings.rng)
        await emit("agent.retry", {"attempt": attempt + 1, "status": failure.status,
                                   "error": failure.error_type, "delay_s": round(delay, 3)})
        attempt += 1
        await anyio.sleep(delay)
