"""The console script's fast path (brctl/_entry.py) answers byte for byte as the click CLI does.

Every comparison runs the same command twice in fresh processes, once through the fast path
and once with ``BRCTL_NO_FAST=1`` (the click CLI), and compares stdout, stderr and the exit
code; a probe also reports whether click was imported, so each case proves which path ran.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brctl import _cli, _client, _entry
from buildrunnerd import paths, protocol
from tests.brctl.brctl_support import Daemon, base_env

ROOT = Path(__file__).resolve().parents[2]
BRCTL_SCRIPT = Path(sys.executable).parent / "brctl"
SETTLE_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0

# What the console script does, plus a report of the modules it imported (on a file descriptor
# of its own, so stdout and stderr stay exactly the command's).
_PROBE = r"""
import atexit, os, sys
def _report():
    with open(os.environ["BRCTL_PROBE_OUT"], "w") as out:
        out.write(" ".join(m for m in ("click", "msgspec", "brctl._cli", "brctl._client")
                           if m in sys.modules))
atexit.register(_report)
sys.argv[0] = "brctl"
from brctl._entry import main
sys.exit(main())
"""


class Outcome:
    def __init__(self, result: subprocess.CompletedProcess[bytes], modules: str) -> None:
        self.code, self.stdout, self.stderr = result.returncode, result.stdout, result.stderr
        self.modules = modules.split()

    @property
    def used_click(self) -> bool:
        return "brctl._cli" in self.modules

    def key(self) -> tuple[int, bytes, bytes]:
        return self.code, _stable(self.stdout), self.stderr


def _stable(stdout: bytes) -> bytes:
    # The daemon's clocks move between the two invocations; nothing else may differ.
    return re.sub(rb'("(?:uptime_s|elapsed_s)": ?)[0-9.e-]+', rb"\1<t>", stdout)


def _run(env: dict[str, str], args: list[str], tmp_path: Path, *, fast: bool) -> Outcome:
    probe = tmp_path / f"probe-{time.monotonic_ns()}"
    env = {**env, "BRCTL_PROBE_OUT": str(probe)}
    env.pop("BRCTL_NO_FAST", None)
    if not fast:
        env["BRCTL_NO_FAST"] = "1"
    result = subprocess.run([sys.executable, "-c", _PROBE, *args], env=env, capture_output=True,
                            timeout=CALL_TIMEOUT_S, check=False)
    return Outcome(result, probe.read_text())


def _both(env: dict[str, str], args: list[str], tmp_path: Path) -> tuple[Outcome, Outcome]:
    fast, slow = _run(env, args, tmp_path, fast=True), _run(env, args, tmp_path, fast=False)
    assert slow.used_click, (args, slow.modules)
    assert fast.key() == slow.key(), (args, fast.key(), slow.key())
    return fast, slow


def _assert_fast(env: dict[str, str], args: list[str], tmp_path: Path) -> Outcome:
    fast, _ = _both(env, args, tmp_path)
    assert fast.modules == [], (args, fast.modules)  # no click, no msgspec, no brctl._client
    return fast


def _assert_falls_through(env: dict[str, str], args: list[str], tmp_path: Path) -> Outcome:
    fast, _ = _both(env, args, tmp_path)
    assert fast.used_click, (args, fast.modules)
    return fast


# --- against a real daemon --------------------------------------------------------------------
_SPEC = "\n".join([
    "# Fast path", "", "Two features for the brctl fast-path tests.", "", "## Features", "",
    "### Feature 1 — Ünïcode \"quoted\"", "", "Domain: backend", "", "#### Requirements",
    "- [ ] `pkg/one.py` does one.", "", "#### Acceptance Criteria", "- [ ] One works.", "",
    "### Feature 2", "", "**Depends on:** Feature 1", "", "Domain: backend", "",
    "#### Requirements", "- [ ] `pkg/two.py` does two.", "", "#### Acceptance Criteria",
    "- [ ] Two works.", "",
])


def _settled(daemon: Daemon, run_id: str) -> None:
    """Wait until RUN's answer stops changing (clocks aside), so both paths see the same."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    previous = b""
    while time.monotonic() < deadline:
        with daemon.client() as client:
            current = _stable(msgspec.json.encode(client.call("run.get", {"run_id": run_id})))
        if current == previous:
            return
        previous = current
        time.sleep(0.3)  # polling for quiescence, bounded by the deadline
    pytest.fail(f"run {run_id} kept changing for {SETTLE_TIMEOUT_S} s")


