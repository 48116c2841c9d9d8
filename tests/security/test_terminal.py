"""What the model names reaches the user's terminal: file names in events, reasons, summaries.
A name with escape sequences (set the window title, write the clipboard with OSC 52, move the
cursor to overwrite what the user reads) must be shown, not obeyed, by ``brctl`` on a tty."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import anyio

from tests.security._lab import Lab, account, bash, edit

OSC_TITLE = "\x1b]0;PWNED-TITLE\x07"
OSC_CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4K\x07"


async def _on_a_tty(lab: Lab, *args: str) -> bytes:
    """``brctl ARGS`` with its stdout on a pseudo-terminal (as a user's shell has it)."""
    master, slave = os.openpty()
    try:
        argv = [sys.executable, "-m", "brctl", "--socket", str(lab.socket), *args]
        env = {"PATH": lab.path_env, "HOME": str(lab.home), "LANG": "C.UTF-8",
               "TERM": "xterm-256color", "COLUMNS": "200"}
        process = await anyio.open_process(argv, stdout=slave, stderr=slave, env=env,
                                           cwd=lab.base, **lab.user.popen())
        os.close(slave)
        slave = -1
        out = bytearray()
        with anyio.fail_after(60):
            while True:
                await anyio.wait_readable(master)
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                out += chunk
            await process.wait()
        return bytes(out)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)


async def test_escape_sequences_in_names_are_not_sent_to_the_terminal(
        lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(account())
    turns = [
        [bash(f"mkdir -p app && printf x > \"app/$(printf '{OSC_TITLE}')t.py\" && ls app")],
        [edit(f"app/c{OSC_CLIPBOARD}.py", "X = 1\n")],
    ]
    await lab.start(lab.responder({"app/db.py": turns}))
    run_id = await lab.submit()
    await lab.finish(run_id)
    shown = await _on_a_tty(lab, "logs", run_id)
    assert b"PWNED-TITLE" in shown, shown[-2000:]  # the name is shown...
    for args in (("logs", run_id), ("tasks", run_id), ("status", run_id),
                 ("task", f"{run_id}:storage.1"), ("export", run_id)):
        shown = await _on_a_tty(lab, *args)
        assert b"\x1b]0;" not in shown and b"\x1b]52;" not in shown, (args, shown[-2000:])
        assert b"\x07" not in shown, args  # ...not obeyed
    await lab.assert_contained(run_id)
    await lab.stop()
