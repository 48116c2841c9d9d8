"""Black-box helpers for the contract tests: the installed ``buildrunnerd`` / ``brctl``
console scripts run as subprocesses, and a raw JSON-RPC connection on the Unix socket.

Nothing here imports the project: these tests see BuildRunner only the way users, scripts and
systemd do (docs: /work/shared/contract.md, mirrored in docs/protocol.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# The console scripts of the venv that runs the tests (``.venv/bin`` in this project).
BIN_DIR = Path(sys.executable).parent
BUILDRUNNERD = BIN_DIR / "buildrunnerd"
BRCTL = BIN_DIR / "brctl"

READY_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 45.0
CLI_TIMEOUT_S = 60.0

RUN_STATES = {"queued", "planning", "running", "paused", "succeeded", "failed", "cancelled"}
FINISHED_RUN_STATES = {"succeeded", "failed", "cancelled"}
TASK_STATES = {"pending", "ready", "running", "verifying", "succeeded", "failed", "blocked",
               "cancelled"}
COMPLEXITIES = {"simple", "medium", "complex", "critical"}
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
HEAVY_MODULES = ("anthropic", "aiosqlite", "watchfiles", "tiktoken")

# A small native-format spec: two features, the second depending on the first; every task
# names its files so the simulated backend has something to write.
TINY_SPEC = """\
# Tiny service

A tiny project written by the contract tests.

Test command: `true`

## Features

### Core
Domain: backend

#### Requirements
- [ ] `app/core.py` implements the core.

#### Acceptance Criteria
- [ ] Core works.

### Extra
**Depends on:** Core
Domain: backend

#### Requirements
- [ ] `app/extra.py` implements the extra part.

