"""A fake Anthropic Messages API on 127.0.0.1: the outer edge of the agent tests.

It speaks the real wire format so the real ``anthropic`` SDK talks to it unchanged:

* ``POST /v1/messages`` answered as JSON, or as a server-sent-event stream when the body has
  ``"stream": true`` (``message_start``, ``content_block_start`` / ``_delta`` / ``_stop`` with
  ``text_delta``, ``input_json_delta``, ``thinking_delta``, ``signature_delta``,
  ``message_delta`` carrying ``usage`` and ``stop_reason``, ``message_stop``, ``ping``, and
  ``error`` events), chunked transfer encoding, keep-alive;
* error bodies ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the
  ``request-id``, ``retry-after`` and ``anthropic-ratelimit-*`` headers;
* ``x-api-key`` or ``authorization: Bearer`` (SDK 2.x sends the latter);
* ``POST /v1/messages/count_tokens`` (free: not billed, not in ``requests``, counted in
  ``count_tokens_calls``), which the daemon's pre-flight check calls.

A test scripts it with a *responder*: a list of replies, or a function of the request. Faults
(429 with ``retry-after``, 529, 500, a dropped connection, a timeout, an overload in the middle
of a stream, and when named in a sequence an event that is not JSON) are injected at a seeded
rate before the responder is asked, so a retried request gets the same scripted answer. Every
request is recorded, and so is the ``usage`` of every response that was delivered in full (what
the API would bill).

Usage is computed from the request, with a prompt cache that behaves like the real one: the
prefix up to each ``cache_control`` breakpoint is written; a later request whose prefix (tools,
system, messages, up to any block boundary) matches a written one reads it.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FakeAnthropic",
    "FakeRequest",
    "Reply",
    "ErrorReply",
    "Faults",
    "Billed",
    "text",
    "tool_use",
    "thinking",
    "redacted_thinking",
    "agent_script",
    "count_tokens",
    "API_KEY",
    "OAUTH_TOKEN",
    "usage_limit",
]

API_KEY = "sk-ant-test-fake-key-0123456789"
OAUTH_TOKEN = "sk-ant-oat01-test-fake-subscription-token"


# --- content block helpers -----------------------------------------------------------------
def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def tool_use(name: str, input: dict[str, Any], id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{uuid.uuid4().hex[:20]}", "name": name,
            "input": input}


def thinking(s: str, signature: str | None = None) -> dict[str, Any]:
    sig = signature or hashlib.sha256(s.encode()).hexdigest()
    return {"type": "thinking", "thinking": s, "signature": sig}


def redacted_thinking(data: str) -> dict[str, Any]:
    return {"type": "redacted_thinking", "data": data}


@dataclass
class Reply:
    """A successful message. ``usage`` overrides the computed one field by field."""

    content: list[dict[str, Any]]
    stop_reason: str = "end_turn"
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None  # default: the requested model
    stream_error: dict[str, str] | None = None  # send this ``error`` event mid-stream instead


@dataclass
class ErrorReply:
    status: int
    type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] | None = None


@dataclass
class FakeRequest:
    index: int  # 0-based over every request that reached the server
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    arrived_s: float  # time.monotonic() on arrival
    outcome: str = ""  # "ok", "fault:<kind>", "error:<status>"
    method: str = "POST"
    path: str = "/v1/messages"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def assistant_turns(self) -> int:
        return sum(1 for m in self.messages if m.get("role") == "assistant")

    def first_user_text(self) -> str:
        for m in self.messages:
            if m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, str):
                    return c
                return "".join(b.get("text", "") for b in c or [] if b.get("type") == "text")
        return ""


@dataclass
class Billed:
    request_index: int
    model: str
    usage: dict[str, int]
    request_id: str


@dataclass
class Faults:
    """Fault injection: each request fails with probability ``rate`` (seeded), with a kind
    drawn from ``kinds``. ``sequence`` forces the first faults in order (then ``rate``)."""

    rate: float = 0.0
    seed: int = 0
    # (``stream_garbled``, an event that is not JSON, only when named in ``sequence``.)
    kinds: Sequence[str] = ("429", "529", "500", "drop", "timeout", "stream_overload",
                            "stream_drop")
    sequence: list[str] = field(default_factory=list)
    retry_after: str = "0"  # value of the retry-after header on injected 429s
    timeout_s: float = 1.5  # how long a "timeout" fault holds the connection before closing


Responder = Callable[[FakeRequest], Reply | ErrorReply]


def agent_script(steps_by_key: dict[str, list[Reply]], key: Callable[[FakeRequest], str]
                 ) -> Responder:
    """A responder for conversations: answer with step ``n`` where ``n`` is the number of
    assistant turns already in the request, from the script chosen by ``key(request)``.

    Deterministic under retries and concurrency: a retried or resumed conversation gets the
    same step again, and parallel conversations each follow their own script."""

    def respond(req: FakeRequest) -> Reply | ErrorReply:
        steps = steps_by_key[key(req)]
        n = req.assistant_turns()
        if n >= len(steps):
            return Reply([text("(script exhausted)")], "end_turn")
        return steps[n]

    return respond


def usage_limit(resets_at: float, claim: str = "five_hour") -> ErrorReply:
    """A subscription's usage limit as the API reports it: 429 with the unified rate-limit
    headers (status ``rejected`` and the reset time in unix seconds)."""
    return ErrorReply(429, "rate_limit_error", "You have reached your usage limit", {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": str(int(resets_at)),
        "anthropic-ratelimit-unified-representative-claim": claim,
        f"anthropic-ratelimit-unified-{claim.replace('_', '-')}-status": "rejected",
        f"anthropic-ratelimit-unified-{claim.replace('_', '-')}-reset": str(int(resets_at)),
        "retry-after": str(max(0, int(resets_at - time.time()))),
    })


def count_tokens(value: Any) -> int:
    """The fake's tokenizer: about four characters of JSON per token, at least one."""
    return max(1, len(json.dumps(value, sort_keys=True, separators=(",", ":"))) // 4)


def _strip_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_cache_control(v) for v in value]
    return value


