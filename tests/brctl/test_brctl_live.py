"""``brctl status --follow`` as users run it: a real brctl process on a pseudo-terminal (rich
redraws in place) and on a pipe (plain lines), fed a recorded run by a real socket server."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import anyio

from buildrunnerd.rpc import RpcServer
from tests.brctl.brctl_recorded import failed_run, recorded_dispatcher
from tests.brctl.brctl_support import base_env

BRCTL = [sys.executable, "-m", "brctl"]
PROCESS_TIMEOUT_S = 60.0


def _read_until_eof(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:  # Linux reports the closed slave side as EIO
            if exc.errno == errno.EIO:
                break
            raise
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def _follow(tmp_path: Path, *, on_pty: bool) -> tuple[int, str]:
    snapshot, events = failed_run()
    sock = tmp_path / "fake.sock"
    env = base_env(tmp_path)
    env["TZ"] = "UTC"  # event lines show local time; the recorded events are at 18:00 UTC
    env.update({"TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"})
    async with anyio.create_task_group() as tg:
        dispatcher = recorded_dispatcher(tg, snapshot, events, live_after=6, delay_s=0.05)
        await tg.start(RpcServer(sock, dispatcher).serve)
        command = [*BRCTL, "--socket", str(sock), "status", snapshot["id"], "--follow"]
        with anyio.fail_after(PROCESS_TIMEOUT_S):
            if on_pty:
                master, slave = pty.openpty()
                fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
                process = await anyio.open_process(
                    command, stdin=slave, stdout=slave, stderr=slave, env=env
                )
                os.close(slave)
                try:
                    raw = await anyio.to_thread.run_sync(_read_until_eof, master)
                finally:
                    os.close(master)
                code = await process.wait()
                output = raw.decode(errors="replace")
            else:
                result = await anyio.run_process(command, env=env, check=False,
                                                 stderr=subprocess.STDOUT)
                code, output = result.returncode, result.stdout.decode()
        tg.cancel_scope.cancel()
    return code, output


async def test_follow_on_a_terminal_redraws_in_place(tmp_path: Path) -> None:
    code, output = await _follow(tmp_path, on_pty=True)
    assert code == 1, output  # the recorded run failed
    # rich's Live display moves the cursor up and erases lines to redraw the same block.
    assert "\x1b[1A" in output or "\x1b[A" in output, output[-2000:]
    assert "\x1b[2K" in output
    assert "━" in output  # the progress bar
    assert "claude-sonnet-5-5" in output  # a running batch's model
    assert "spend $0.0367 of $1.0000 budget" in output
    assert "run r-0a1b2c3d failed: 1/4 tasks succeeded" in output
    # Not the piped format.
    assert "[1/4 succeeded]" not in output


async def test_follow_on_a_pipe_prints_plain_lines(tmp_path: Path) -> None:
    code, output = await _follow(tmp_path, on_pty=False)
    _, events = failed_run()
    assert code == 1, output
    assert "\x1b[" not in output
    lines = output.splitlines()
    assert len(lines) == len(events)  # one line per event, each once
    assert lines[0].startswith("18:00:00 r-0a1b2c3d run submitted: Todo API")
    assert lines[-1].startswith("18:00:03 r-0a1b2c3d run failed")


async def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    snapshot, events = failed_run()
    # Far more output than a pipe buffers, so brctl is still writing when `head` exits.
    many = [{**events[4], "id": i + 1, "data": {"path": f"src/module_{i}.py"},
             "type": "file.created"} for i in range(5000)]
    sock = tmp_path / "fake.sock"
    async with anyio.create_task_group() as tg:
        dispatcher = recorded_dispatcher(tg, snapshot, many, live_after=0, delay_s=0)
        await tg.start(RpcServer(sock, dispatcher).serve)
        command = " ".join(shlex.quote(part) for part in
                           [*BRCTL, "--socket", str(sock), "logs", snapshot["id"]])
        with anyio.fail_after(PROCESS_TIMEOUT_S):
            result = await anyio.run_process(
                ["bash", "-c", f"set -o pipefail; {command} | head -1"],
                env=base_env(tmp_path), check=False,
            )
        tg.cancel_scope.cancel()
    assert result.stdout.decode().count("\n") == 1
    assert "created src/module_0.py" in result.stdout.decode()
    assert result.stderr.decode() == ""
    assert result.returncode == 0
