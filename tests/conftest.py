"""Shared fixtures: a small JSON-RPC client on a raw Unix socket, and a real ``buildrunnerd``
subprocess on a socket under ``tmp_path``.

Readiness is signalled, never slept for: the daemon subprocess gets a ``NOTIFY_SOCKET`` (a
datagram socket owned by the fixture) and the fixture waits for its ``READY=1``, then pings.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0


class RpcError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code: int = error.get("code", 0)
        self.message: str = error.get("message", "")
        self.data: Any = error.get("data")


class RpcClient:
    """A minimal async JSON-RPC 2.0 client over a raw Unix socket (newline-delimited frames).

    Notifications that arrive (``event``) are kept in :attr:`notifications`, in order.
    """

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""
        self._ids = itertools.count(1)
        self.notifications: list[dict[str, Any]] = []

    @classmethod
    @asynccontextmanager
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
            if isinstance(reply, dict) and "method" in reply and "id" not in reply:
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


async def wait_run_event(
    socket_path: Path, run_id: str, types: tuple[str, ...] = ("run.succeeded", "run.failed",
                                                            "run.cancelled"),
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


@dataclass
class DaemonProcess:
    """A running ``buildrunnerd`` subprocess."""

    proc: subprocess.Popen[bytes]
    socket: Path
    home: Path
    stderr_path: Path
    env: dict[str, str]
    extra_args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @asynccontextmanager
    async def client(self) -> AsyncIterator[RpcClient]:
        async with RpcClient.connect(self.socket) as client:
            yield client

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return await self.wait(timeout_s)

    async def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for the process to exit; its exit code."""
        return await anyio.to_thread.run_sync(self.proc.wait, timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class DaemonFactory:
    """Starts daemons on ``tmp_path``; every daemon still running at teardown is killed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.home = tmp_path / "home"
        # A short folder for the socket: AF_UNIX paths are limited to ~107 bytes.
        self.socket_dir = Path(f"/tmp/brt-{os.getpid()}-{id(self):x}")
        self.socket = self.socket_dir / "buildrunnerd.sock"
        self.started: list[DaemonProcess] = []
        self._count = itertools.count(1)

    def base_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BUILDRUNNER_", "ANTHROPIC_", "NOTIFY_SOCKET", "XDG_"))}
        env.update({"BUILDRUNNER_HOME": str(self.home), "BUILDRUNNER_SOCKET": str(self.socket),
                    "BUILDRUNNER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
        env.update(extra)
        return env

    def spawn(self, *args: str, env: dict[str, str] | None = None,
              notify_socket: Path | None = None) -> DaemonProcess:
        """Start a daemon without waiting for it."""
        env = dict(env or self.base_env())
        if notify_socket is not None:
            env["NOTIFY_SOCKET"] = str(notify_socket)
        stderr_path = self.tmp_path / f"daemon-{next(self._count)}.stderr"
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "buildrunnerd", "--backend", "simulated", *args],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                cwd=self.tmp_path,
            )
        daemon = DaemonProcess(proc, self.socket, self.home, stderr_path, env, list(args))
        self.started.append(daemon)
        return daemon

    async def start(self, *args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        """Start a daemon and return once it is ready (READY=1 received, ping answered)."""
        notify_path = self.tmp_path / f"notify-{next(self._count)}.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.setblocking(False)
        try:
            daemon = self.spawn(*args, env=env, notify_socket=notify_path)
            with anyio.fail_after(READY_TIMEOUT_S):
                while True:
                    await anyio.wait_readable(notify)
                    message = notify.recv(4096).decode()
                    if "READY=1" in message.splitlines():
                        break
        except TimeoutError:
            raise AssertionError(
                f"daemon not ready in {READY_TIMEOUT_S}s:\n{daemon.stderr()}"
            ) from None
        finally:
            notify.close()
        async with daemon.client() as client:
            ping = await client.call("daemon.ping")
        assert ping["pid"] == daemon.pid
        return daemon

    def cleanup(self) -> None:
        for daemon in self.started:
            daemon.kill()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start real ``buildrunnerd`` subprocesses (simulated backend) on a socket of this test."""
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


def write_spec(path: Path, features: list[tuple[str, str, list[str], list[str]]],
               *, title: str = "Test project", test_command: str | None = None) -> Path:
    """Write a native-format spec: ``(name, domain, depends_on names, files)`` per feature."""
    lines = [f"# {title}", "", "A project written by the tests.", ""]
    if test_command:
        lines += [f"Test command: `{test_command}`", ""]
    lines += ["## Features", ""]
    for name, domain, deps, files in features:
        lines += [f"### {name}", ""]
        if deps:
            lines += [f"**Depends on:** {', '.join(deps)}", ""]
        lines += [f"Domain: {domain}", "", "#### Requirements"]
        lines += [f"- [ ] `{f}` implements {name.lower()}." for f in files]
        lines += ["", "#### Acceptance Criteria", f"- [ ] {name} works.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def project_env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the shared project venv of :mod:`tests.projectenv` lives."""
    return tmp_path_factory.mktemp("projectenv")