def _segments(body: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """The request as the cache sees it: (block, has a breakpoint), tools then system then
    messages, one entry per block."""
    for tool in body.get("tools", []) or []:
        yield tool, "cache_control" in tool
    system = body.get("system")
    if isinstance(system, str):
        yield {"type": "text", "text": system}, False
    elif isinstance(system, list):
        for block in system:
            yield block, "cache_control" in block
    for msg in body.get("messages", []):
        content = msg.get("content")
        if isinstance(content, str):
            yield {"role": msg["role"], "text": content}, False
            continue
        for i, block in enumerate(content):
            # The role belongs to the prefix: the same block as user or assistant differs.
            yield {"role": msg["role"], "i": i, "block": block}, "cache_control" in block


class _Cache:
    def __init__(self) -> None:
        self._written: set[str] = set()
        self._lock = threading.Lock()

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        model = str(body.get("model"))
        h = hashlib.sha256(model.encode())
        boundaries: list[tuple[str, int, bool]] = []  # (prefix hash, tokens so far, breakpoint)
        total = 0
        for block, breakpoint in _segments(body):
            clean = _strip_cache_control(block)
            h.update(json.dumps(clean, sort_keys=True).encode())
            total += count_tokens(clean)
            boundaries.append((h.hexdigest(), total, breakpoint))
        last_bp = max((i for i, b in enumerate(boundaries) if b[2]), default=-1)
        with self._lock:
            read = 0
            for i in range(last_bp, -1, -1):
                if boundaries[i][0] in self._written:
                    read = boundaries[i][1]
                    break
            cached_to = boundaries[last_bp][1] if last_bp >= 0 else 0
            for digest, _, bp in boundaries:
                if bp:
                    self._written.add(digest)
        creation = max(0, cached_to - read)
        return {
            "input_tokens": total - cached_to,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
        }


class FakeAnthropic:
    """The server. Use as a context manager (or ``start()``/``stop()``); ``base_url`` is what
    the SDK needs (``ANTHROPIC_BASE_URL``)."""

    def __init__(
        self,
        responder: Responder | Sequence[Reply | ErrorReply] | None = None,
        *,
        faults: Faults | None = None,
        latency_s: float = 0.0,
        api_key: str = API_KEY,
        oauth_token: str = OAUTH_TOKEN,
        ratelimit_headers: bool = True,
    ) -> None:
        self.api_key = api_key
        # A subscription login (``CLAUDE_CODE_OAUTH_TOKEN``) is accepted like a key.
        self.oauth_token = oauth_token
        self.latency_s = latency_s
        self.faults = faults or Faults()
        self.ratelimit_headers = ratelimit_headers
        self.requests: list[FakeRequest] = []
        self.count_tokens_calls = 0  # POST /v1/messages/count_tokens (free, not in requests)
        self.billed: list[Billed] = []
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._scripted: list[Reply | ErrorReply] = []
        self._responder: Responder = self._next_scripted
        self.set_responder(responder)
        self._cache = _Cache()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- scripting ---
    def set_responder(self, responder: Responder | Sequence[Reply | ErrorReply] | None) -> None:
        if responder is None:
            self._scripted = []
            self._responder = self._next_scripted
        elif callable(responder):
            self._responder = responder
        else:
            self._scripted = list(responder)
            self._responder = self._next_scripted

    def _next_scripted(self, req: FakeRequest) -> Reply | ErrorReply:
        with self._lock:
            if not self._scripted:
                return ErrorReply(500, "api_error", "fake server: script exhausted")
            return self._scripted.pop(0)

    # --- lifecycle ---
    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeAnthropic:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-anthropic",
                                         kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what happened ---
    def billed_totals(self) -> dict[str, int]:
        keys = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens")
        with self._lock:
            return {k: sum(b.usage.get(k, 0) for b in self.billed) for k in keys}

    def ok_requests(self) -> list[FakeRequest]:
        return [r for r in self.requests if r.outcome == "ok"]

    # --- internals used by the handler ---
    def _record(self, headers: dict[str, str], raw: bytes, *, method: str = "POST",
                path: str = "/v1/messages") -> FakeRequest:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        with self._lock:
            req = FakeRequest(len(self.requests), headers, body, raw, time.monotonic(),
                              method=method, path=path)
            self.requests.append(req)
            return req

    def _draw_fault(self) -> str | None:
        with self._lock:
            if self.faults.sequence:
                return self.faults.sequence.pop(0)
            if self.faults.rate and self._rng.random() < self.faults.rate:
                return self._rng.choice(list(self.faults.kinds))
        return None

    def _usage_for(self, req: FakeRequest, reply: Reply) -> dict[str, int]:
        usage = self._cache.usage(req.body)
        usage["output_tokens"] = count_tokens(reply.content)
        usage.update(reply.usage)
        return usage

    def _bill(self, req: FakeRequest, model: str, usage: dict[str, int], request_id: str
              ) -> Billed:
        # Billed before the last byte goes out, so a client that has its answer always finds
        # it billed here; taken back if the write fails (the client never got it).
        billed = Billed(req.index, model, dict(usage), request_id)
        with self._lock:
            self.billed.append(billed)
        return billed

    def _unbill(self, billed: Billed) -> None:
        with self._lock:
            self.billed.remove(billed)


def _ratelimit_headers() -> dict[str, str]:
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    return {
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "3999",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-limit": "400000",
        "anthropic-ratelimit-tokens-remaining": "399000",
        "anthropic-ratelimit-tokens-reset": reset,
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _stream_events(message: dict[str, Any], reply: Reply) -> Iterator[tuple[str, dict[str, Any]]]:
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None, stop_sequence=None,
                 usage=dict(usage, output_tokens=1))
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for i, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": {"type": "text", "text": ""}}
            s = block["text"]
            for part in [s[j:j + 16] for j in range(0, len(s), 16)] or [""]:
                yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                              "delta": {"type": "text_delta", "text": part}}
        elif kind == "thinking":
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": {"type": "thinking", "thinking": "",
                                                            "signature": ""}}
            s = block["thinking"]
            for part in [s[j:j + 16] for j in range(0, len(s), 16)]:
                yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                              "delta": {"type": "thinking_delta",
                                                        "thinking": part}}
            yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                          "delta": {"type": "signature_delta",
                                                    "signature": block["signature"]}}
        elif kind == "tool_use":
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": dict(block, input={})}
            s = json.dumps(block["input"])
            if message["stop_reason"] == "max_tokens" and i == len(message["content"]) - 1:
                s = s[: len(s) // 2]  # the output limit cut this call short, as the API does
            for part in [s[j:j + 24] for j in range(0, len(s), 24)]:
                yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                              "delta": {"type": "input_json_delta",
                                                        "partial_json": part}}
        else:  # redacted_thinking and anything else arrive whole in the start event
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": block}
        yield "content_block_stop", {"type": "content_block_stop", "index": i}
        if reply.stream_error is not None and i == 0:
            yield "error", {"type": "error", "error": reply.stream_error}
            return
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": message["stop_reason"],
                                      "stop_sequence": None},
                            "usage": {"output_tokens": usage["output_tokens"]}}
    yield "message_stop", {"type": "message_stop"}


