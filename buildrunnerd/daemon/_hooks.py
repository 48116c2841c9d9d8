"""What happens when a run ends, outside the daemon: the ``hooks.on_run_end`` command and a
desktop notification (``notify-send``, where it exists).

Both run in the background after the run's final event is stored, each under a timeout; a
failure, a timeout or a missing program is logged and never reaches the daemon. The hook gets
the run's summary in its environment (``BUILDRUNNER_RUN_*``), never on a command line, so text
from the spec or from the model (a failure reason quoting test output) cannot become shell
syntax; values are cut to a bounded size and stripped of NUL bytes.
"""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec
import structlog

from buildrunnerd import protocol

if TYPE_CHECKING:
    from buildrunnerd.config import Config

__all__ = ["RunEndHooks", "run_command", "run_summary_env"]

_log = structlog.get_logger("buildrunnerd.hooks")

_END_EVENTS = frozenset({"run.succeeded", "run.failed", "run.cancelled"})
_MAX_VALUE_CHARS = 4000
_MAX_JSON_CHARS = 64_000
_NOTIFY_TIMEOUT_S = 10.0
_OUTPUT_TAIL_CHARS = 2000

RunInfoGetter = Callable[[str], Awaitable[protocol.RunInfo]]


def _clean(value: object, limit: int = _MAX_VALUE_CHARS) -> str:
    text = "" if value is None else str(value)
    return text.replace("\x00", "")[:limit]


def run_summary_env(info: protocol.RunInfo) -> dict[str, str]:
    """The ``BUILDRUNNER_RUN_*`` variables of a finished run."""
    counts = info.tasks_by_state
    done, total = counts.get("succeeded", 0), info.task_count
    summary = (f"BuildRunner run {info.id} {info.state}: {info.title} - {done}/{total} tasks, "
               f"${info.cost_usd:.2f}, {info.elapsed_s:.0f} s")
    if info.reason:
        summary += f" ({info.reason})"
    public = msgspec.structs.replace(
        info, tasks=None, batches=None,
        reason=None if info.reason is None else _clean(info.reason),
        title=_clean(info.title))
    values: dict[str, object] = {
        "ID": info.id, "STATE": info.state, "TITLE": info.title, "REASON": info.reason,
        "REPO": info.repo, "BRANCH": info.branch, "SCRATCH_DIR": info.scratch_dir,
        "COST_USD": f"{info.cost_usd:.6f}", "ELAPSED_S": f"{info.elapsed_s:.1f}",
        "TASKS": total, "TASKS_SUCCEEDED": done, "TASKS_FAILED": counts.get("failed", 0),
        "SUMMARY": summary.replace("\n", " "),
    }
    env = {f"BUILDRUNNER_RUN_{k}": _clean(v) for k, v in values.items()}
    env["BUILDRUNNER_RUN_JSON"] = _clean(msgspec.json.encode(public).decode(), _MAX_JSON_CHARS)
    return env


class RunEndHooks:
    """An event-bus listener: on a run's final event, its hook and notification run in the
    task group of :meth:`serve`. ``config`` is read at each run's end (SIGHUP applies)."""

    def __init__(self, *, config: Callable[[], Config], run_info: RunInfoGetter,
                 env: dict[str, str]) -> None:
        self._config = config
        self._run_info = run_info
        self._env = env
        self._tg: anyio.abc.TaskGroup | None = None

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def on_event(self, event: protocol.Event) -> None:
        """The bus listener (never blocks, never raises)."""
        if event.type in _END_EVENTS and self._tg is not None:
            self._tg.start_soon(self._run_end, event.run_id)

    async def _run_end(self, run_id: str) -> None:
        config = self._config().hooks
        try:
            info = await self._run_info(run_id)
        except Exception as exc:
            _log.error("hook.no_run_info", run_id=run_id, error=str(exc))
            return
        if config.on_run_end:
            await self._run_hook(config.on_run_end, info, config.timeout_s)
        if config.notify == "auto":
            await self._notify(info)

    async def _run_hook(self, command: str, info: protocol.RunInfo, timeout_s: float) -> None:
        """Run the hook in a process group of its own (a timeout kills what it started too)."""
        env = {**self._env, **run_summary_env(info)}
        try:
            code, stderr, timed_out = await run_command(
                ["/bin/sh", "-c", command], env=env, timeout_s=timeout_s,
                cwd=env.get("HOME") or "/",
            )
        except Exception as exc:  # the shell is missing, fork failed, ...
            _log.error("hook.failed", run_id=info.id, command=command,
                       error=f"{type(exc).__name__}: {exc}")
            return
        if timed_out:
            _log.warning("hook.timed_out", run_id=info.id, command=command,
                         timeout_s=timeout_s, hint="raise hooks.timeout_s or make it faster")
        elif code != 0:
            _log.warning("hook.failed", run_id=info.id, command=command, exit_code=code,
                         stderr=stderr)
        else:
            _log.info("hook.done", run_id=info.id, command=command)

    async def _notify(self, info: protocol.RunInfo) -> None:
        path = self._env.get("PATH", os.defpath)
        program = shutil.which("notify-send", path=path)
        if program is None:
            return
        env = run_summary_env(info)
        title = f"BuildRunner: run {info.id} {info.state}"
        # notify-send reads a small markup language in the body: the text is escaped.
        body = html.escape(env["BUILDRUNNER_RUN_SUMMARY"].split(": ", 1)[-1])
        urgency = "normal" if info.state == "succeeded" else "critical"
        try:
            code, stderr, timed_out = await run_command(
                [program, "--app-name=BuildRunner", f"--urgency={urgency}", "--", title, body],
                env=self._env, timeout_s=_NOTIFY_TIMEOUT_S,
            )
        except Exception as exc:
            _log.info("notify.failed", run_id=info.id, error=str(exc))
            return
        if timed_out or code != 0:
            _log.info("notify.failed", run_id=info.id, exit_code=code, stderr=stderr,
                      timed_out=timed_out)


async def run_command(
    argv: list[str], *, env: dict[str, str], timeout_s: float, cwd: str | None = None,
) -> tuple[int | None, str, bool]:
    """Run ``argv`` in a new session (its own process group), stdin and stdout closed, for at
    most ``timeout_s``: ``(exit code, the tail of stderr, timed out)``. On timeout, or when
    the caller is cancelled, the whole group is killed."""
    process = await anyio.open_process(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )
    tail = b""
    timed_out = True
    try:
        with anyio.move_on_after(timeout_s):
            assert process.stderr is not None
            async for chunk in process.stderr:
                tail = (tail + chunk)[-_OUTPUT_TAIL_CHARS:]
            await process.wait()
            timed_out = False
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
    return (None if timed_out else process.returncode,
            tail.decode(errors="replace"), timed_out)
