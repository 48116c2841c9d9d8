"""The real daemon's socket under abuse: another uid, malformed and oversize frames. Through it
all the daemon keeps serving brctl."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buildrunnerd import protocol
from tests.brctl.brctl_support import Daemon

SOCKET_TIMEOUT_S = 10.0

_AS_NOBODY = r"""
import json, os, socket, sys
os.setgid(65534)
os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"run.list"}\n')
data = b""
while chunk := s.recv(65536):
    data += chunk
print(json.dumps({"uid": os.getuid(), "received": data.decode()}))
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder uid 65534 can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="brctl-e2e-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _exchange(path: Path, payload: bytes) -> list[dict[str, Any]]:
    """Send raw bytes, half-close, read every reply line until the daemon closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(SOCKET_TIMEOUT_S)
        raw.connect(str(path))
        try:
            raw.sendall(payload)
            raw.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-frame: the reply explaining why is still there to read
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_daemon_refuses_another_uid_and_keeps_serving(
    start_daemon: Callable[..., Daemon], open_dir: Path
) -> None:
    if os.getuid() != 0:
        pytest.fail("this test drops to uid 65534 and must run as root (as CI does)")
    daemon = start_daemon(socket=open_dir / "d.sock")
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    daemon.socket.chmod(0o666)  # past the file mode, the uid check is what 65534 meets
    probe = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(daemon.socket)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert probe.returncode == 0, probe.stderr
    out = json.loads(probe.stdout)
    assert out["uid"] == 65534
    reply = json.loads(out["received"].splitlines()[0])
    assert reply["error"]["code"] == protocol.UNAUTHORIZED
    assert "result" not in reply
    assert daemon.brctl("ping").exit_code == 0


def test_malformed_and_oversize_frames_do_not_stop_the_daemon(daemon: Daemon) -> None:
    replies = _exchange(daemon.socket, b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping"\n'
                                       b'[]\n'
                                       b'{"jsonrpc":"2.0","id":2,"method":"run.explode"}\n'
                                       b'{"jsonrpc":"2.0","id":3,"method":"run.get","params":{}}\n'
                                       b'{"jsonrpc":"2.0","id":4,"method":"daemon.ping"}\n')
    codes = [r.get("error", {}).get("code") for r in replies]
    assert codes == [protocol.PARSE_ERROR, protocol.INVALID_REQUEST, protocol.METHOD_NOT_FOUND,
                     protocol.INVALID_PARAMS, None]
    assert replies[-1]["id"] == 4

    limit = protocol.DEFAULT_MAX_FRAME_BYTES
    oversize = _exchange(daemon.socket, b'{"jsonrpc":"2.0","id":5,"method":"x","params":"'
                         + b"a" * (limit + 10) + b'"}\n')
    assert oversize[0]["error"]["code"] == protocol.FRAME_TOO_LARGE
    assert daemon.brctl("ping").exit_code == 0
    assert daemon.process.poll() is None