def _make_handler(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            # Many small writes (SSE events): without this, Nagle's algorithm and delayed ACKs
            # add ~40 ms to every response, which the real API does not.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send_json(self, status: int, payload: dict[str, Any],
                       headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def _send_error(self, err: ErrorReply, request_id: str) -> None:
            error: dict[str, Any] = {"type": err.type, "message": err.message}
            if err.details is not None:
                error["details"] = err.details
            headers = {"request-id": request_id, **err.headers}
            self._send_json(err.status, {"type": "error", "error": error,
                                         "request_id": request_id}, headers)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _count_tokens(self, headers: dict[str, str], raw: bytes, request_id: str) -> None:
            # Free and unbilled, as on the real API; kept apart from `requests` (those are the
            # billed conversation), counted in `count_tokens_calls`.
            with fake._lock:
                fake.count_tokens_calls += 1
            key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix(
                "Bearer ")
            if key not in (fake.api_key, fake.oauth_token):
                self._send_error(ErrorReply(401, "authentication_error", "invalid x-api-key"),
                                 request_id)
                return
            body = json.loads(raw or b"{}")
            self._send_json(200, {"input_tokens": count_tokens(body.get("messages"))},
                            {"request-id": request_id})

        def _other(self) -> None:
            # Whatever else a client sends (the Claude Code CLI's HEAD/GET preflights, routes
            # this fake does not know): recorded with its method and path, answered 404, so
            # a test can see what was asked.
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = fake._record(headers, raw, method=self.command, path=self.path)
            req.outcome = "error:404"
            if self.command == "HEAD":
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            self._send_error(ErrorReply(404, "not_found_error", f"no route {self.path}"),
                             f"req_{uuid.uuid4().hex[:24]}")

        do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = _other  # noqa: N815

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            request_id = f"req_{uuid.uuid4().hex[:24]}"
            if self.path.split("?")[0] == "/v1/messages/count_tokens":
                self._count_tokens(headers, raw, request_id)
                return
            req = fake._record(headers, raw, method="POST", path=self.path)
            if self.path.split("?")[0] != "/v1/messages":
                req.outcome = "error:404"
                self._send_error(ErrorReply(404, "not_found_error", f"no route {self.path}"),
                                 request_id)
                return
            key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix(
                "Bearer ")
            if key not in (fake.api_key, fake.oauth_token):
                req.outcome = "error:401"
                self._send_error(ErrorReply(401, "authentication_error", "invalid x-api-key"),
                                 request_id)
                return
            if fake.latency_s:
                time.sleep(fake.latency_s)
            fault = fake._draw_fault()
            if fault is not None:
                req.outcome = f"fault:{fault}"
                if fault == "429":
                    self._send_error(ErrorReply(
                        429, "rate_limit_error", "Number of request tokens has exceeded your "
                        "per-minute rate limit", {"retry-after": fake.faults.retry_after,
                                                  "anthropic-ratelimit-requests-remaining": "0"}),
                        request_id)
                    return
                if fault == "529":
                    self._send_error(ErrorReply(529, "overloaded_error", "Overloaded"),
                                     request_id)
                    return
                if fault == "500":
                    self._send_error(ErrorReply(500, "api_error", "Internal server error"),
                                     request_id)
                    return
                if fault == "drop":
                    self._drop()
                    return
                if fault == "timeout":
                    time.sleep(fake.faults.timeout_s)
                    self._drop()
                    return
                if fault not in ("stream_overload", "stream_drop", "stream_garbled") or (
                        not req.stream):
                    # a mid-stream overload needs a stream; elsewhere it is a plain 529
                    self._send_error(ErrorReply(529, "overloaded_error", "Overloaded"),
                                     request_id)
                    return
            reply = fake._responder(req)
            stream_drop = fault == "stream_drop"
            if fault == "stream_overload" and isinstance(reply, Reply):
                reply = Reply(reply.content, reply.stop_reason, reply.usage, reply.model,
                              {"type": "overloaded_error", "message": "Overloaded"})
            if isinstance(reply, ErrorReply):
                req.outcome = f"error:{reply.status}"
                self._send_error(reply, request_id)
                return
            model = reply.model or str(req.body.get("model"))
            usage = fake._usage_for(req, reply)
            message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message",
                       "role": "assistant", "model": model, "content": reply.content,
                       "stop_reason": reply.stop_reason, "stop_sequence": None, "usage": usage}
            headers_out = {"request-id": request_id}
            if fake.ratelimit_headers:
                headers_out.update(_ratelimit_headers())
            if not req.stream:
                req.outcome = "ok"
                whole = fake._bill(req, model, usage, request_id)
                try:
                    self._send_json(200, message, headers_out)
                except OSError:
                    req.outcome = "client-gone"
                    fake._unbill(whole)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            for k, v in headers_out.items():
                self.send_header(k, v)
            self.end_headers()
            billed: Billed | None = None
            delivered = False
            try:
                for event, data in _stream_events(message, reply):
                    if fault == "stream_garbled" and event == "content_block_delta":
                        # an event cut short on the way (a broken proxy): not JSON
                        req.outcome = "fault:stream_garbled"
                        self._chunk(f"event: {event}\ndata: {json.dumps(data)[:20]}\n\n"
                                    .encode())
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                        return
                    if stream_drop and event == "content_block_stop":
                        # the connection breaks in the middle of the answer
                        req.outcome = "fault:stream_drop"
                        self._drop()
                        return
                    if event == "message_stop":
                        req.outcome = "ok"
                        billed = fake._bill(req, model, usage, request_id)
                    self._chunk(_sse(event, data))
                    delivered = billed is not None
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                if billed is not None and not delivered:
                    req.outcome = "client-gone"
                    fake._unbill(billed)
                return
            if reply.stream_error is not None:
                req.outcome = "fault:stream_overload"

    return Handler
