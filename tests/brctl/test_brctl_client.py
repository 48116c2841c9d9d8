"""The sync client against a real RpcServer: replies, errors, notifications, timeouts, exits."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from brctl._client import RpcClient
from brctl._errors import DaemonTimeoutError, DaemonUnreachableError, RemoteError
from buildrunnerd import protocol
from buildrunnerd.errors import InvalidStateError
from buildrunnerd.rpc import Connection, Dispatcher, RpcServer
from tests.brctl.brctl_support import base_env

BRCTL = [sys.executable, "-m", "brctl"]


def _dispatcher() -> Dispatcher:
    dispatcher = Dispatcher()

    async def ping(params: dict[str, Any], conn: Connection) -> Any:
        return {"version": "test", "pid": 1, "uptime_s": 61.0, "backend": "simulated",
                "simulated": True, "workers": 2, "socket": "s", "home": "h"}

    async def slow(params: dict[str, Any], conn: Connection) -> Any:
        await anyio.sleep(5)
        return "late"

    async def chatty(params: dict[str, Any], conn: Connection) -> Any:
        for i in range(3):
            conn.notify("event", {"id": i + 1})
        return {"subscribed": True}

    async def pause(params: dict[str, Any], conn: Connection) -> Any:
        raise InvalidStateError(f"run {params['run_id']} is succeeded; only a running run "
                                "can be paused", data={"state": "succeeded",
                                                       "allowed": ["running"]})

    async def hang_up(params: dict[str, Any], conn: Connection) -> Any:
        conn.close("test hangs up")
        await anyio.sleep(1)

    async def resolve(params: dict[str, Any], conn: Connection) -> Any:
        return {"run_ids": [params["run_id"]]}

    for name, handler in {"daemon.ping": ping, "slow": slow, "chatty": chatty,
                          "run.pause": pause, "hang_up": hang_up,
                          "run.resolve": resolve}.items():
        dispatcher.register(name, handler)
    return dispatcher


async def test_client_calls_errors_notifications_and_timeouts(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"

    def scenario() -> None:
        with RpcClient(sock, timeout_s=10) as client:
            assert client.call("daemon.ping")["backend"] == "simulated"
            # Notifications sent before the reply are kept, in order.
            assert client.call("chatty") == {"subscribed": True}
            got = [client.next_notification(1) for _ in range(3)]
            assert [n["params"]["id"] for n in got if n] == [1, 2, 3]
            assert client.next_notification(0.05) is None
            with pytest.raises(RemoteError) as info:
                client.call("run.pause", {"run_id": "r-1"})
            assert info.value.code == protocol.INVALID_STATE
            assert info.value.data == {"state": "succeeded", "allowed": ["running"]}
            with pytest.raises(RemoteError) as missing:
                client.call("no.such")
            assert missing.value.code == protocol.METHOD_NOT_FOUND
            with pytest.raises(DaemonTimeoutError, match="did not answer slow within 0.2 s"):
                client.call("slow", timeout_s=0.2)
        with RpcClient(sock) as client, pytest.raises(DaemonUnreachableError, match="closed"):
            client.call("hang_up")

    async with anyio.create_task_group() as tg:
        await tg.start(RpcServer(sock, _dispatcher()).serve)
        await anyio.to_thread.run_sync(scenario)
        # The human and JSON output of brctl against the same server, as a subprocess.
        ping = await anyio.run_process([*BRCTL, "--socket", str(sock), "ping"],
                                       env=base_env(tmp_path))
        assert "SIMULATED" in ping.stdout.decode() and "up 1m 01s" in ping.stdout.decode()
        refused = await anyio.run_process(
            [*BRCTL, "--socket", str(sock), "pause", "r-1", "--json"], env=base_env(tmp_path),
            check=False,
        )
        assert refused.returncode == 1
        assert "only a running run can be paused" in refused.stderr.decode()
        assert json.loads(refused.stdout)["error"]["data"]["state"] == "succeeded"
        tg.cancel_scope.cancel()


def _brctl(tmp_path: Path, *args: str, env_socket: Path | None = None) -> Any:
    env = base_env(tmp_path)
    if env_socket is not None:
        env["BUILDRUNNER_SOCKET"] = str(env_socket)
    return subprocess.run([*BRCTL, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("command", [["ping"], ["status"], ["runs"], ["logs", "r-1"],
                                     ["costs", "--by", "day"], ["shutdown"]])
def test_no_daemon_exits_3_naming_the_socket_and_how_to_start(
    tmp_path: Path, command: list[str]
) -> None:
    sock = tmp_path / "nothing-here.sock"
    result = _brctl(tmp_path, *command, env_socket=sock)
    assert result.returncode == 3, result.stderr
    assert str(sock) in result.stderr
    assert "buildrunnerd &" in result.stderr
    assert "systemctl --user start buildrunnerd" in result.stderr
    assert result.stdout == ""


def test_stale_socket_file_exits_3(tmp_path: Path) -> None:
    sock = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(sock))
    leftover.close()
    result = _brctl(tmp_path, "--socket", str(sock), "--json", "ping")
    assert result.returncode == 3
    assert "connection refused" in result.stderr
    assert json.loads(result.stdout)["error"]["data"]["socket"] == str(sock)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _brctl(tmp_path, "task").returncode == 2
    assert _brctl(tmp_path, "status", "--exit-when-idle").returncode == 2  # needs --follow
    assert _brctl(tmp_path, "status", "r-1", "--follow", "--exit-when-idle").returncode == 2
    assert _brctl(tmp_path, "costs", "--by", "week").returncode == 2
    assert _brctl(tmp_path, "submit", str(tmp_path / "missing.md")).returncode == 2
    assert _brctl(tmp_path, "no-such-command").returncode == 2
