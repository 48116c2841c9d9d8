"""A small real dispatcher and raw-socket client for the RPC server tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import SocketStream

from buildrunnerd import protocol
from buildrunnerd.errors import NotFoundError
from buildrunnerd.rpc import Connection, Dispatcher, RpcServer


class EchoParams(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    times: int = 1


def make_dispatcher(subscribers: list[Connection] | None = None) -> Dispatcher:
    """Real handlers of the kinds the daemon registers: echo, validation, errors, subscribe."""
    dispatcher = Dispatcher()

    async def echo(params: dict[str, Any], conn: Connection) -> Any:
        return params

    async def repeat(params: dict[str, Any], conn: Connection) -> Any:
        p = msgspec.convert(params, EchoParams)
        return {"text": p.text * p.times}

    async def sleep(params: dict[str, Any], conn: Connection) -> Any:
        await anyio.sleep(float(params.get("s", 0.05)))
        return "slept"

    async def missing(params: dict[str, Any], conn: Connection) -> Any:
        raise NotFoundError(f"run {params.get('run_id')} not found",
                            data={"kind": "run", "id": params.get("run_id")})

    async def crash(params: dict[str, Any], conn: Connection) -> Any:
        raise RuntimeError("boom: the handler has a bug")

    async def unencodable(params: dict[str, Any], conn: Connection) -> Any:
        return {"x": object()}

    async def event(params: dict[str, Any], conn: Connection) -> Any:
        return protocol.Event(id=7, ts="2026-01-01T00:00:00Z", run_id="r1", type="run.started")

    async def subscribe(params: dict[str, Any], conn: Connection) -> Any:
        for i in range(int(params.get("replay", 0))):
            conn.notify("event", {"id": i})
        if subscribers is not None:
            subscribers.append(conn)
        return {"subscribed": True}

    async def whoami(params: dict[str, Any], conn: Connection) -> Any:
        return {"uid": conn.peer_uid}

    for name, handler in {
        "echo": echo, "repeat": repeat, "sleep": sleep, "missing": missing, "crash": crash,
        "unencodable": unencodable, "event": event, "subscribe": subscribe, "whoami": whoami,
    }.items():
        dispatcher.register(name, handler)
    return dispatcher


@asynccontextmanager
async def running_server(
    socket_path: Path, dispatcher: Dispatcher | None = None, **options: Any
) -> AsyncIterator[RpcServer]:
    server = RpcServer(socket_path, dispatcher or make_dispatcher(), **options)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        yield server
        tg.cancel_scope.cancel()


class RawClient:
    """Line-oriented client on a real socket: send raw bytes, read one reply line."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._buffer = b""

    @classmethod
    @asynccontextmanager
    async def connect(cls, path: Path) -> AsyncIterator[RawClient]:
        stream = await anyio.connect_unix(path)
        async with stream:
            yield cls(stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def line(self, timeout_s: float = 10.0) -> bytes | None:
        """The next line, or None at end of stream."""
        with anyio.fail_after(timeout_s):
            while b"\n" not in self._buffer:
                try:
                    self._buffer += await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def reply(self, timeout_s: float = 10.0) -> Any:
        line = await self.line(timeout_s)
        assert line is not None, "connection closed before a reply"
        return json.loads(line)

    async def call(self, method: str, params: Any = None, request_id: Any = 1) -> Any:
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = params
        await self.send(json.dumps(request).encode() + b"\n")
        return await self.reply()
