"""The daemon as a service manager sees it: READY/STOPPING over sd_notify, SIGHUP reload,
--check-config, and log lines that carry no secrets. Real processes, real sockets."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILDRUNNERD = Path(sys.executable).parent / "buildrunnerd"
PLANTED = "sk-ant-api03-" + "Qw7" * 30


class Daemon:
    """A buildrunnerd subprocess with its JSON log lines collected by a reader thread."""

    def __init__(self, tmp_path: Path, config: Path, notify_path: str) -> None:
        self.socket = tmp_path / "d.sock"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BUILDRUNNER_", "ANTHROPIC"))}
        env.update(NOTIFY_SOCKET=notify_path, BUILDRUNNER_CONFIG=str(config),
                   BUILDRUNNER_HOME=str(tmp_path / "home"), BUILDRUNNER_SOCKET=str(self.socket),
                   # A key in the environment must never show up in a log line (the backend
                   # is forced to simulated so nothing calls out).
                   ANTHROPIC_API_KEY=PLANTED)
        self.proc = subprocess.Popen(
            [str(BUILDRUNNERD), "--backend", "simulated", "--log-format", "json"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.raw: list[str] = []
        assert self.proc.stderr is not None
        self.reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self.reader.start()

    def close(self) -> None:
        """Kill the daemon if it is still running and release its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)
        self.reader.join(timeout=30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.raw.append(line)
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"event": "<not json>", "line": line})

    def wait_for(self, event: str, timeout_s: float = 30.0) -> dict[str, Any]:
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no {event!r} log line; got:\n{''.join(self.raw)}") from None
            if line.get("event") == event:
                return line


@pytest.fixture
def notify_sock(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()


def _messages(sock: socket.socket, until: str) -> list[str]:
    seen: list[str] = []
    while True:
        data = sock.recv(4096).decode()
        seen.append(data)
        if until in data.split("\n"):
            return seen


def test_notify_reload_and_stop(tmp_path: Path, notify_sock: tuple[socket.socket, str]) -> None:
    sock, notify_path = notify_sock
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nlog_level = "info"\n')
    daemon = Daemon(tmp_path, config, notify_path)
    try:
        ready = _messages(sock, "READY=1")[-1].split("\n")
        assert f"MAINPID={daemon.proc.pid}" in ready
        assert any(line.startswith("STATUS=") for line in ready)
        assert daemon.socket.exists()  # READY means the control socket is listening

        # SIGHUP: one key applies now, one needs a restart; the daemon says which.
        config.write_text('[daemon]\nlog_level = "debug"\nmax_frame_bytes = 1048576\n')
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = daemon.wait_for("config.reloaded")
        assert reloaded["applied"] == ["daemon.log_level"]
        assert reloaded["needs_restart"] == ["daemon.max_frame_bytes"]

        # A broken file is refused with the key and the line; the daemon keeps running.
        config.write_text('[daemon]\nlog_level = "debug"\nworkerz = 2\n')
        daemon.proc.send_signal(signal.SIGHUP)
        failed = daemon.wait_for("config.reload_failed")
        assert "daemon.workerz" in failed["error"] and f"{config}:3" in failed["error"]
        assert daemon.proc.poll() is None

        daemon.proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in "\n".join(_messages(sock, "STOPPING=1"))
        assert daemon.proc.wait(timeout=60) == 0
    finally:
        daemon.close()
    log = "".join(daemon.raw)
    assert PLANTED not in log
    assert PLANTED[:24] not in log


def test_check_config_flag(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[daemon]\nworkers = 6\n")
    result = subprocess.run([str(BUILDRUNNERD), "--config", str(good), "--check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "workers = 6" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nworkers = 6\n[agent]\nsandbox = 'docker'\n")
    result = subprocess.run([str(BUILDRUNNERD), "--config", str(bad), "--check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{bad}:4" in result.stderr and "agent.sandbox" in result.stderr