#### Acceptance Criteria
- [ ] Extra works.
"""
# 1-based lines of the feature headings above (plan --json must point back into the file).
TINY_FEATURE_LINES = {"core": 9, "extra": 18}


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything BuildRunner, Anthropic or XDG reads,
    so every daemon sees exactly what a test gives it (no key: the simulated backend)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BUILDRUNNER_", "ANTHROPIC_", "XDG_", "NOTIFY_SOCKET"))}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "GIT_AUTHOR_NAME": "contract", "GIT_AUTHOR_EMAIL": "contract@buildrunner.invalid",
        "GIT_COMMITTER_NAME": "contract", "GIT_COMMITTER_EMAIL": "contract@buildrunner.invalid",
    })
    env.update(extra)
    return env


def brctl(*args: str, env: dict[str, str], timeout_s: float = CLI_TIMEOUT_S,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``brctl`` with ``args``; never raises on a non-zero exit."""
    return subprocess.run([str(BRCTL), *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd, stdin=subprocess.DEVNULL)


def buildrunnerd(*args: str, env: dict[str, str], timeout_s: float = CLI_TIMEOUT_S,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``buildrunnerd`` (a one-shot command such as ``plan``)."""
    return subprocess.run([str(BUILDRUNNERD), *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd, stdin=subprocess.DEVNULL)


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON document a ``--json`` command printed on stdout (with a useful failure)."""
    assert result.returncode == 0, (result.args, result.returncode, result.stdout, result.stderr)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{result.args}: stdout is not one JSON document: "
                             f"{result.stdout!r}") from exc


class RawConnection:
    """A plain blocking JSON-RPC connection: one JSON value per ``\\n``-terminated line."""

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

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
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
            if isinstance(reply, dict) and "id" not in reply and "method" in reply:
                continue  # a notification (events of a subscription): not our reply
            assert reply.get("id") == self._next_id, reply
            return reply


def rpc(path: Path, method: str, **params: Any) -> Any:
    """Call ``method`` on a fresh connection and return its result (asserting no error)."""
    with RawConnection(path) as conn:
        reply = conn.request(method, params)
    assert "error" not in reply, reply
    return reply["result"]


def try_ping(path: Path) -> dict[str, Any] | None:
    """The ping result, or None when nothing answers on ``path`` yet."""
    try:
        with RawConnection(path, timeout_s=5.0) as conn:
            reply = conn.request("daemon.ping")
    except (OSError, EOFError, ValueError):
        return None
    result = reply.get("result")
    return result if isinstance(result, dict) else None


@dataclass
class Daemon:
    """A ``buildrunnerd`` started from its console script, in the foreground."""

    proc: subprocess.Popen[bytes]
    socket: Path
    env: dict[str, str]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def brctl(self, *args: str,
              timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """``brctl --socket <this daemon's socket> args``."""
        return brctl("--socket", str(self.socket), *args, env=self.env, timeout_s=timeout_s)

    def rpc(self, method: str, **params: Any) -> Any:
        return rpc(self.socket, method, **params)

    def connect(self) -> RawConnection:
        return RawConnection(self.socket)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Poll the socket with ``daemon.ping`` until it answers (fails if the daemon exits)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"buildrunnerd exited ({self.proc.returncode}) before it "
                                     f"was ready:\n{self.stderr()}")
            ping = try_ping(self.socket)
            if ping is not None:
                return ping
            time.sleep(0.05)  # a polling interval, not a wait for something to be done
        raise AssertionError(f"buildrunnerd not ready in {timeout_s}s:\n{self.stderr()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit code (kill if it does not stop)."""
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout_s)
        finally:
            self.kill()


def start_daemon(workdir: Path, *args: str, env: dict[str, str], socket_path: Path,
                 wait: bool = True, name: str = "daemon") -> Daemon:
    """Start ``buildrunnerd args`` with ``env`` (cwd ``workdir``) and wait until ``socket_path``
    answers a ping. The caller stops it (``Daemon.stop``)."""
    stderr_path = workdir / f"{name}.stderr"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen([str(BUILDRUNNERD), *args], env=env, cwd=workdir,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    daemon = Daemon(proc, socket_path, env, stderr_path)
    if wait:
        try:
            daemon.wait_ready()
        except BaseException:
            daemon.kill()
            raise
    return daemon


def make_repo(path: Path, spec_text: str = TINY_SPEC) -> Path:
    """A real git repository at ``path`` with ``PROJECT_SPEC.md`` committed; the spec's path."""
    path.mkdir(parents=True)
    git = ["git", "-C", str(path), "-c", "user.name=contract",
           "-c", "user.email=contract@buildrunner.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, timeout=30)
    spec = path / "PROJECT_SPEC.md"
    spec.write_text(spec_text, encoding="utf-8")
    subprocess.run([*git, "add", "PROJECT_SPEC.md"], check=True, timeout=30)
    subprocess.run([*git, "commit", "-q", "-m", "spec"], check=True, timeout=30)
    return spec


def wait_run(daemon: Daemon, run_id: str, states: set[str] = FINISHED_RUN_STATES,
             timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Poll ``run.get`` until the run is in one of ``states``; its RunInfo."""
    deadline = time.monotonic() + timeout_s
    while True:
        info: dict[str, Any] = daemon.rpc("run.get", run_id=run_id)
        if info["state"] in states:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {info['state']} after {timeout_s}s")
        time.sleep(0.05)  # polling interval


def wait_event(daemon: Daemon, run_id: str, event_type: str,
               timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Poll ``events.list`` until the run has an event of ``event_type``; that event."""
    deadline = time.monotonic() + timeout_s
    while True:
        events: list[dict[str, Any]] = daemon.rpc("events.list", run_id=run_id, limit=10000)
        for event in events:
            if event["type"] == event_type:
                return event
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event_type} event for {run_id} in {timeout_s}s: "
                                 f"{[e['type'] for e in events]}")
        time.sleep(0.05)  # polling interval


def submit(daemon: Daemon, spec: Path, repo: Path, *extra: str) -> str:
    """``brctl submit SPEC --repo REPO --json``; the new run's id."""
    out = json_out(daemon.brctl("--json", "submit", str(spec), "--repo", str(repo), *extra))
    assert isinstance(out, dict) and isinstance(out.get("run_id"), str), out
    return str(out["run_id"])


def check_event_shape(event: Any, run_id: str | None = None) -> None:
    """One event as the contract defines it."""
    assert isinstance(event, dict), event
    assert isinstance(event.get("id"), int) and not isinstance(event["id"], bool), event
    assert isinstance(event.get("ts"), str) and RFC3339.match(event["ts"]), event
    assert "run_id" in event, event
    if run_id is not None:
        assert event["run_id"] == run_id, event
    assert isinstance(event.get("type"), str), event
    assert re.fullmatch(r"[a-z_]+\.[a-z_]+", event["type"]), event
    assert isinstance(event.get("data"), dict), event
    for key in ("batch_id", "task_id"):  # optional, but a string when present and set
        assert event.get(key) is None or isinstance(event[key], str), event
    if event["type"] == "task.state_changed":
        assert {"from", "to", "reason"} <= set(event["data"]), event
        assert event["data"]["to"] in TASK_STATES, event
    if event["type"] == "api.call":
        assert {"model", "cost_usd"} <= set(event["data"]), event
