"""The control socket itself: permissions, stale sockets, limits, slow clients, other uids."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from buildrunnerd import protocol
from buildrunnerd.rpc import Connection, RpcServer, SocketInUseError

from ._helpers import RawClient, make_dispatcher, running_server


async def test_socket_folder_0700_socket_0600_removed_on_exit(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "buildrunner" / "d.sock"
    async with running_server(sock):
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        async with RawClient.connect(sock) as client:
            assert (await client.call("whoami"))["result"] == {"uid": os.getuid()}
    assert not sock.exists()


async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    # What a crashed daemon leaves behind: a bound socket file nobody listens on.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()
    assert stat.S_ISSOCK(sock.stat().st_mode)
    async with running_server(sock), RawClient.connect(sock) as client:
        assert (await client.call("echo", {"fresh": 1}))["result"] == {"fresh": 1}


async def test_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock):
        second = RpcServer(sock, make_dispatcher())
        with pytest.raises(SocketInUseError, match="already listening"):
            await second.serve()
        # The first server is untouched and still answers.
        async with RawClient.connect(sock) as client:
            assert (await client.call("echo", {"first": True}))["result"] == {"first": True}


async def test_a_regular_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    path.write_text("not a socket")
    with pytest.raises(SocketInUseError, match="not a socket"):
        await RpcServer(path, make_dispatcher()).serve()
    assert path.read_text() == "not a socket"


async def test_oversize_frame_is_refused_and_only_that_connection_closed(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock, max_frame_bytes=1024), RawClient.connect(sock) as bystander:
        async with RawClient.connect(sock) as client:
            # Exactly at the limit is fine.
            request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "echo",
                                       "params": {"p": ""}}
            request["params"]["p"] = "x" * (1024 - len(json.dumps(request)))
            frame = json.dumps(request).encode()
            assert len(frame) == 1024
            await client.send(frame + b"\n")
            assert (await client.reply())["id"] == 1
            # One byte more, sent without a newline: refused as soon as it is known too big.
            await client.send(b"{" + b" " * 2000)
            reply = await client.reply()
            assert reply["error"]["code"] == protocol.FRAME_TOO_LARGE
            assert reply["error"]["data"] == {"limit_bytes": 1024}
            assert await client.line() is None  # then closed
        assert (await bystander.call("echo", {"still": "up"}))["result"] == {"still": "up"}


async def test_silent_client_is_closed_after_idle_timeout_but_subscriber_is_not(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "d.sock"
    async with running_server(sock, idle_timeout_s=0.2) as server:
        async with RawClient.connect(sock) as silent, RawClient.connect(sock) as subscriber:
            reply = await subscriber.call("subscribe", {"replay": 1})
            # The replayed notification may come before the response.
            lines = [reply, await subscriber.reply()]
            assert {"jsonrpc": "2.0", "method": "event", "params": {"id": 0}} in lines
            assert await silent.line(timeout_s=10) is None
            with anyio.move_on_after(0.6):
                await subscriber.line()
                pytest.fail("the subscriber got something after its replay")
            assert len(server.connections) == 1
            assert (await subscriber.call("echo", {"alive": 1}, 3))["result"] == {"alive": 1}


async def _fill_until_dropped(conn: Connection, payload: dict[str, str]) -> int:
    sent = 0
    with anyio.fail_after(30):
        while conn.notify("event", payload):
            sent += 1
            # Let the writer run, as the daemon's event fan-out does between events.
            await anyio.lowlevel.checkpoint()
        await conn.closed.wait()
    return sent


async def test_subscriber_that_stops_reading_is_dropped_without_stalling_others(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "d.sock"
    subscribers: list[Connection] = []
    options = {"queue_size": 8, "write_timeout_s": 60.0}
    async with running_server(sock, make_dispatcher(subscribers), **options) as server:
        async with RawClient.connect(sock) as stuck, RawClient.connect(sock) as other:
            await stuck.call("subscribe")
            conn = subscribers[0]
            # Queue notifications until the kernel buffer and then the bounded queue fill up:
            # the stuck client never reads, so the connection must be dropped, not buffered.
            sent = await _fill_until_dropped(conn, {"blob": "y" * 50_000})
            assert sent >= 8
            assert conn.close_reason is not None and "queue full" in conn.close_reason
            assert conn.notify("event", {}) is False
            assert (await other.call("echo", {"other": "fine"}))["result"] == {"other": "fine"}
            assert conn not in server.connections


async def test_client_that_does_not_read_is_dropped_after_write_timeout(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    subscribers: list[Connection] = []
    options = {"queue_size": 100_000, "write_timeout_s": 0.3}
    async with running_server(sock, make_dispatcher(subscribers), **options):
        async with RawClient.connect(sock) as stuck:
            await stuck.call("subscribe")
            conn = subscribers[0]
            await _fill_until_dropped(conn, {"blob": "z" * 50_000})
            assert conn.close_reason is not None and "did not read" in conn.close_reason


async def test_socat_interop(tmp_path: Path) -> None:
    socat = shutil.which("socat")
    assert socat, "socat is required (CI installs it; here: apt-get install -y socat)"
    sock = tmp_path / "d.sock"
    request = b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"via":"socat"}}\n'
    batch = b'[{"jsonrpc":"2.0","id":2,"method":"whoami"}]\n'
    async with running_server(sock):
        result = await anyio.run_process(
            [socat, "-t", "5", "-", f"UNIX-CONNECT:{sock}"], input=request + batch
        )
    lines = result.stdout.decode().splitlines()
    assert json.loads(lines[0]) == {"jsonrpc": "2.0", "id": 1, "result": {"via": "socat"}}
    assert json.loads(lines[1]) == [{"jsonrpc": "2.0", "id": 2, "result": {"uid": os.getuid()}}]


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A folder that uid 65534 can reach (pytest's tmp_path is 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix="brrpc-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_AS_NOBODY = r"""
import json, os, socket, sys
os.setgid(65534)
os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"whoami"}\n')
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(json.dumps({"uid": os.getuid(), "received": data.decode()}))
"""


async def test_client_of_another_uid_is_refused(traversable_dir: Path) -> None:
    if os.getuid() != 0:
        pytest.fail("this test drops to uid 65534 and must run as root (as CI does)")
    sock = traversable_dir / "d.sock"
    async with running_server(sock):
        # The 0600 socket is the first line of defence; open it up so that the uid check,
        # the second line, is what a uid-65534 client actually meets.
        sock.chmod(0o666)
        result = await anyio.run_process(
            [sys.executable, "-c", _AS_NOBODY, str(sock)], check=False
        )
        assert result.returncode == 0, result.stderr.decode()
        out = json.loads(result.stdout)
        assert out["uid"] == 65534
        reply = json.loads(out["received"].splitlines()[0])
        assert reply["error"]["code"] == protocol.UNAUTHORIZED
        assert reply["error"]["data"] == {"uid": 65534}
        assert "result" not in reply
        async with RawClient.connect(sock) as owner:
            assert (await owner.call("whoami"))["result"] == {"uid": 0}

