"""Contract: JSON-RPC 2.0 over the Unix socket (framing, batches, the standard errors, every
method name, the frame limit, ``events.subscribe`` notifications), with socat and raw sockets."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.contract._support import (
    Daemon,
    RawConnection,
    check_event_shape,
    submit,
    wait_run,
)

CONTRACT_METHODS = (
    "daemon.ping", "daemon.shutdown", "spec.plan", "run.submit", "run.list", "run.get",
    "run.pause", "run.resume", "run.cancel", "task.list", "task.get", "task.retry",
    "events.subscribe", "events.list", "costs.summary",
)
FRAME_LIMIT_BYTES = 8 * 1024 * 1024


def _socat(daemon: Daemon, data: bytes, wait_s: float = 5.0) -> list[Any]:
    """Pipe ``data`` through ``socat - UNIX-CONNECT:$BUILDRUNNER_SOCKET``; the reply lines."""
    socat = shutil.which("socat")
    assert socat, "socat must be installed (.ci/run installs it)"
    result = subprocess.run([socat, "-t", str(wait_s), "-", f"UNIX-CONNECT:{daemon.socket}"],
                            input=data, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _error(reply: Any, code: int) -> dict[str, Any]:
    assert isinstance(reply, dict), reply
    assert reply.get("jsonrpc") == "2.0", reply
    assert "result" not in reply, reply
    error = reply["error"]
    assert error["code"] == code, reply
    assert isinstance(error["message"], str) and error["message"], reply
    return dict(error)


def test_ping_with_socat(daemon: Daemon) -> None:
    replies = _socat(daemon, b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping"}\n')
    assert len(replies) == 1
    assert replies[0]["jsonrpc"] == "2.0" and replies[0]["id"] == 1
    assert replies[0]["result"]["backend"] == "simulated"


def test_one_reply_per_line_in_order_with_socat(daemon: Daemon) -> None:
    frames = b"".join(
        json.dumps({"jsonrpc": "2.0", "id": n, "method": "daemon.ping"}).encode() + b"\n"
        for n in ("a", 2, "c"))
    replies = _socat(daemon, frames)
    assert [r["id"] for r in replies] == ["a", 2, "c"]
    assert all("result" in r for r in replies)


def test_batch_with_socat(daemon: Daemon) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "run.list"},
             {"jsonrpc": "2.0", "id": 2, "method": "costs.summary", "params": {"by": "day"}},
             {"jsonrpc": "2.0", "id": 3, "method": "no.such_method"},
             {"jsonrpc": "2.0", "method": "daemon.ping"}]  # a notification: no reply
    replies = _socat(daemon, json.dumps(batch).encode() + b"\n")
    assert len(replies) == 1 and isinstance(replies[0], list), replies
    by_id = {r["id"]: r for r in replies[0]}
    assert set(by_id) == {1, 2, 3}
    assert isinstance(by_id[1]["result"], list)
    assert "total_usd" in by_id[2]["result"]
    _error(by_id[3], -32601)


def test_a_notification_gets_no_reply(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        conn.send_json({"jsonrpc": "2.0", "method": "daemon.ping"})
        reply = conn.request("run.list")  # the next line must be this request's reply
    assert "result" in reply


def test_parse_error(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        conn.send_line(b'{"jsonrpc": "2.0", "id": 1, "method": ')
        error = _error(conn.read_frame(), -32700)
        conn.send_line(b"\xff\xfe not utf-8")
        _error(conn.read_frame(), -32700)
        # the connection is still usable after a parse error
        assert "result" in conn.request("daemon.ping")
    assert error is not None


@pytest.mark.parametrize("frame", [
    b'"just a string"',
    b"42",
    b'{"jsonrpc": "1.0", "id": 1, "method": "daemon.ping"}',
    b'{"id": 1, "method": "daemon.ping"}',
    b'{"jsonrpc": "2.0", "id": 1, "method": 5}',
    b'{"jsonrpc": "2.0", "id": 1}',
    b"[]",
], ids=["string", "number", "jsonrpc-1.0", "no-jsonrpc", "method-not-string", "no-method",
        "empty-batch"])
def test_invalid_request(daemon: Daemon, frame: bytes) -> None:
    with daemon.connect() as conn:
        conn.send_line(frame)
        _error(conn.read_frame(), -32600)


def test_method_not_found(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        reply = conn.request("no.such_method", {})
    _error(reply, -32601)
    assert reply["id"] == 1


@pytest.mark.parametrize("method,params", [
    ("run.get", {}),                       # missing
    ("run.get", {"run_id": 42}),           # mistyped
    ("run.get", ["r-positional"]),         # positional params
    ("task.get", {}),
    ("events.list", {"limit": "many"}),
], ids=["missing", "mistyped", "positional", "task-missing", "limit-mistyped"])
def test_invalid_params(daemon: Daemon, method: str, params: Any) -> None:
    with daemon.connect() as conn:
        reply = conn.request(method, params)
    _error(reply, -32602)


def test_every_contract_method_exists(daemon: Daemon) -> None:
    """No method of the contract answers -32601 (bad params are fine: they prove it exists).
    ``daemon.shutdown`` is exercised in test_lifecycle.py (it stops the daemon)."""
    for method in CONTRACT_METHODS:
        if method == "daemon.shutdown":
            continue
        params: dict[str, Any] = {"no_such_param_x": 1}
        with daemon.connect() as conn:
            reply = conn.request(method, params)
        if "error" in reply:
            assert reply["error"]["code"] != -32601, (method, reply)
            assert reply["error"]["code"] != -32603, (method, reply)


def test_application_errors_are_in_the_reserved_range(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        replies = [conn.request("run.get", {"run_id": "r-nope"}),
                   conn.request("task.get", {"task_id": "r-nope:x.1"}),
                   conn.request("run.cancel", {"run_id": "r-nope"})]
    for reply in replies:
        error = reply["error"]
        assert -32099 <= error["code"] <= -32000, reply
        assert isinstance(error.get("data"), dict), reply


def test_frame_over_the_limit_closes_the_connection_daemon_stays_up(daemon: Daemon) -> None:
    with RawConnection(daemon.socket, timeout_s=60.0) as conn:
        chunk = b"x" * (1024 * 1024)
        try:
            conn.sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping","params":{"p":"')
            for _ in range(FRAME_LIMIT_BYTES // len(chunk) + 2):
                conn.sock.sendall(chunk)
            conn.sock.sendall(b'"}}\n')
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may close while we are still sending: that is the contract
        reply = conn.read_frame()
        assert isinstance(reply, dict) and "error" in reply, reply
        assert -32700 <= reply["error"]["code"] <= -32000, reply
        assert conn.at_eof(), "the connection must be closed after an oversized frame"
    with daemon.connect() as conn:  # the daemon stays up
        assert "result" in conn.request("daemon.ping")


def test_a_frame_just_under_the_limit_is_read(daemon: Daemon) -> None:
    # ~1 MiB of text through spec.plan: large, but well under the 8 MiB default.
    big = "# Big\n\n## Features\n\n### Alpha\n\n- [ ] `a.py` holds alpha.\n\n" + (
        "Prose line that makes the frame big.\n" * 28000)
    with RawConnection(daemon.socket, timeout_s=60.0) as conn:
        reply = conn.request("spec.plan", {"spec_text": big})
    assert "result" in reply, str(reply)[:500]


@pytest.fixture(scope="module")
def finished_run(daemon: Daemon, repo: Path) -> str:
    run_id = submit(daemon, repo / "PROJECT_SPEC.md", repo)
    info = wait_run(daemon, run_id)
    assert info["state"] == "succeeded", info
    return run_id


def test_events_subscribe_notifications(daemon: Daemon, finished_run: str) -> None:
    stored = daemon.rpc("events.list", run_id=finished_run, limit=10000)
    assert stored
    with daemon.connect() as conn:
        conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                        "params": {"run_id": finished_run, "since": 0}})
        notified: list[dict[str, Any]] = []
        while True:
            frame = conn.read_frame()
            if "id" in frame:  # the subscribe reply comes after the replay
                assert frame["id"] == 1 and "result" in frame, frame
                break
            assert frame["jsonrpc"] == "2.0" and frame["method"] == "event", frame
            assert set(frame) == {"jsonrpc", "method", "params"}, frame
            check_event_shape(frame["params"], finished_run)
            notified.append(frame["params"])
    # Stored before sent: every notification is a stored event, in id order, none missing.
    assert [e["id"] for e in notified] == [e["id"] for e in stored]
    assert notified == stored


def test_events_subscribe_since_skips_older_events(daemon: Daemon, finished_run: str) -> None:
    stored = daemon.rpc("events.list", run_id=finished_run, limit=10000)
    middle = stored[len(stored) // 2]["id"]
    with daemon.connect() as conn:
        conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                        "params": {"run_id": finished_run, "since": middle}})
        ids = []
        while "id" not in (frame := conn.read_frame()):
            ids.append(frame["params"]["id"])
    assert ids == [e["id"] for e in stored if e["id"] > middle]


def test_events_list_pages_with_since_and_limit(daemon: Daemon, finished_run: str) -> None:
    every = daemon.rpc("events.list", run_id=finished_run, limit=10000)
    page = daemon.rpc("events.list", run_id=finished_run, limit=3)
    assert page == every[:3]
    after = daemon.rpc("events.list", run_id=finished_run, since=page[-1]["id"], limit=3)
    assert after == every[3:6]


def test_live_events_reach_a_subscriber(daemon: Daemon, repo: Path) -> None:
    """Subscribe to every run first, then submit: the run's events arrive as notifications."""
    with daemon.connect() as conn:
        reply = conn.request("events.subscribe", {})
        assert "result" in reply
        run_id = submit(daemon, repo / "PROJECT_SPEC.md", repo)
        seen = []
        while True:
            frame = conn.read_frame()
            assert frame.get("method") == "event", frame
            check_event_shape(frame["params"])
            if frame["params"]["run_id"] != run_id:
                continue
            seen.append(frame["params"]["type"])
            if frame["params"]["type"] in ("run.succeeded", "run.failed", "run.cancelled"):
                break
    assert seen[0] == "run.submitted" and seen[-1] == "run.succeeded", seen