@pytest.fixture
def busy_daemon(start_daemon: Callable[..., Daemon]) -> Iterator[tuple[Daemon, str, str]]:
    """A daemon with a paused run (active; its dispatched batch never ends) and a cancelled one."""
    daemon = start_daemon(ms_per_minute=10_000_000)
    with daemon.client() as client:
        active = client.call("run.submit", {"spec_text": _SPEC})["id"]
        done = client.call("run.submit", {"spec_text": _SPEC})["id"]
        client.call("run.pause", {"run_id": active})
        client.call("run.cancel", {"run_id": done})
    _settled(daemon, active)
    _settled(daemon, done)
    yield daemon, active, done
    with daemon.client() as client:  # its batch never ends: stop it rather than wait it out
        client.call("run.cancel", {"run_id": active})


def test_fast_path_answers_as_click_does_against_a_real_daemon(
    busy_daemon: tuple[Daemon, str, str], tmp_path: Path
) -> None:
    daemon, active, done = busy_daemon
    sock = str(daemon.socket)
    env = daemon.env
    cases = [
        ["--socket", sock, "--json", "ping"],
        ["ping", "--json", f"--socket={sock}"],
        ["--json", "--socket", sock, "status"],
        ["--socket", sock, "--json", "status", active],
        ["status", done, "--json", "--socket", sock],
        ["--socket", "/nowhere.sock", "runs", "--socket", sock, "--json"],  # the last one wins
        ["--json", "--socket", sock, "--timeout-s", "20", "tasks", active],
        ["tasks", "--json", done, "--socket", sock],
    ]
    for args in cases:
        out = _assert_fast(env, args, tmp_path)
        assert out.code == 0, (args, out.stderr)
    status = json.loads(_assert_fast(env, ["--socket", sock, "--json", "status"], tmp_path).stdout)
    assert [run["id"] for run in status] == [active]
    assert {"id", "state", "tasks"} <= set(status[0])
    tasks = json.loads(_assert_fast(env, ["--socket", sock, "--json", "tasks", done],
                                    tmp_path).stdout)
    assert tasks["state"] == "cancelled" and tasks["tasks"]

    # The socket from the environment, as buildrunnerd.paths resolves it.
    for extra in ({"BUILDRUNNER_SOCKET": sock},
                  {"XDG_RUNTIME_DIR": str(daemon.socket.parent.parent)}):
        moved = daemon.socket.parent.parent / "buildrunner" / "buildrunnerd.sock"
        if "XDG_RUNTIME_DIR" in extra:
            moved.parent.mkdir(exist_ok=True)
            moved.symlink_to(daemon.socket)
        out = _assert_fast({**env, **extra}, ["--json", "runs"], tmp_path)
        assert out.code == 0 and len(json.loads(out.stdout)) == 2, out.stderr

    # The daemon's errors: exit 1, the message on stderr, the error as JSON on stdout.
    for args in (["--socket", sock, "--json", "status", "no-such-run"],
                 ["--socket", sock, "--json", "tasks", "no-such-run"]):
        out = _assert_fast(env, args, tmp_path)
        assert out.code == 1 and out.stderr.startswith(b"error: "), out.stderr
        assert json.loads(out.stdout)["error"]["exit_code"] == 1

    # The installed console script is the fast entry point; `python -m brctl` still works.
    script = BRCTL_SCRIPT.read_text()
    assert "from brctl._entry import main" in script, script
    outputs = []
    for no_fast in ("", "1"):
        result = subprocess.run([str(BRCTL_SCRIPT), "--socket", sock, "--json", "tasks", done],
                                env={**env, "BRCTL_NO_FAST": no_fast}, capture_output=True,
                                timeout=CALL_TIMEOUT_S, check=False)
        assert (result.returncode, result.stderr) == (0, b""), result.stderr
        outputs.append(_stable(result.stdout))
    assert outputs[0] == outputs[1]
    module = daemon.brctl_process("--json", "status", done)
    assert module.returncode == 0 and json.loads(module.stdout)["id"] == done


def test_console_script_entry_point_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["brctl"] == "brctl._entry:main"


