"""Fixtures for the brctl tests: a real buildrunnerd subprocess and a real git repository."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.brctl.brctl_support import REALWORLD_SPECS, Daemon, base_env, make_repo
from tests.daemons import Daemons


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start a real buildrunnerd (simulated backend) on a socket under tmp_path, ready once it
    sent READY=1; at teardown SIGTERM, then a kill for one that does not stop."""
    home = tmp_path / "home"
    factory = Daemons(tmp_path, home=home, socket=tmp_path / "run" / "d.sock")

    def start(
        *, ms_per_minute: float = 0.0, workers: int = 4, socket: Path | None = None
    ) -> Daemon:
        env = base_env(tmp_path)
        env["BUILDRUNNER_SIM_MS_PER_MINUTE"] = str(ms_per_minute)
        sock = socket or factory.socket
        return Daemon(factory.start_sync(
            "--socket", str(sock), "--home", str(home), "--workers", str(workers),
            env=env, socket=sock))

    try:
        yield start
        for daemon in factory.started:
            if daemon.proc.poll() is None:
                daemon.stop_sync()
    finally:
        factory.close()


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
