"""``brctl pause``, ``resume``, ``cancel``, ``retry`` and ``shutdown``: control.

Imported only when one of them is used (see ``_LAZY_COMMANDS`` in :mod:`brctl._cli`).
"""

from __future__ import annotations

import click

from brctl._cli import (
    command,
    emit,
    resolve_run,
    resolve_task,
    run_argument,
    settings_of,
    task_argument,
)

__all__ = ["cancel_cmd", "pause_cmd", "resume_cmd", "retry_cmd", "shutdown_cmd"]


def _control(ctx: click.Context, method: str, key: str, value: str, done: str) -> None:
    with settings_of(ctx).client() as client:
        value = resolve_task(client, value) if key == "task_id" else resolve_run(client, value)
        result = client.call(method, {key: value})
    state = f" (now {result['state']})" if isinstance(result, dict) and result.get("state") else ""
    emit(ctx, result, lambda: f"{done} {value}{state}")


@command("pause")
@run_argument()
def pause_cmd(ctx: click.Context, run_id: str) -> None:
    """Stop dispatching new batches of RUN (running ones finish)."""
    _control(ctx, "run.pause", "run_id", run_id, "paused run")


@command("resume")
@run_argument()
def resume_cmd(ctx: click.Context, run_id: str) -> None:
    """Resume a paused RUN."""
    _control(ctx, "run.resume", "run_id", run_id, "resumed run")


@command("cancel")
@run_argument()
def cancel_cmd(ctx: click.Context, run_id: str) -> None:
    """Cancel RUN: stop its in-flight work, mark the rest cancelled."""
    _control(ctx, "run.cancel", "run_id", run_id, "cancelled run")


@command("retry")
@task_argument
def retry_cmd(ctx: click.Context, task_id: str) -> None:
    """Re-queue a failed TASK and unblock what waited on it."""
    _control(ctx, "task.retry", "task_id", task_id, "re-queued task")


@command("shutdown")
def shutdown_cmd(ctx: click.Context) -> None:
    """Stop the daemon gracefully (in-flight work checkpoints; runs continue on next start)."""
    with settings_of(ctx).client() as client:
        result = client.call("daemon.shutdown")
    emit(ctx, result if result is not None else {"ok": True},
          lambda: "buildrunnerd is shutting down")