# --- no daemon ----------------------------------------------------------------------------
def test_no_daemon_exits_3_naming_the_socket_as_click_does(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    stale = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the file stays: connecting is refused
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases: list[tuple[dict[str, str], list[str], str]] = [
        (env, ["--json", "ping"], "no socket file"),  # the default path under XDG_STATE_HOME
        ({**env, "XDG_RUNTIME_DIR": str(tmp_path / "rt") + "//"}, ["status", "--json"],
         "no socket file"),
        ({**env, "BUILDRUNNER_HOME": str(tmp_path / "h") + "/./"}, ["--json", "runs"],
         "no socket file"),
        (env, ["--json", "--socket", str(stale), "tasks", "r1"], "connection refused"),
        (env, ["--json", f"--socket={a_file}/x.sock", "status", "r1"], "Not a directory"),
        (env, ["--json", "--socket", str(tmp_path) + "/" + "x" * 120, "ping"], "too long"),
        (env, ["--json", "--socket", "rel//./d.sock", "ping"], "no socket file"),
    ]
    for case_env, args, reason in cases:
        out = _assert_fast(case_env, args, tmp_path)
        assert out.code == 3, (args, out.stderr)
        assert reason.encode() in out.stderr and b"Start it with `buildrunnerd &`" in out.stderr
        error = json.loads(out.stdout)["error"]
        assert error["exit_code"] == 3 and error["data"]["socket"] in out.stderr.decode()


def test_anything_else_goes_to_click_unchanged(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    for args in (
        ["status"], ["ping"], ["runs", "--socket", "x.sock"],  # no --json: human output
        ["--json"], ["--json", "--help"], ["--json", "status", "-h"], ["--version"],
        ["--json", "status", "a", "b"], ["--json", "tasks"], ["--json", "ping", "x"],
        ["--json", "logs", "r1"], ["--json", "costs"], ["--json", "status", "--follow", "r1"],
        ["--json", "status", "--", "r1"], ["--json", "status", "-"], ["--json", "--socket"],
        ["--json", "--socket", "--json", "ping"], ["--json", "--socket=", "ping"],
        ["--json=1", "ping"], ["--json", "ping", "--timeout-s", "3"],
        ["--json", "--timeout-s", "0.01", "ping"], ["--json", "--timeout-s", "nan", "ping"],
        ["--json", "nosuch"], ["--json", "status", ""], ["--json", "status", "--sock", "x"],
    ):
        _assert_falls_through(env, args, tmp_path)


def test_a_reader_that_went_away(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = start_daemon()
    for args in (["--socket", str(daemon.socket), "--json", "ping"],
                 ["--socket", str(tmp_path / "none.sock"), "--json", "ping"]):
        codes = []
        for no_fast in ("", "1"):
            read_end, write_end = os.pipe()
            os.close(read_end)  # writing to stdout now fails with EPIPE
            try:
                result = subprocess.run([str(BRCTL_SCRIPT), *args], stdout=write_end,
                                        stderr=subprocess.PIPE, timeout=CALL_TIMEOUT_S,
                                        env={**daemon.env, "BRCTL_NO_FAST": no_fast},
                                        check=False)
            finally:
                os.close(write_end)
            codes.append((result.returncode, result.stderr))
        assert codes[0] == codes[1], (args, codes)


# --- a scripted server: replies a daemon should never send ----------------------------------
class _ScriptedServer:
    """A real Unix socket server answering each request as told by the run id it names."""

    def __init__(self, path: Path, replies: dict[str, Callable[[socket.socket, int], None]]):
        self.path, self.replies = path, replies
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
                key = request.get("params", {}).get("run_id", request["method"])
                self.replies[key](conn, request["id"])

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()


def _reply(result: Any = None, *, error: Any = None, before: bytes = b"",
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
        conn.sendall(before + json.dumps(reply, ensure_ascii=False).encode() + b"\n")
    return send


def _close(conn: socket.socket, _request_id: int) -> None:
    conn.shutdown(socket.SHUT_RDWR)


def _silence(_conn: socket.socket, _request_id: int) -> None:
    time.sleep(1.0)  # longer than the client's --timeout-s


_ODD = {"id": "odd", "state": "running", "tasks": [
    {"id": "t1", "state": "running", "attempts": 1, "cost_usd": 1e-05,
     "title": "ünï \"q\" \\ \t\n\x00\x7f \u2028 😀", "values": [1e16, 1.5e-07, -0.0, 2.5e-05,
                                                            123456789.125, 2**70, -(2**64), 0]},
    {"id": "t2", "state": "pending", "attempts": 0, "cost_usd": 0.0, "files": [], "meta": {}},
]}


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "scripted.sock"
    error = {"code": -32004, "message": "run nope not found"}
    server = _ScriptedServer(path, {
        "daemon.ping": _reply({"version": "0.1.0", "backend": "simulated", "uptime_s": 1.0}),
        "run.list": _reply({"runs": [{"id": "odd", "state": "running"},
                                     {"id": "gone", "state": "failed"}]}),
        "odd": _reply(_ODD, before=b'\n{"jsonrpc": "2.0", "method": "event", "params": {}}\n'
                      b'[{"jsonrpc": "2.0", "id": 99, "result": null}]\n'
                      b'{"jsonrpc": "2.0", "id": 99, "result": 1}\n'),
        "nope": _reply(error=error),
        "scalar": _reply(error={"code": -32004, "message": "x", "data": "just a string"}),
        "nodata": _reply(error={"message": "no code"}),
        "ansi": _reply(error={"code": -32004, "message": "\x1b[31mred\x1b[0m not found"}),
        "spec": _reply(error={"code": protocol.SPEC_INVALID, "message": "invalid spec",
                              "data": {"errors": [{"line": 3, "message": "bad"}]}}),
        "nan": _reply(raw=b'{"jsonrpc": "2.0", "id": 1, "result": {"x": NaN}}\n'),
        "huge": _reply(raw=b'{"jsonrpc": "2.0", "id": 1, "result": {"x": 1e999}}\n'),
        "surrogate": _reply(raw=b'{"jsonrpc": "2.0", "id": 1, "result": {"x": "\\ud800"}}\n'),
        "garbage": _reply(raw=b"this is not JSON\n"),
        "scalar-frame": _reply(raw=b"42\n"),
        "close": _close,
        "silence": _silence,
    })
    yield path
    server.close()


def test_odd_replies_answered_as_click_does(scripted: Path, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    sock = ["--socket", str(scripted)]
    fast_cases = {
        "odd": 0, "nope": 1, "scalar": 1, "nodata": 1, "close": 3,
    }
    for run_id, code in fast_cases.items():
        out = _assert_fast(env, [*sock, "--json", "status", run_id], tmp_path)
        assert out.code == code, (run_id, out.stderr)
    assert _assert_fast(env, [*sock, "--json", "ping"], tmp_path).code == 0
    out = _assert_fast(env, [*sock, "--json", "status"], tmp_path)  # the active ones: odd
    assert [r["id"] for r in json.loads(out.stdout)] == ["odd"]
    out = _assert_fast(env, [*sock, "--json", "--timeout-s", "0.2", "tasks", "silence"],
                       tmp_path)
    assert out.code == 1 and b"did not answer run.get within 0.2 s" in out.stderr
    # What the fast path is not sure to print as click does, click prints.
    for run_id in ("ansi", "spec", "nan", "huge", "surrogate", "garbage", "scalar-frame"):
        out = _assert_falls_through(env, [*sock, "--json", "status", run_id], tmp_path)
        assert out.code != 0, run_id


# --- the copies in _entry agree with their originals ---------------------------------------------
def test_socket_path_rules_agree_with_buildrunnerd_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    values = ["/run/user/1000", "/run/user/1000/", "//net/dir", "///triple", "/", "rel/dir",
              "./rel", "a/../b", "~", "~/x/", "~root/y", "/a//b/./c"]
    envs: list[dict[str, str]] = [{}]
    for name in ("BUILDRUNNER_SOCKET", "XDG_RUNTIME_DIR", "BUILDRUNNER_HOME", "XDG_STATE_HOME"):
        envs += [{name: v} for v in [*values, ""]]
    envs += [{"BUILDRUNNER_SOCKET": "", "XDG_RUNTIME_DIR": "/rt", "BUILDRUNNER_HOME": "/h"},
             {"XDG_RUNTIME_DIR": "", "BUILDRUNNER_HOME": "~/h", "XDG_STATE_HOME": "/s"},
             {"BUILDRUNNER_HOME": "", "XDG_STATE_HOME": "~/s/"}]
    for home in ("/home/u", "/home/u/", "/", "//h"):
        monkeypatch.setenv("HOME", home)
        for env in envs:
            assert _entry.socket_path_str(env) == str(paths.socket_path(env)), (home, env)
    for value in [*values, "", ".", "..", "a/", "//", "////x//y//"]:
        assert _entry.path_str(value) == str(Path(value)), value


def test_constants_agree_with_the_click_cli() -> None:
    assert _entry._SPEC_INVALID == protocol.SPEC_INVALID
    assert _entry._TERMINAL_RUN_STATES == protocol.TERMINAL_RUN_STATES
    assert _entry._RECEIVE_BYTES == _client._RECEIVE_BYTES
    timeout = next(p for p in _cli.main.params if p.name == "timeout_s")
    assert _entry._DEFAULT_TIMEOUT_S == timeout.default
    client = _client.RpcClient(Path("x"))
    assert _entry._CONNECT_TIMEOUT_S == client.connect_timeout_s
    assert (_cli.EXIT_DAEMON_ERROR, _cli.EXIT_UNREACHABLE) == (
        _entry._EXIT_DAEMON_ERROR, _entry._EXIT_UNREACHABLE)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_format_json_is_msgspecs_layout(value: Any) -> None:
    expected = msgspec.json.format(msgspec.json.encode(value), indent=2).decode()
    assert _entry.format_json(value) == expected


def test_format_json_numbers_are_msgspecs() -> None:
    for value in (0.0, -0.0, 1e-05, 2.5e-05, 1e-06, 1.5e-07, 1e15, 9999999999999998.0, 1e16,
                  1e22, 1.7976931348623157e308, 5e-324, 0.1, 123.456, 2**64, -(2**63) - 1):
        assert _entry.format_json([value]) == msgspec.json.format(
            msgspec.json.encode([value]), indent=2).decode(), value
