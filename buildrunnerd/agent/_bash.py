"""The bash tool (``bash_20250124``): one persistent shell per batch, optionally sandboxed.

The shell keeps its state (cwd, variables) between commands. Each command is written to a
file and ``source``d with stdin from ``/dev/null``, followed by a marker carrying its exit
status: a syntax error or a command reading stdin cannot swallow the marker. A command that
outlives ``timeout_s`` kills the shell (restarted on the next call, state lost, the model is
told). Output beyond ``max_chars`` keeps its head and tail around a truncation marker.

The environment is an allowlist: nothing of the daemon's (no ``ANTHROPIC_*``, no
``BUILDRUNNER_SOCKET``, no tokens) reaches the model's commands. With bubblewrap the shell
also runs without network, with the file system read-only except the worktree and a private
``/tmp``, and with the daemon's socket folder hidden.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import structlog

from buildrunnerd.agent._confine import ToolError
from buildrunnerd.errors import AgentError

__all__ = ["BASH_TOOL_NAME", "BASH_TOOL_TYPE", "BashSession", "bash_tool_param",
           "sandbox_mode", "scrubbed_env"]

BASH_TOOL_TYPE = "bash_20250124"
BASH_TOOL_NAME = "bash"
_log = structlog.get_logger("buildrunnerd.agent.bash")

# Only these variables pass into the model's shell; everything else is dropped.
_ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL")
_bwrap_probe: dict[str, bool] = {}


def bash_tool_param() -> dict[str, Any]:
    """The tool definition sent to the API."""
    return {"type": BASH_TOOL_TYPE, "name": BASH_TOOL_NAME}


def scrubbed_env(home: str) -> dict[str, str]:
    """The environment of the model's shell: an allowlist of harmless variables."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_ALLOW}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({"HOME": home, "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat",
                "PYTHONDONTWRITEBYTECODE": "1", "CI": "1"})
    return env


async def sandbox_mode(setting: str) -> Literal["bwrap", "none"]:
    """Decide the sandbox for ``agent.sandbox``: ``auto`` uses bubblewrap when it is installed
    and works here, ``bwrap`` requires it, ``none`` is the explicit opt-out (logged)."""
    if setting == "none":
        _log.warning("sandbox disabled by config (agent.sandbox = \"none\"): the model's "
                     "commands run unconfined, with network, as the daemon's user")
        return "none"
    works = await _bwrap_works()
    if works:
        return "bwrap"
    if setting == "bwrap":
        raise AgentError(
            "agent.sandbox = \"bwrap\" but bubblewrap is missing or cannot create a sandbox "
            "here; install it (apt-get install bubblewrap) or set agent.sandbox = \"auto\"."
        )
    if not _bwrap_probe.get("warned"):
        _bwrap_probe["warned"] = True  # once per daemon, not once per batch
        _log.warning("bubblewrap not available; the model's commands run without a sandbox "
                     "(install bubblewrap for network isolation)")
    return "none"


async def _bwrap_works() -> bool:
    if "ok" in _bwrap_probe:
        return _bwrap_probe["ok"]
    exe = shutil.which("bwrap")
    ok = False
    if exe is not None:
        try:
            with anyio.fail_after(10):
                result = await anyio.run_process(
                    [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-net", "true"],
                    check=False)
            ok = result.returncode == 0
        except (OSError, TimeoutError):
            ok = False
    _bwrap_probe["ok"] = ok
    return ok


class BashSession:
    """A persistent shell confined to ``worktree``. Not safe for concurrent calls (the model
    makes one at a time)."""

    def __init__(self, worktree: Path, *, sandbox: Literal["bwrap", "none"], timeout_s: float,
                 max_chars: int, socket_dir: Path | None = None,
                 hidden_dirs: tuple[Path, ...] = ()) -> None:
        self.worktree = worktree.resolve()
        self.sandbox = sandbox
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self.socket_dir = socket_dir
        # More folders the sandbox hides (the daemon's state dir: its database, the other
        # runs' worktrees); the worktree itself stays visible even when it lies inside one.
        self.hidden_dirs = hidden_dirs
        self._proc: anyio.abc.Process | None = None
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
    def _argv(self) -> list[str]:
        shell = ["bash", "--noprofile", "--norc"]
        if self.sandbox == "none":
            return shell
        wt = str(self.worktree)
        argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--tmpfs", "/tmp", "--unshare-net", "--unshare-pid", "--unshare-ipc",
                "--die-with-parent", "--new-session"]
        # A Unix socket is reachable through a read-only mount: hide the daemon's folder (and
        # the state dir) under empty tmpfs mounts, parents first. The worktree and scratch
        # binds come after, so bwrap re-creates their paths inside a hidden parent.
        hide = {d.resolve() for d in (self.socket_dir, *self.hidden_dirs)
                if d is not None and d.is_dir()}
        for folder in sorted(hide, key=lambda d: len(d.parts)):
            if not folder.is_relative_to(self.worktree):  # never the worktree or inside it
                argv += ["--tmpfs", str(folder)]
        argv += ["--bind", wt, wt, "--ro-bind", str(self._scratch), str(self._scratch)]
        if (self.worktree / ".git").is_dir():
            argv += ["--ro-bind", str(self.worktree / ".git"), str(self.worktree / ".git")]
        return argv + ["--chdir", wt, "--setenv", "HOME", "/tmp", *shell]

    async def _start(self) -> None:
        home = "/tmp" if self.sandbox == "bwrap" else str(self._scratch)
        self._buffer = b""
        self._proc = await anyio.open_process(
            self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=str(self.worktree), env=scrubbed_env(home),
            start_new_session=True,
        )

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            try:
                # The whole process group: background jobs of the model die with the shell.
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        with anyio.move_on_after(5, shield=True):
            await proc.wait()
        await proc.aclose()

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
