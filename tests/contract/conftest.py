"""Module-scoped real daemons for the contract tests (one per test module that needs it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract._support import Daemon, clean_env, make_repo, start_daemon

# The config file given through BUILDRUNNER_CONFIG: a non-default worker count, so `ping`
# shows that the file was read.
CONFIG_WORKERS = 3


def _module_daemon(workdir: Path, config: str, **env: str) -> Iterator[Daemon]:
    """A real ``buildrunnerd`` for one test module: ``config`` given through
    BUILDRUNNER_CONFIG, state and socket under ``workdir`` (the socket's folder is left for the
    daemon to create)."""
    config_path = workdir / "config.toml"
    config_path.write_text(config, encoding="utf-8")
    socket_path = workdir / "rt" / "brd.sock"
    started = start_daemon(workdir, env=clean_env(
        BUILDRUNNER_HOME=str(workdir / "state"), BUILDRUNNER_SOCKET=str(socket_path),
        BUILDRUNNER_CONFIG=str(config_path), **env), socket_path=socket_path)
    try:
        yield started
    finally:
        started.stop_sync()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A real ``buildrunnerd`` (no API key: simulated backend), state and socket in tmp."""
    yield from _module_daemon(tmp_path_factory.mktemp("brd"),
                              f"[daemon]\nworkers = {CONFIG_WORKERS}\n")


@pytest.fixture(scope="module")
def slow_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose simulated batches take ~a day (BUILDRUNNER_SIM_MS_PER_MINUTE), so runs
    stay in flight for as long as a test needs (pause, resume, cancel, shutdown)."""
    yield from _module_daemon(tmp_path_factory.mktemp("slow"),
                              "[daemon]\nworkers = 2\ngrace_period_s = 3.0\n",
                              BUILDRUNNER_SIM_MS_PER_MINUTE="1000000")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real git repository holding ``PROJECT_SPEC.md`` (the tiny spec); the repo's path."""
    path = tmp_path_factory.mktemp("repo") / "project"
    make_repo(path)
    return path
