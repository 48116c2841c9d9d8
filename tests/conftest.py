"""Shared fixtures: real ``buildrunnerd`` subprocesses on a socket of the test
(:mod:`tests.daemons`, ready when their ``READY=1`` arrives), and specs written by tests.

The harness's names are re-exported here under the names the tests have always imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import Daemon as DaemonProcess
from tests.daemons import Daemons as DaemonFactory
from tests.rpc_clients import RpcClient, RpcError, all_events, wait_run_event

__all__ = ["DaemonFactory", "DaemonProcess", "RpcClient", "RpcError", "all_events",
           "daemon_factory", "project_env_root", "wait_run_event", "write_spec"]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start real ``buildrunnerd`` subprocesses (simulated backend) on a socket of this test."""
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


def write_spec(path: Path, features: list[tuple[str, str, list[str], list[str]]],
               *, title: str = "Test project", test_command: str | None = None) -> Path:
    """Write a native-format spec: ``(name, domain, depends_on names, files)`` per feature."""
    lines = [f"# {title}", "", "A project written by the tests.", ""]
    if test_command:
        lines += [f"Test command: `{test_command}`", ""]
    lines += ["## Features", ""]
    for name, domain, deps, files in features:
        lines += [f"### {name}", ""]
        if deps:
            lines += [f"**Depends on:** {', '.join(deps)}", ""]
        lines += [f"Domain: {domain}", "", "#### Requirements"]
        lines += [f"- [ ] `{f}` implements {name.lower()}." for f in files]
        lines += ["", "#### Acceptance Criteria", f"- [ ] {name} works.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def project_env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the shared project venv of :mod:`tests.projectenv` lives."""
    return tmp_path_factory.mktemp("projectenv")
