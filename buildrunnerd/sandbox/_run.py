"""Starting confined commands, and making sure nothing of them is left when they end.

:func:`run_confined` runs a command to completion (the test command, the import check) with a
timeout and a bounded output tail. :func:`open_confined` starts a long-lived one (the bash
tool's shell, a backend's CLI) and :func:`terminate_confined` ends it. Either way the command
gets its own session, and when it ends (or times out, or the caller is cancelled) the whole
session is killed; under bubblewrap the PID namespace dies with it as well, so a background
process that escaped its group dies too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence

import anyio
import anyio.abc
import msgspec

from buildrunnerd.errors import SandboxError
from buildrunnerd.sandbox._policy import Sandbox, SandboxPolicy, Wrapped

__all__ = ["ConfinedResult", "open_confined", "run_confined", "terminate_confined"]

DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024


class ConfinedResult(msgspec.Struct, frozen=True):
    """How a confined command ended. ``output`` is stdout and stderr merged, its last
    ``max_output_bytes`` only (``output_bytes`` counts all of it)."""

    returncode: int | None
    output: bytes
    output_bytes: int
    timed_out: bool
    argv: list[str]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_scratch(wrapped: Wrapped) -> None:
    for folder in wrapped.scratch_dirs:
        shutil.rmtree(folder, ignore_errors=True)


async def run_confined(
    sandbox: Sandbox,
    argv: Sequence[str],
    policy: SandboxPolicy,
    *,
    timeout_s: float,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> ConfinedResult:
    """Run ``argv`` under ``policy`` in the worktree, stdin from ``/dev/null``.

    Raises :class:`SandboxError` when the command cannot be started at all (the sandbox
    binary vanished); a command that fails or times out is a result, not an error."""
    wrapped = sandbox.wrap(argv, policy)
    kept = bytearray()
    total = 0
    try:
        process = await anyio.open_process(
            wrapped.argv, cwd=policy.worktree, env=wrapped.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        _remove_scratch(wrapped)
        raise SandboxError(
            f"cannot start `{' '.join(argv)}` in the {sandbox.name} sandbox: {exc}",
            data={"sandbox": sandbox.name, "argv": list(argv)}) from exc
    try:
        async with process:
            assert process.stdout is not None
            try:
                with anyio.move_on_after(timeout_s) as scope:
                    async for chunk in process.stdout:
                        total += len(chunk)
                        kept += chunk
                        # Keep only the tail: a chatty command must not fill the daemon's memory.
                        if len(kept) > 2 * max_output_bytes:
                            del kept[: len(kept) - max_output_bytes]
                    await process.wait()
            finally:
                # Whatever happened (done, timed out, cancelled), nothing of the session
                # survives; killed before the stream is closed, so closing cannot wait on it.
                _kill_group(process.pid)
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await process.wait()
    finally:
        _remove_scratch(wrapped)
    return ConfinedResult(
        returncode=None if scope.cancelled_caught else process.returncode,
        output=bytes(kept[-max_output_bytes:]), output_bytes=total,
        timed_out=scope.cancelled_caught, argv=list(argv))


async def open_confined(
    sandbox: Sandbox,
    argv: Sequence[str],
    policy: SandboxPolicy,
    *,
    stdin: int | None = subprocess.PIPE,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.STDOUT,
) -> anyio.abc.Process:
    """Start a long-lived confined process (its own session). End it with
    :func:`terminate_confined`, which also kills whatever it started."""
    wrapped = sandbox.wrap(argv, policy)
    try:
        process = await anyio.open_process(
            wrapped.argv, cwd=policy.worktree, env=wrapped.env, stdin=stdin, stdout=stdout,
            stderr=stderr, start_new_session=True)
    except OSError as exc:
        _remove_scratch(wrapped)
        raise SandboxError(
            f"cannot start `{' '.join(argv)}` in the {sandbox.name} sandbox: {exc}",
            data={"sandbox": sandbox.name, "argv": list(argv)}) from exc
    _SCRATCH[process.pid] = wrapped
    return process


_SCRATCH: dict[int, Wrapped] = {}


async def terminate_confined(process: anyio.abc.Process, *, wait_s: float = 5.0) -> None:
    """Kill a process from :func:`open_confined` and everything of its session; wait for it.
    Shielded: safe to call from cleanup code of a cancelled task."""
    with anyio.CancelScope(shield=True):
        _kill_group(process.pid)
        with anyio.move_on_after(wait_s):
            await process.wait()
        await process.aclose()
        wrapped = _SCRATCH.pop(process.pid, None)
        if wrapped is not None:
            _remove_scratch(wrapped)
