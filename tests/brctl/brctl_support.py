"""Support for the brctl tests: a real buildrunnerd (the harness of :mod:`tests.daemons`)
driven by brctl, and a real git repository."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner, Result

from brctl._cli import main as brctl_main
from brctl._client import RpcClient
from tests import daemons

# The real-world corpus, copied into the repository (attribution in its README.md).
REALWORLD_SPECS = Path(__file__).resolve().parents[1] / "data" / "realworld"
BRCTL = [sys.executable, "-m", "brctl"]


def base_env(tmp_path: Path) -> dict[str, str]:
    """An environment that cannot reach the user's daemon, config or the model API."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "BUILDRUNNER_", "XDG_", "NOTIFY_SOCKET"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    return env


@dataclass
class Daemon:
    """A running daemon of the harness, with brctl (in-process and as a subprocess) and
    brctl's own client pointed at it."""

    running: daemons.Daemon
    runner: CliRunner = field(default_factory=CliRunner)

    @property
    def socket(self) -> Path:
        return self.running.socket

    @property
    def home(self) -> Path:
        return self.running.home

    @property
    def env(self) -> dict[str, str]:
        return self.running.env

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.running.proc

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


@contextlib.contextmanager
def time_zone(tz: str) -> Iterator[None]:
    """Run with the local time zone ``tz`` (a POSIX TZ string: no tz database needed), then
    restore the one before."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()
