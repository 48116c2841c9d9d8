"""`brctl status --follow` without RUN, a view to leave open: every run including later ones,
open until interrupted or (--exit-when-idle) idle; on a terminal (tmux) it redraws cleanly when
the window is resized."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.brctl.brctl_support import BRCTL, Daemon

WAIT_S = 60.0


def _submit(daemon: Daemon, spec: Path) -> str:
    result = daemon.brctl("--json", "submit", str(spec))
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["run_id"])


Event = dict[str, Any]


def _read_until(stream: IO[str], done: Callable[[Event], bool]) -> list[Event]:
    """JSON lines from ``stream`` up to and including the first one ``done`` accepts."""
    events: list[Event] = []
    while True:
        line = stream.readline()
        assert line, f"the follower ended early after {events[-3:]}"
        events.append(json.loads(line))
        if done(events[-1]):
            return events


def _ended(run_id: str) -> Callable[[Event], bool]:
    return lambda e: e["run_id"] == run_id and e["type"] == "run.succeeded"


@pytest.fixture
def follower(daemon: Daemon) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*BRCTL, "--socket", str(daemon.socket), *args], env=daemon.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()  # waits, and closes its pipes


def test_follows_runs_submitted_later_and_stays_open(
    daemon: Daemon, realworld_repo: Path, follower: Callable[..., subprocess.Popen[str]]
) -> None:
    spec = realworld_repo / "PROJECT_SPEC.md"
    earlier = _submit(daemon, spec)
    assert daemon.brctl("status", earlier, "--follow").exit_code == 0  # ended before
    watch = follower("--json", "status", "--follow")
    assert watch.stdout is not None
    # Started with nothing active; both runs come after it.
    first = _submit(daemon, spec)
    events = _read_until(watch.stdout, _ended(first))
    assert watch.poll() is None  # the run ended; the view stays open
    second = _submit(daemon, spec)
    events += _read_until(watch.stdout, _ended(second))
    assert watch.poll() is None

    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))  # each event once, in order
    assert {e["run_id"] for e in events} == {first, second}  # nothing of the ended run
    for run_id in (first, second):
        types = [e["type"] for e in events if e["run_id"] == run_id]
        assert types[0] == "run.submitted" and types[-1] == "run.succeeded", types
    watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=WAIT_S) == 130
    assert watch.stderr is not None and "interrupted" in watch.stderr.read()


def test_exit_when_idle(
    start_daemon: Callable[..., Daemon], realworld_repo: Path, tmp_path: Path
) -> None:
    daemon = start_daemon(ms_per_minute=20)  # a few seconds per run
    idle = daemon.brctl_process("status", "--follow", "--exit-when-idle")
    assert (idle.returncode, idle.stdout) == (0, "no active runs\n"), idle.stderr

    spec = realworld_repo / "PROJECT_SPEC.md"
    first = _submit(daemon, spec)
    watch = subprocess.Popen(
        [*BRCTL, "--socket", str(daemon.socket), "status", "--follow", "--exit-when-idle"],
        env=daemon.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert watch.stdout is not None
        seen = [watch.stdout.readline()]  # following the first run, mid-run
        second = _submit(daemon, spec)  # while the first still runs
        rest, errors = watch.communicate(timeout=WAIT_S * 2)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, errors
    lines = [*seen, *rest.splitlines()]
    ended = [line.split()[1] for line in lines if " run succeeded" in line]
    assert sorted(ended) == sorted([first, second])
    # Plain lines: the time, the run, the batch, what happened.
    assert any(re.fullmatch(rf"\d\d:\d\d:\d\d {first} B\d+ dispatched.*", line.strip())
               for line in lines), lines


# --- on a terminal: tmux ------------------------------------------------------------------
class Tmux:
    """A private tmux server (its own socket) with one window running a command."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.base = ["tmux", "-S", str(socket)]
        self.env = env

    def run(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def screen(self) -> list[str]:
        return self.run("capture-pane", "-p", "-t", "view").splitlines()

    def wait_for(self, check: Callable[[list[str]], bool], what: str) -> list[str]:
        deadline = time.monotonic() + WAIT_S
        while True:
            lines = self.screen()
            if check(lines):
                return lines
            if time.monotonic() > deadline:
                pytest.fail(f"tmux never showed {what}:\n" + "\n".join(lines))
            time.sleep(0.1)  # polling the pane for a condition, bounded by the deadline


def _one_clean_panel(lines: list[str], width: int) -> bool:
    """Exactly one panel, drawn for ``width`` columns: no left-over frame of another size."""
    tops = [i for i, line in enumerate(lines) if line.startswith("╭─ run ")]
    bottoms = [i for i, line in enumerate(lines) if line.startswith("╰")]
    if len(tops) != 1 or len(bottoms) != 1 or tops[0] != 0:
        return False
    frame = lines[tops[0]:bottoms[0] + 1]
    return all(len(line) == width for line in frame) and all(
        line.startswith("│") and line.endswith("│") for line in frame[1:-1]
    ) and all(not line.strip() for line in lines[bottoms[0] + 1:])


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_terminal_view_in_tmux_redraws_cleanly_on_resize(
    start_daemon: Callable[..., Daemon], realworld_repo: Path, tmp_path: Path
) -> None:
    daemon = start_daemon(ms_per_minute=30)
    env = {k: v for k, v in daemon.env.items() if k not in ("COLUMNS", "LINES", "TMUX")}
    env["TERM"] = "xterm-256color"
    tmux = Tmux(tmp_path / "tmux.sock", env)
    command = shlex.join([*BRCTL, "--socket", str(daemon.socket), "status", "--follow"])
    tmux.run("new-session", "-d", "-s", "view", "-x", "110", "-y", "40",
             f"{command}; echo EXITED $?; sleep 600")
    try:
        tmux.wait_for(lambda s: any("waiting for the next one" in line for line in s),
                      "the empty view")
        run_id = _submit(daemon, realworld_repo / "PROJECT_SPEC.md")
        event_line = re.compile(r"│ \d\d:\d\d:\d\d B\d+ ")
        lines = tmux.wait_for(
            lambda s: any(f"run {run_id}" in line for line in s)
            and any(event_line.match(line) for line in s) and any("ETA" in line for line in s)
            and _one_clean_panel(s, 110),
            "the run's panel with event lines and an ETA")
        assert any(re.search(r"│ batch +model +tasks +(turns +)?elapsed", line) for line in lines)

        tmux.run("resize-window", "-t", "view", "-x", "64", "-y", "30")
        tmux.wait_for(lambda s: _one_clean_panel(s, 64), "one clean panel at 64 columns")
        tmux.run("resize-window", "-t", "view", "-x", "100", "-y", "36")
        tmux.wait_for(lambda s: _one_clean_panel(s, 100), "one clean panel at 100 columns")

        # The run ends; the view says so and stays open for the next one.
        final = tmux.wait_for(
            lambda s: any(line.startswith(f"run {run_id} succeeded") for line in s)
            and any("waiting for the next one" in line for line in s), "the run's end")
        assert not any("EXITED" in line for line in final)
    finally:
        subprocess.run([*tmux.base, "kill-server"], env=env, check=False, timeout=30)
    assert os.path.exists(daemon.socket)  # the view did not disturb the daemon


def test_python_module_and_console_script_are_the_same_client() -> None:
    script = Path(sys.executable).parent / "brctl"
    assert "from brctl._cli import console_main" in script.read_text()
    main_module = Path(__file__).parents[2] / "brctl" / "__main__.py"
    assert "from brctl._cli import console_main" in main_module.read_text()
