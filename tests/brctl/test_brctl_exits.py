"""Exit codes and --json errors of the one client, as scripts see them: the socket from every
place it can come from, replies a daemon should never send, and a reader that went away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buildrunnerd import protocol
from tests.brctl.brctl_support import BRCTL, Daemon, base_env

CALL_TIMEOUT_S = 60.0


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRCTL, *args], env=env, capture_output=True, text=True,
                          timeout=CALL_TIMEOUT_S, check=False)


def test_no_daemon_exits_3_naming_the_socket_wherever_it_comes_from(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    stale = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the file stays: connecting is refused
    cases: list[tuple[dict[str, str], list[str], Path, str]] = [
        (env, ["--json", "ping"],  # the default under XDG_STATE_HOME
         tmp_path / "xdg-state" / "buildrunner" / "buildrunnerd.sock", "no socket file"),
        ({**env, "XDG_RUNTIME_DIR": str(tmp_path / "rt")}, ["status", "--json"],
         tmp_path / "rt" / "buildrunner" / "buildrunnerd.sock", "no socket file"),
        ({**env, "BUILDRUNNER_HOME": str(tmp_path / "h")}, ["--json", "runs"],
         tmp_path / "h" / "buildrunnerd.sock", "no socket file"),
        (env, ["--json", "--socket", str(stale), "tasks", "r1"], stale, "connection refused"),
        (env, ["tasks", "--json", f"--socket={stale}"], stale, "connection refused"),
    ]
    for case_env, args, sock, reason in cases:
        result = _run(case_env, *args)
        assert result.returncode == 3, (args, result.stderr)
        assert str(sock) in result.stderr and reason in result.stderr, result.stderr
        assert "Start it with `buildrunnerd &`" in result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["exit_code"] == 3 and error["code"] is None
        assert error["data"] == {"socket": str(sock), "reason": error["data"]["reason"]}


class _ScriptedServer:
    """A real Unix socket server answering each request as told by the run id it names."""

    def __init__(self, path: Path, replies: dict[str, Callable[[socket.socket, int], None]]):
        self.replies = replies
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CALL_TIMEOUT_S)
            buffer = b""
            while True:
                while b"\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                params = request.get("params", {})
                if request["method"] == "run.resolve":  # every typed id is itself
                    _reply({"run_ids": [params["run_id"]]})(conn, request["id"])
                    continue
                self.replies[params.get("run_id", request["method"])](conn, request["id"])

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()


def _reply(result: Any = None, *, error: Any = None,
           raw: bytes | None = None) -> Callable[[socket.socket, int], None]:
    def send(conn: socket.socket, request_id: int) -> None:
        if raw is not None:
            conn.sendall(raw)
            return
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if error is not None:
            reply["error"] = error
        else:
            reply["result"] = result
        conn.sendall(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
    return send


def _close(conn: socket.socket, _request_id: int) -> None:
    conn.shutdown(socket.SHUT_RDWR)


def _silence(_conn: socket.socket, _request_id: int) -> None:
    time.sleep(1.0)  # longer than the client's --timeout-s


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "scripted.sock"
    server = _ScriptedServer(path, {
        "odd": _reply({"id": "odd", "state": "running", "tasks": [
            {"id": "odd:t1", "state": "running", "attempts": 1, "cost_usd": 1e-05,
             "title": "ünï \"q\" \\ \t 😀"}]}),
        "nope": _reply(error={"code": protocol.NOT_FOUND, "message": "run nope not found",
                              "data": {"kind": "run", "id": "nope"}}),
        "scalar": _reply(error={"code": -32004, "message": "x", "data": "just a string"}),
        "spec": _reply(error={"code": protocol.SPEC_INVALID, "message": "invalid spec",
                              "data": {"errors": [{"line": 3, "message": "bad"}]}}),
        "garbage": _reply(raw=b"this is not JSON\n"),
        "close": _close,
        "silence": _silence,
    })
    yield path
    server.close()


def test_odd_replies(scripted: Path, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    sock = ["--socket", str(scripted)]
    ok = _run(env, *sock, "--json", "status", "odd")
    assert ok.returncode == 0 and json.loads(ok.stdout)["tasks"][0]["title"] == "ünï \"q\" \\ \t 😀"
    assert "ünï" in ok.stdout  # UTF-8 as it is, not \u-escaped
    nope = _run(env, *sock, "--json", "status", "nope")
    assert nope.returncode == 1 and nope.stderr == "error: run nope not found\n"
    assert json.loads(nope.stdout) == {"error": {
        "code": protocol.NOT_FOUND, "message": "run nope not found",
        "data": {"kind": "run", "id": "nope"}, "exit_code": 1}}
    scalar = _run(env, *sock, "--json", "status", "scalar")
    assert scalar.returncode == 1
    assert json.loads(scalar.stdout)["error"]["data"] == {"value": "just a string"}
    spec = _run(env, *sock, "--json", "status", "spec")
    assert spec.returncode == 1 and "<spec>:3: bad" in spec.stderr
    assert json.loads(spec.stdout) == {"errors": [{"line": 3, "message": "bad"}]}
    garbage = _run(env, *sock, "status", "garbage")
    assert garbage.returncode == 1 and "sent a frame that is not JSON" in garbage.stderr
    closed = _run(env, *sock, "--json", "status", "close")
    assert closed.returncode == 3 and "closed the connection" in closed.stderr
    silent = _run(env, *sock, "--json", "--timeout-s", "0.2", "tasks", "silence")
    assert silent.returncode == 1 and "did not answer run.get within 0.2 s" in silent.stderr


def test_a_reader_that_went_away_is_not_an_error(daemon: Daemon) -> None:
    for args in (["--json", "ping"], ["runs"], ["--json", "status"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # writing to stdout now fails with EPIPE
        try:
            result = subprocess.run([*BRCTL, "--socket", str(daemon.socket), *args],
                                    stdout=write_end, stderr=subprocess.PIPE, env=daemon.env,
                                    timeout=CALL_TIMEOUT_S, check=False)
        finally:
            os.close(write_end)
        assert (result.returncode, result.stderr) == (0, b""), (args, result.stderr)


def test_global_options_as_click_gives_them(tmp_path: Path) -> None:
    # brctl builds --socket's type, --version and -h/--help itself (no gettext on the polled
    # path, see brctl/_cli.py): the same checks, texts and exits as click's own.
    from buildrunnerd import __version__

    env = base_env(tmp_path)
    for args in (["--socket", str(tmp_path), "status"], ["status", f"--socket={tmp_path}"]):
        result = _run(env, *args)
        assert result.returncode == 2, result.stderr
        assert f"Invalid value for '--socket': File '{tmp_path}' is a directory." \
            in result.stderr
    missing = _run(env, "--socket", str(tmp_path / "none.sock"), "ping")
    assert missing.returncode == 3 and "no socket file" in missing.stderr
    version = _run(env, "--version")
    assert (version.returncode, version.stdout) == (0, f"brctl, version {__version__}\n")
    for args in (["-h"], ["--help"], ["status", "-h"], ["ping", "--help"], ["submit", "-h"]):
        result = _run(env, *args)
        assert result.returncode == 0 and result.stdout.startswith("Usage: brctl"), args
        assert "  -h, --help " in result.stdout and "Show this message and exit." \
            in result.stdout, args
    top = _run(env, "--help").stdout
    assert "  --version " in top and "Show the version and exit." in top
    assert top.index("--timeout-s") < top.index("-h, --help")  # the help option comes last
    completion = _run({**env, "_BRCTL_COMPLETE": "bash_complete",
                       "COMP_WORDS": "brctl --socket /tm", "COMP_CWORD": "2"})
    assert completion.stdout.splitlines() == ["file,/tm"]  # the shell completes a file
