"""Fixtures for the brctl tests: a real buildrunnerd subprocess and a real git repository."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.brctl.brctl_support import (
    DAEMON_STOP_TIMEOUT_S,
    REALWORLD_SPECS,
    Daemon,
    base_env,
    make_repo,
    wait_ready,
)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start a real buildrunnerd (simulated backend) on a socket under tmp_path."""
    started: list[Daemon] = []

    def start(
        *, ms_per_minute: float = 0.0, workers: int = 4, socket: Path | None = None
    ) -> Daemon:
        env = base_env(tmp_path)
        env["BUILDRUNNER_SIM_MS_PER_MINUTE"] = str(ms_per_minute)
        home = tmp_path / "home"
        sock = socket or tmp_path / "run" / "d.sock"
        log = tmp_path / f"daemon-{len(started)}.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "buildrunnerd", "--socket", str(sock), "--home", str(home),
                 "--backend", "simulated", "--workers", str(workers)],
                env=env, stdout=log_file, stderr=subprocess.STDOUT,
            )
        daemon = Daemon(sock, home, process, env, log)
        started.append(daemon)
        wait_ready(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGTERM)
            try:
                daemon.process.wait(timeout=DAEMON_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait()


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon()


@pytest.fixture
def realworld_repo(tmp_path: Path) -> Path:
    """A git repo holding a real-world spec from the shared corpus."""
    spec = REALWORLD_SPECS / "commit-analyzer-PROJECT_SPEC.md"
    assert spec.exists(), f"missing shared spec {spec}"
    repo = make_repo(tmp_path / "repo", {"PROJECT_SPEC.md": spec.read_text(),
                                         "README.md": "demo\n"})
    return repo
