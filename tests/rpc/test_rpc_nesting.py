"""Deeply nested JSON on the socket: a parse error (-32700), never a dropped connection."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from buildrunnerd import protocol
from buildrunnerd.rpc._codec import MAX_JSON_DEPTH, decode
from tests.conftest import DaemonFactory, RpcClient

from ._helpers import RawClient, running_server

DEPTH = 100_000
ARRAYS = b"[" * DEPTH + b"]" * DEPTH
OBJECTS = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
# A request whose params nest deeply: valid JSON-RPC on its face, hostile inside.
DEEP_PARAMS = (b'{"jsonrpc":"2.0","id":5,"method":"echo","params":{"x":'
               + ARRAYS + b"}}")


def nested(depth: int) -> bytes:
    """A request whose whole frame nests exactly ``depth`` levels."""
    inner = b"[" * (depth - 2) + b"]" * (depth - 2)
    return b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"x":' + inner + b"}}"


def test_depth_limit_is_exact() -> None:
    assert decode(nested(MAX_JSON_DEPTH))["params"]["x"] is not None
    with pytest.raises(msgspec.DecodeError, match=f"deeper than {MAX_JSON_DEPTH}"):
        decode(nested(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize("frame", [ARRAYS, OBJECTS, DEEP_PARAMS],
                         ids=["arrays", "objects", "params"])
async def test_deep_frame_gets_a_parse_error_and_the_connection_stays_usable(
    tmp_path: Path, frame: bytes
) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock), RawClient.connect(sock) as bystander:
        async with RawClient.connect(sock) as client:
            await client.send(frame + b"\n")
            reply = await client.reply()
            assert reply["id"] is None
            assert reply["error"]["code"] == protocol.PARSE_ERROR
            assert "nested deeper than" in reply["error"]["data"]["reason"]
            # The same connection keeps working.
            assert (await client.call("echo", {"after": "deep"}))["result"] == {"after": "deep"}
        assert (await bystander.call("echo", {"still": "up"}))["result"] == {"still": "up"}


async def test_deep_frames_against_the_real_daemon(daemon_factory: DaemonFactory) -> None:
    daemon = await daemon_factory.start()
    async with RpcClient.connect(daemon.socket) as client:
        for frame in (ARRAYS, OBJECTS, DEEP_PARAMS, b"[" + ARRAYS + b"]"):
            await client.send_raw(frame + b"\n")
            reply = await client.read_frame()
            assert reply["error"]["code"] == protocol.PARSE_ERROR, json.dumps(reply)[:300]
        ping = await client.call("daemon.ping")
        assert ping["pid"] == daemon.pid
    assert daemon.proc.poll() is None
    assert "RecursionError" not in daemon.stderr()
