"""Support for the brctl tests: a real buildrunnerd subprocess, a real git repository."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from brctl._cli import main as brctl_main
from brctl._client import DaemonUnreachableError, RpcClient

# The real-world corpus, copied into the repository (attribution in its README.md).
REALWORLD_SPECS = Path(__file__).resolve().parents[1] / "data" / "realworld"
DAEMON_READY_TIMEOUT_S = 30.0
DAEMON_STOP_TIMEOUT_S = 30.0
BRCTL = [sys.executable, "-m", "brctl"]


def base_env(tmp_path: Path) -> dict[str, str]:
    """An environment that cannot reach the user's daemon, config or the model API."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "BUILDRUNNER_", "XDG_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    return env


@dataclass
class Daemon:
    socket: Path
    home: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    runner: CliRunner = field(default_factory=CliRunner)

    def brctl(self, *args: str) -> Result:
        """Run brctl in-process (click's CliRunner) against this daemon."""
        return self.runner.invoke(brctl_main, ["--socket", str(self.socket), *args],
                                  catch_exceptions=False)

    def brctl_process(
        self, *args: str, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the real brctl in a subprocess against this daemon."""
        return subprocess.run([*BRCTL, "--socket", str(self.socket), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout_s, check=False)

    def client(self) -> RpcClient:
        return RpcClient(self.socket, timeout_s=30.0)


def wait_ready(daemon: Daemon) -> None:
    deadline = time.monotonic() + DAEMON_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            pytest.fail(f"buildrunnerd exited early:\n{daemon.log.read_text()}")
        try:
            with daemon.client() as client:
                client.call("daemon.ping")
                return
        except DaemonUnreachableError:
            time.sleep(0.05)  # polling a readiness condition, bounded by the deadline
    pytest.fail(f"buildrunnerd not ready after {DAEMON_READY_TIMEOUT_S} s:\n"
                f"{daemon.log.read_text()}")


def make_repo(path: Path, files: dict[str, str]) -> Path:
    """A git repository at ``path`` with ``files`` committed on main."""
    path.mkdir(parents=True)
    git = ["git", "-c", "user.name=BuildRunner Tests", "-c", "user.email=tests@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(path)], check=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    subprocess.run([*git, "-C", str(path), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(path), "commit", "-q", "-m", "initial"], check=True)
    return path
