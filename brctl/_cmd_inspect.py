"""``brctl tasks``, ``task``, ``logs``, ``export`` and ``costs``: what a run did and spent.

Imported only when one of them is used (see ``_LAZY_COMMANDS`` in :mod:`brctl._cli`).
"""

from __future__ import annotations

from typing import Any

import click

from brctl._cli import (
    as_list,
    command,
    complete_run_ids,
    emit,
    follow_runs,
    json_line,
    resolve_run,
    resolve_task,
    run_argument,
    run_with_tasks,
    settings_of,
    task_argument,
)
from brctl._client import all_events

__all__ = ["costs_cmd", "export_cmd", "logs_cmd", "task_cmd", "tasks_cmd"]


@command("tasks")
@run_argument(required=False)
def tasks_cmd(ctx: click.Context, run_id: str | None) -> None:
    """A run's tasks: id, state, batch, attempts, model, cost, title (no RUN: the latest run)."""
    with settings_of(ctx).client() as client:
        if run_id is None:
            runs = as_list(client.call("run.list"), "runs")  # newest first
            if not runs:
                from brctl._resolve import NoMatchError

                raise NoMatchError("no runs yet (start one with: brctl submit SPEC)",
                                   data={"kind": "run", "id": None})
            run_id = str(runs[0]["id"])
        else:
            run_id = resolve_run(client, run_id)
        run = run_with_tasks(client, run_id)  # run.get already carries the tasks
    tasks = as_list(run["tasks"], "tasks")
    result = {"id": run.get("id", run_id), "run_id": run.get("id", run_id),
              "state": run.get("state"), "tasks": tasks}

    def human() -> str:
        from brctl._output import format_tasks

        return f"run {result['id']}  {result['state']}\n" + format_tasks(tasks)

    emit(ctx, result, human)


@command("task")
@task_argument
def task_cmd(ctx: click.Context, task_id: str) -> None:
    """One task in full: prompt, verification output, files, events."""
    with settings_of(ctx).client() as client:
        task = client.call("task.get", {"task_id": resolve_task(client, task_id)})

    def human() -> str:
        from brctl._output import format_task

        return format_task(task)

    emit(ctx, task, human)


@command("logs")
@run_argument()
@click.option("--follow", is_flag=True, help="Keep printing events until the run ends.")
def logs_cmd(ctx: click.Context, run_id: str, follow: bool) -> None:
    """A run's events, one readable line each (--json: JSON lines, as stored)."""
    settings = settings_of(ctx)
    with settings.client() as client:
        run_id = resolve_run(client, run_id)
        if follow:
            follow_runs(ctx, client, [run_id], mode="logs", as_json=settings.json)
        events = all_events(client, run_id)
    if settings.json:
        for event in events:
            click.echo(json_line(event))
        return
    from brctl._render import plain_line

    for event in events:
        click.echo(plain_line(event, None))


@command("export")
@run_argument()
def export_cmd(ctx: click.Context, run_id: str) -> None:
    """Every stored event of RUN as JSON lines (e.g. before retention prunes them)."""
    with settings_of(ctx).client() as client:
        events = all_events(client, resolve_run(client, run_id))
    for event in events:
        click.echo(json_line(event))


@command("costs")
@click.option("--run", "run_id", metavar="RUN", help="Only this run.",
              shell_complete=complete_run_ids)
@click.option("--by", type=click.Choice(["model", "day", "run"]), default="model",
              show_default=True, help="Group rows by.")
def costs_cmd(ctx: click.Context, run_id: str | None, by: str) -> None:
    """Spend from the database: tokens and USD, total and per model, day or run."""
    params: dict[str, Any] = {"by": by}
    with settings_of(ctx).client() as client:
        if run_id:
            params["run_id"] = resolve_run(client, run_id)
        summary = client.call("costs.summary", params)

    def human() -> str:
        from brctl._output import format_costs

        return format_costs(summary)

    emit(ctx, summary, human)
