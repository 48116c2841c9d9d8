"""sd_notify on a real datagram socket, and socket activation in a real child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildrunnerd.daemon._notify import listen_fds, notify, ready, status, stopping

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def test_ready_stopping_status_arrive(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path}
    assert ready("listening on /run/x.sock", env=env)
    assert sock.recv(4096).decode().split("\n") == [
        "READY=1", f"MAINPID={os.getpid()}", "STATUS=listening on /run/x.sock",
    ]
    assert status("2 runs active\n5 batches running", env=env)
    assert sock.recv(4096) == b"STATUS=2 runs active 5 batches running"
    assert stopping(env=env)
    assert sock.recv(4096) == b"STOPPING=1"


def _fill(path: str) -> int:
    """Send to ``path`` until its receive queue is full; how many datagrams it holds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        sender.connect(path)
        sent = 0
        while True:
            try:
                sender.send(b"STATUS=filler")
            except BlockingIOError:
                return sent
            sent += 1


def test_status_never_waits_for_a_full_queue(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """A receiver that stopped reading (its queue full) loses status lines at once: the
    daemon sends one per run event from its event loop, which must not stall on each. The
    queue is drained a moment after the send: a send that waited for room gets through."""
    sock, path = notify_socket
    held = _fill(path)
    assert held > 0
    drained = threading.Event()

    def drain_later() -> None:
        time.sleep(0.3)
        for _ in range(held):
            sock.recv(4096)
        drained.set()

    drainer = threading.Thread(target=drain_later)
    drainer.start()
    try:
        assert status("1 active run(s)", env={"NOTIFY_SOCKET": path}) is False
    finally:
        drainer.join(timeout=30)
    assert drained.is_set()
    # Nothing of the dropped line arrived later; the next one goes through.
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    assert status("2 active run(s)", env={"NOTIFY_SOCKET": path}) is True
    sock.setblocking(True)
    assert sock.recv(4096) == b"STATUS=2 active run(s)"


def test_abstract_namespace_socket() -> None:
    name = f"buildrunner-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(10)
        assert notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_no_socket_is_a_quiet_no_op(tmp_path: Path) -> None:
    assert notify("READY=1", env={}) is False
    # A socket that went away (the service manager restarted) must not raise either.
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_notify_from_environment_in_a_child_process(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    code = "from buildrunnerd.daemon._notify import ready; raise SystemExit(0 if ready() else 1)"
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NOTIFY_SOCKET": path},
                           timeout=60)
    assert child.returncode == 0
    message = sock.recv(4096).decode()
    assert message.startswith("READY=1\nMAINPID=")
    # MAINPID is the child's own pid, not ours.
    assert message != f"READY=1\nMAINPID={os.getpid()}"


def test_listen_fds_ignores_variables_meant_for_another_process() -> None:
    assert listen_fds({"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}) == []
    assert listen_fds({"LISTEN_FDS": "1"}) == []
    assert listen_fds({}) == []


CHILD = """
import os, socket, sys
from buildrunnerd.daemon._notify import listen_fds
fds = listen_fds()
assert "LISTEN_FDS" not in os.environ, "the variables must not leak to our subprocesses"
assert not os.get_inheritable(fds[0])
server = socket.socket(fileno=fds[0])
conn, _ = server.accept()
conn.sendall(f"fds={fds}".encode())
conn.close()
"""


def test_socket_activation_in_a_real_child(tmp_path: Path) -> None:
    # Do what systemd does: bind the socket, hand it over as fd 3 with LISTEN_PID set to the
    # pid of the process that will run (a shell that execs Python keeps its pid; bash, as
    # dash only redirects fds 0-9).
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    fd = listener.fileno()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        ["bash", "-c", f'exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$1"',
         sys.executable, str(script)],
        pass_fds=(fd,), stderr=subprocess.PIPE,
    )
    listener.close()  # the child owns it now
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(30)
            client.connect(str(path))
            data = client.recv(100)
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        assert data == b"fds=[3]"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
