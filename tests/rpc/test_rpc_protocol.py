"""JSON-RPC 2.0 semantics over a real Unix socket: requests, notifications, batches, errors."""

from __future__ import annotations

import json
from pathlib import Path

from buildrunnerd import protocol

from ._helpers import RawClient, running_server


async def test_request_result_and_ids_round_trip(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock), RawClient.connect(sock) as client:
        reply = await client.call("echo", {"a": [1, 2], "b": "x"}, request_id="req-1")
        assert reply == {"jsonrpc": "2.0", "id": "req-1", "result": {"a": [1, 2], "b": "x"}}
        reply = await client.call("event", request_id=42)
        assert reply["id"] == 42
        # A msgspec Struct result is encoded field by field.
        assert reply["result"]["id"] == 7
        assert reply["result"]["ts"] == "2026-01-01T00:00:00Z"
        assert reply["result"]["run_id"] == "r1" and reply["result"]["type"] == "run.started"
        # No params at all is an empty params object, not an error.
        assert (await client.call("echo"))["result"] == {}


async def test_notification_gets_no_reply(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock), RawClient.connect(sock) as client:
        await client.send(b'{"jsonrpc":"2.0","method":"echo","params":{"n":1}}\n')
        await client.send(b'{"jsonrpc":"2.0","method":"no.such.method"}\n')
        reply = await client.call("echo", {"n": 2}, request_id=5)
        # The first line back answers the request: the notifications produced nothing.
        assert reply == {"jsonrpc": "2.0", "id": 5, "result": {"n": 2}}


async def test_batch_replies_in_one_array_without_notifications(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"k": 1}},
        {"jsonrpc": "2.0", "method": "echo", "params": {"k": "notified"}},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "id": 3, "method": "missing", "params": {"run_id": "r9"}},
    ]
    async with running_server(sock), RawClient.connect(sock) as client:
        await client.send(json.dumps(batch).encode() + b"\n")
        replies = await client.reply()
        assert isinstance(replies, list)
        assert [r["id"] for r in replies] == [1, 2, None, 3]
        assert replies[0]["result"] == {"k": 1}
        assert replies[1]["error"]["code"] == protocol.METHOD_NOT_FOUND
        assert replies[2]["error"]["code"] == protocol.INVALID_REQUEST
        assert replies[3]["error"] == {
            "code": protocol.NOT_FOUND, "message": "run r9 not found",
            "data": {"kind": "run", "id": "r9"},
        }


async def test_all_notification_batch_gets_nothing_and_empty_batch_is_invalid(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock), RawClient.connect(sock) as client:
        await client.send(b'[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"x"}]\n')
        await client.send(b"[]\n")
        reply = await client.reply()
        assert reply["id"] is None
        assert reply["error"]["code"] == protocol.INVALID_REQUEST
        assert "empty batch" in reply["error"]["message"]


async def test_standard_errors_carry_useful_data(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock), RawClient.connect(sock) as client:
        await client.send(b'{"jsonrpc":"2.0","id":1,"method":"echo",\n')
        parse = await client.reply()
        assert parse["id"] is None
        assert parse["error"]["code"] == protocol.PARSE_ERROR
        assert parse["error"]["data"]["reason"]

        await client.send(b'"just a string"\n')
        assert (await client.reply())["error"]["code"] == protocol.INVALID_REQUEST

        await client.send(b'{"jsonrpc":"1.0","id":9,"method":"echo"}\n')
        wrong_version = await client.reply()
        assert wrong_version["id"] == 9
        assert wrong_version["error"]["code"] == protocol.INVALID_REQUEST

        await client.send(b'{"jsonrpc":"2.0","id":{"no":1},"method":"echo"}\n')
        assert (await client.reply())["error"]["code"] == protocol.INVALID_REQUEST

        unknown = await client.call("run.explode")
        assert unknown["error"]["code"] == protocol.METHOD_NOT_FOUND
        assert unknown["error"]["data"]["method"] == "run.explode"
        assert "echo" in unknown["error"]["data"]["available"]

        positional = await client.call("echo", [1, 2])
        assert positional["error"]["code"] == protocol.INVALID_PARAMS

        invalid = await client.call("repeat", {"text": "a", "times": "three"})
        assert invalid["error"]["code"] == protocol.INVALID_PARAMS
        assert "times" in invalid["error"]["message"]
        assert (await client.call("repeat", {"text": "ab", "times": 2}))["result"] == {
            "text": "abab"
        }

        # Non-UTF-8 bytes are a parse error too, and the connection keeps working.
        await client.send(b"\xff\xfe{}\n")
        assert (await client.reply())["error"]["code"] == protocol.PARSE_ERROR
        assert (await client.call("echo", {"still": "alive"}))["result"] == {"still": "alive"}


async def test_handler_bugs_become_internal_errors_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock):
        async with RawClient.connect(sock) as client:
            crash = await client.call("crash")
            assert crash["error"]["code"] == protocol.INTERNAL_ERROR
            assert "boom" in crash["error"]["message"]
            assert crash["error"]["data"]["type"] == "RuntimeError"
            bad_result = await client.call("unencodable", request_id=2)
            assert bad_result["id"] == 2
            assert bad_result["error"]["code"] == protocol.INTERNAL_ERROR
            assert (await client.call("echo", {"after": "crash"}))["result"] == {"after": "crash"}
        async with RawClient.connect(sock) as other:
            assert (await other.call("echo", {"ok": True}))["result"] == {"ok": True}
