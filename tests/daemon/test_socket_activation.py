"""systemd socket activation: ``systemd/buildrunnerd.socket`` passes systemd's checks with the
service, and a daemon started by ``systemd-socket-activate`` (the systemd package's tool for
exactly this) serves the socket it was given (``LISTEN_FDS``), runs work on it, and leaves the
socket file to its owner at exit."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest

from brctl._service import render_socket_unit, render_unit
from tests.daemons import PYTHON_M, Daemons
from tests.rpc_clients import wait_run_event

ROOT = Path(__file__).resolve().parents[2]
SPEC = """# Activated

Built by a socket-activated daemon.

## Features

### Storage

Domain: database

#### Requirements
- [ ] `app/db.py` stores things.

#### Acceptance Criteria
- [ ] Storage works.
"""


def test_shipped_socket_unit_is_the_rendered_one_and_passes_systemd_analyze(
    tmp_path: Path,
) -> None:
    assert (ROOT / "systemd" / "buildrunnerd.socket").read_text() == render_socket_unit()
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is required (CI installs systemd)"
    units = tmp_path / "units"
    units.mkdir()
    (units / "buildrunnerd.socket").write_text(render_socket_unit())
    (units / "buildrunnerd.service").write_text(render_unit(sys.executable))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    result = subprocess.run([tool, "verify", "--user", "buildrunnerd.socket"], cwd=units,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_the_unit_finds_local_tools_and_sees_tmp() -> None:
    unit = render_unit()
    assert "Environment=PATH=%h/.local/bin:" in unit
    assert not any(line.startswith("PrivateTmp=") for line in unit.splitlines())
    assert "ReadWritePaths=%h %t /tmp /var/tmp" in unit


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are short; tmp_path can be too long for one.
    path = Path(tempfile.mkdtemp(prefix="brsa-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_a_socket_activated_daemon_serves_the_socket_it_was_given(
    short_dir: Path, tmp_path: Path
) -> None:
    tool = shutil.which("systemd-socket-activate")
    assert tool, "systemd-socket-activate is required (CI installs systemd)"
    sock = short_dir / "d.sock"
    home = tmp_path / "home"
    daemons = Daemons(tmp_path, home=home, socket=sock)
    # The tool gives the program only the variables named here (and LISTEN_*); NOTIFY_SOCKET
    # is the harness's, as systemd would pass its own.
    launcher = [tool, "-l", str(sock), "-E", "PATH", "-E", "NOTIFY_SOCKET",
                "-E", f"HOME={tmp_path}", "-E", f"BUILDRUNNER_HOME={home}",
                "-E", "BUILDRUNNER_LOG_FORMAT=json", "-E", "BUILDRUNNER_SIM_MS_PER_MINUTE=0",
                *PYTHON_M]
    try:
        daemon = daemons.spawn(command=launcher, follow_stderr=True)
        # The launcher's own readiness line; nothing of the daemon has started yet.
        await anyio.to_thread.run_sync(partial(
            daemon.wait_stderr, lambda line: line.startswith("Listening on")))
        # Our connection is what starts the daemon (in the launcher's process).
        async with daemon.client() as client:
            ping = await client.call("daemon.ping", timeout_s=60)
            assert ping["socket"] == str(sock) and ping["home"] == str(home)
            assert ping["pid"] == daemon.pid
            await daemon.ready()  # and it tells the service manager it is ready
            run = await client.call("run.submit", spec_text=SPEC)
            assert (await wait_run_event(sock, run["id"]))["type"] == "run.succeeded"
            await client.call("daemon.shutdown")
        assert await daemon.wait(60) == 0, daemon.stderr()
    finally:
        daemons.close()
    log = daemon.stderr()
    assert '"activated": true' in log or '"activated":true' in log, log
    # The socket belongs to whoever passed it: the daemon neither replaced nor removed it.
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
