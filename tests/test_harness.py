"""The daemon harness (tests/daemons.py) itself: it waits for the daemon's own READY=1, fails
at once with the daemon's stderr when it exits first, fails a daemon that does not stop, and
wakes on log lines. A harness that passed a broken daemon would make every suite lie."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.daemons import Daemons

# Stand-ins for a daemon, so each failure of the harness can be provoked exactly.
SEND = ("import os, socket, sys, time\n"
        "def send(text):\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "    s.sendto(text.encode(), os.environ['NOTIFY_SOCKET'])\n")
READY_THEN_IGNORE_SIGTERM = SEND + (
    "import signal\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "send(f'READY=1\\nMAINPID={os.getpid()}')\n"
    "time.sleep(120)\n")
READY_FOR_ANOTHER_PID = SEND + "send('READY=1\\nMAINPID=1')\ntime.sleep(120)\n"
LOGS_THEN_READY = SEND + (
    "print('{\"event\": \"a\"}', file=sys.stderr, flush=True)\n"
    "print('not json', file=sys.stderr, flush=True)\n"
    "send(f'READY=1\\nMAINPID={os.getpid()}')\n"
    "time.sleep(0.2)\n"
    "print('{\"event\": \"a\", \"n\": 2}', file=sys.stderr, flush=True)\n"
    "send('STOPPING=1')\n")


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_a_daemon_that_exits_before_ready_fails_at_once_with_its_stderr(
    daemon_factory: Daemons, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nworkerz = 2\n")
    with pytest.raises(AssertionError) as failure:
        daemon_factory.start_sync("--config", str(bad))
    message = str(failure.value)
    # The exit was seen (not the deadline), and the daemon's own error is shown.
    assert "exited (1) before it sent 'READY=1'" in message
    assert "daemon.workerz" in message


def test_no_ready_in_time_fails_and_the_process_is_killed(daemon_factory: Daemons) -> None:
    with pytest.raises(AssertionError, match="sent no 'READY=1' in 0.5s"):
        daemon_factory.start_sync(command=_python("import time; time.sleep(120)"), backend=None,
                           timeout_s=0.5)
    assert daemon_factory.started[0].proc.poll() is not None


def test_ready_from_another_pid_is_not_this_daemons(daemon_factory: Daemons) -> None:
    with pytest.raises(AssertionError, match="MAINPID"):
        daemon_factory.start_sync(command=_python(READY_FOR_ANOTHER_PID), backend=None)


def test_a_daemon_that_ignores_sigterm_fails_the_stop_and_is_killed(
    daemon_factory: Daemons,
) -> None:
    daemon = daemon_factory.start_sync(command=_python(READY_THEN_IGNORE_SIGTERM), backend=None)
    with pytest.raises(AssertionError, match="still running after 0.5s"):
        daemon.stop_sync(timeout_s=0.5)
    assert daemon.proc.returncode == -signal.SIGKILL


def test_log_lines_and_notify_lines_are_waited_on(daemon_factory: Daemons) -> None:
    daemon = daemon_factory.start_sync(command=_python(LOGS_THEN_READY), backend=None,
                                follow_stderr=True)
    assert daemon.notifications[:2] == ["READY=1", f"MAINPID={daemon.pid}"]
    records = daemon.wait_log("a", count=2)
    assert [r.get("n") for r in records] == [None, 2]
    daemon.wait_notify("STOPPING=1")
    assert daemon.wait_sync() == 0
    assert daemon.log("a") == records and "not json" in daemon.stderr()
    with pytest.raises(AssertionError, match="fewer than 3"):
        daemon.wait_log("a", count=3)  # the stream has ended: no wait to the deadline
