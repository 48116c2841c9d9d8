"""JSON-RPC 2.0 clients of the daemon's Unix socket, one JSON value a line, as any client of
the contract speaks it: :class:`RpcClient` (async) and :class:`RpcConnection` (blocking), and
the waits built on ``events.subscribe``.

Nothing here imports the project: the contract tests see BuildRunner only from outside.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

__all__ = [
    "CALL_TIMEOUT_S", "TERMINAL_EVENTS", "RpcClient", "RpcConnection", "RpcError", "all_events",
    "is_notification", "rpc", "wait_run_event",
]

CALL_TIMEOUT_S = 30.0
TERMINAL_EVENTS = ("run.succeeded", "run.failed", "run.cancelled")


class RpcError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code: int = error.get("code", 0)
        self.message: str = error.get("message", "")
        self.data: Any = error.get("data")


def is_notification(frame: Any) -> bool:
    return isinstance(frame, dict) and "method" in frame and "id" not in frame


class RpcClient:
    """An async JSON-RPC 2.0 client over a raw Unix socket (newline-delimited frames).

    Notifications that arrive while waiting for a reply (``event``) are kept in
    :attr:`notifications`, in order.
    """

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""
        self._ids = itertools.count(1)
        self.notifications: list[dict[str, Any]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, socket_path: Path) -> AsyncIterator[RpcClient]:
        stream = await anyio.connect_unix(socket_path)
        async with stream:
            yield cls(stream)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def read_frame(self, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """The next frame (any kind), decoded. Raises EOFError when the daemon closed."""
        with anyio.fail_after(timeout_s):
            while b"\n" not in self._buffer:
                try:
                    chunk = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                    raise EOFError("connection closed by the daemon") from exc
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def call(self, method: str, timeout_s: float = CALL_TIMEOUT_S, **params: Any) -> Any:
        """Call ``method`` and return its result (raises RpcError for an error reply)."""
        request_id = next(self._ids)
        frame = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        await self.stream.send(json.dumps(frame).encode() + b"\n")
        while True:
            reply = await self.read_frame(timeout_s)
            if is_notification(reply):
                self.notifications.append(reply)
                continue
            assert reply.get("id") == request_id, reply
            if reply.get("error") is not None:
                raise RpcError(reply["error"])
            return reply["result"]

    async def next_notification(self, timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        if self.notifications:
            return self.notifications.pop(0)
        frame: dict[str, Any] = await self.read_frame(timeout_s)
        assert "id" not in frame, frame
        return frame


class RpcConnection:
    """A blocking JSON-RPC connection: one JSON value per ``\\n``-terminated line.

    Notifications that arrive while waiting for a reply are kept in :attr:`notifications`.
    """

    def __init__(self, path: Path, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout_s)
            self.sock.connect(str(path))
        except BaseException:
            self.sock.close()
            raise
        self._buffer = b""
        self._next_id = 0
        self.notifications: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RpcConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_line(self, data: bytes) -> None:
        self.sock.sendall(data + b"\n")

    def send_json(self, value: Any) -> None:
        self.send_line(json.dumps(value).encode())

    def read_frame(self) -> Any:
        """The next line from the daemon, decoded; EOFError when it closed the connection."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def at_eof(self) -> bool:
        """True when the daemon closed the connection (nothing more to read)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self._buffer += chunk
        except ConnectionResetError:
            return True

    def request(self, method: str, params: Any = None) -> dict[str, Any]:
        """Send one request and return the whole reply object (result or error)."""
        self._next_id += 1
        frame: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            frame["params"] = params
        self.send_json(frame)
        while True:
            reply: dict[str, Any] = self.read_frame()
            if is_notification(reply):
                self.notifications.append(reply)  # an event of a subscription
                continue
            assert reply.get("id") == self._next_id, reply
            return reply


def rpc(path: Path, method: str, **params: Any) -> Any:
    """Call ``method`` on a fresh blocking connection; its result (an error reply fails)."""
    with RpcConnection(path) as conn:
        reply = conn.request(method, params)
    assert "error" not in reply, reply
    return reply["result"]


async def wait_run_event(
    socket_path: Path, run_id: str, types: tuple[str, ...] = TERMINAL_EVENTS,
    *, since: int = 0, timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Subscribe to a run's events (replay from ``since``, then live) and return the first
    event whose type is in ``types``."""
    async with RpcClient.connect(socket_path) as watcher:
        await watcher.call("events.subscribe", run_id=run_id, since=since)
        with anyio.fail_after(timeout_s):
            while True:
                note = await watcher.next_notification(timeout_s)
                event: dict[str, Any] = note["params"]
                if event["type"] in types:
                    return event


async def all_events(client: RpcClient, run_id: str, page_size: int = 1000
                     ) -> list[dict[str, Any]]:
    """Every stored event of a run, page by page (``events.list``)."""
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        page = await client.call("events.list", run_id=run_id, since=since, limit=page_size)
        events += page
        if len(page) < page_size:
            return events
        since = page[-1]["id"]