def test_unix_socket_is_the_transport(daemon: Daemon) -> None:
    """The socket speaks line-delimited JSON to any client (here: a bare socket, no helper)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(daemon.socket))
        sock.sendall(b'{"jsonrpc":"2.0","id":7,"method":"daemon.ping"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "closed before replying"
            data += chunk
    assert data.count(b"\n") == 1
    reply = json.loads(data)
    assert reply["id"] == 7 and reply["result"]["simulated"] is True


ODD_PARAMS: list[tuple[str, dict[str, Any]]] = [
    ("run.get", {"run_id": ""}), ("run.get", {"run_id": "x" * 10000}),
    ("run.get", {"run_id": "r-\u00e9\u0000"}), ("task.get", {"task_id": ":"}),
    ("task.retry", {"task_id": "r-x:"}), ("run.pause", {"run_id": None}),
    ("events.list", {"since": -1}), ("events.list", {"since": 2**70}),
    ("events.list", {"limit": -5}), ("events.list", {"limit": 10**9}),
    ("events.subscribe", {"since": 2**70}), ("events.subscribe", {"since": -1}),
    ("costs.summary", {"by": "week"}), ("spec.plan", {"spec_text": "\u0000\u0001"}),
    ("spec.plan", {"spec_path": "/nonexistent/spec.md"}),
    ("run.submit", {"spec_text": "# T\n\n## Features\n\n### A\n- [ ] `a.py` a.",
                    "repo": "/nonexistent/repo"}),
    ("run.list", {"state": "bogus"}),
]


@pytest.mark.parametrize("method,params", ODD_PARAMS,
                         ids=[f"{m}-{n}" for n, (m, _) in enumerate(ODD_PARAMS)])
def test_bad_values_are_client_errors_not_internal_errors(daemon: Daemon, method: str,
                                                          params: dict[str, Any]) -> None:
    """-32603 is for bugs of the daemon: a value the client got wrong is -32602 (or an
    application error), answered on a connection that stays open, by a daemon that stays up."""
    with daemon.connect() as conn:
        reply = conn.request(method, params)
        if "error" in reply:  # a lenient answer (e.g. an empty list) is fine too
            code = reply["error"]["code"]
            assert code == -32602 or -32099 <= code <= -32000, reply
        assert "result" in conn.request("daemon.ping")
