"""The bash tool (``bash_20250124``): one persistent shell per batch, always confined.

The shell keeps its state (cwd, variables) between commands. Each command is written to a
file and ``source``d with stdin from ``/dev/null``, followed by a marker carrying its exit
status: a syntax error or a command reading stdin cannot swallow the marker. A command that
outlives ``timeout_s`` kills the shell (restarted on the next call, state lost, the model is
told). Output beyond ``max_chars`` keeps its head and tail around a truncation marker.

The shell runs in the daemon's sandbox (:mod:`buildrunnerd.sandbox`): no network, no home, no
secrets, no other socket, the worktree the only writable folder and its ``.git`` read-only.
When the shell ends, everything it started is killed.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from buildrunnerd.agent._confine import ToolError
from buildrunnerd.sandbox import Confinement, open_confined, terminate_confined

__all__ = ["BASH_TOOL_NAME", "BASH_TOOL_TYPE", "BashSession", "bash_tool_param"]

BASH_TOOL_TYPE = "bash_20250124"
BASH_TOOL_NAME = "bash"


def bash_tool_param() -> dict[str, Any]:
    """The tool definition sent to the API."""
    return {"type": BASH_TOOL_TYPE, "name": BASH_TOOL_NAME}


class BashSession:
    """A persistent, confined shell in ``worktree``. Not safe for concurrent calls (the model
    makes one at a time). Raises :class:`~buildrunnerd.errors.SandboxUnavailableError` on the
    first command when the daemon has no working sandbox."""

    def __init__(self, worktree: Path, *, confinement: Confinement, timeout_s: float,
                 max_chars: int) -> None:
        self.worktree = worktree.resolve()
        self.confinement = confinement
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self._proc: anyio.abc.Process | None = None
        # Outside the worktree (never committed); bound read-only into the sandbox.
        self._scratch = Path(tempfile.mkdtemp(prefix="buildrunner-bash-"))
        self._buffer = b""

    async def run(self, params: dict[str, Any]) -> str:
        """Execute one tool call (``command`` or ``restart``)."""
        if params.get("restart"):
            await self._stop()
            await self._start()
            return "The shell has been restarted."
        command = params.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolError("Missing required parameter 'command' (or restart: true).")
        if self._proc is None or self._proc.returncode is not None:
            await self._start()
        assert self._proc is not None and self._proc.stdin is not None
        nonce = secrets.token_hex(8)
        marker = f"__BUILDRUNNER_DONE_{nonce}__"
        script = self._scratch / "cmd.sh"
        await anyio.Path(script).write_text(command + "\n", encoding="utf-8")
        line = f". {script} < /dev/null 2>&1; printf '\\n{marker}%s\\n' \"$?\"\n"
        await self._proc.stdin.send(line.encode())
        try:
            with anyio.fail_after(self.timeout_s):
                output, status = await self._read_until(marker)
        except TimeoutError:
            await self._stop()
            raise ToolError(
                f"The command timed out after {self.timeout_s:g} s and was killed; the shell "
                "was restarted (working directory and variables are reset). Run long jobs "
                "with a timeout or in the background."
            ) from None
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            said = self._buffer.decode("utf-8", errors="replace")[-2000:]
            await self._stop()
            raise ToolError("The shell exited (e.g. `exit` was run); it will be restarted "
                            f"on the next command. Its last output:\n{said}") from None
        text = self._truncate(output.decode("utf-8", errors="replace"))
        if status != 0:
            text = f"{text}\n[exit status {status}]" if text else f"[exit status {status}]"
        return text

    async def aclose(self) -> None:
        """Stop the shell and remove its scratch folder."""
        with anyio.CancelScope(shield=True):
            await self._stop()
        shutil.rmtree(self._scratch, ignore_errors=True)

    # --- internals ---
    async def _start(self) -> None:
        sandbox = self.confinement.require()
        policy = self.confinement.policy(self.worktree, readonly=(str(self._scratch),))
        self._buffer = b""
        # Shielded: a batch cancelled while the shell starts (its turn's record is written
        # meanwhile, so this is no longer rare) must still get the process, to end it.
        with anyio.CancelScope(shield=True):
            self._proc = await open_confined(sandbox, ["bash", "--noprofile", "--norc"],
                                             policy)

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # The whole session: background jobs of the model die with the shell.
            await terminate_confined(proc)

    async def _read_until(self, marker: str) -> tuple[bytes, int]:
        assert self._proc is not None and self._proc.stdout is not None
        needle = f"\n{marker}".encode()
        head_keep = self.max_chars * 2  # bytes kept while reading; the rest is counted only
        collected = bytearray()
        dropped = 0
        while True:
            idx = self._buffer.find(needle)
            if idx != -1:
                end = self._buffer.find(b"\n", idx + len(needle))
                if end != -1:
                    collected += self._buffer[:idx]
                    status = int(self._buffer[idx + len(needle):end] or b"1")
                    self._buffer = self._buffer[end + 1:]
                    if dropped:
                        collected += f"\n[... {dropped} bytes not kept ...]".encode()
                    return bytes(collected), status
            # Keep the tail that could hold a split marker; move the rest to `collected`.
            keep = len(needle) + 8
            if len(self._buffer) > keep:
                chunk, self._buffer = self._buffer[:-keep], self._buffer[-keep:]
                room = head_keep - len(collected)
                collected += chunk[:max(room, 0)]
                dropped += max(len(chunk) - max(room, 0), 0)
            self._buffer += await self._proc.stdout.receive()

    def _truncate(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        half = self.max_chars // 2
        omitted = len(text) - 2 * half
        return (f"{text[:half]}\n[... output truncated: {omitted} characters omitted ...]\n"
                f"{text[-half:]}")
