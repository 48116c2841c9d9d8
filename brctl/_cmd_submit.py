"""``brctl plan`` and ``brctl submit``: a spec to the daemon (imported only when used)."""

from __future__ import annotations

import os
from typing import Any

import click

from brctl._cli import command, emit, follow_runs, json_line, print_json, settings_of

__all__ = ["plan_cmd", "submit_cmd"]

LONG_CALL_S = 300.0  # planning and submitting parse, plan and touch git: allow minutes
_spec_argument = click.argument("spec", type=click.Path(exists=True, dir_okay=False))


@command("plan")
@_spec_argument
def plan_cmd(ctx: click.Context, spec: str) -> None:
    """Plan SPEC (features, tasks, batches, critical path); runs nothing."""
    with settings_of(ctx).client(timeout_s=LONG_CALL_S) as client:
        result = client.call("spec.plan", {"spec_path": os.path.realpath(spec)})

    def human() -> str:
        from brctl._output import format_plan

        return format_plan(result)

    emit(ctx, result, human)


@command("submit")
@_spec_argument
@click.option("--repo", type=click.Path(exists=True, file_okay=False),
              help="Git repository to build in (default: the one holding SPEC).")
@click.option("--workers", type=click.IntRange(1, 256), help="Parallel batches for this run.")
@click.option("--budget-usd", type=click.FloatRange(min=0), help="Stop spending above this.")
@click.option("--test-cmd", help="Command that verifies the work (e.g. 'pytest -q').")
@click.option("--allow-dirty", is_flag=True, help="Accept uncommitted changes in the repo.")
@click.option("--scratch", is_flag=True,
              help="No repository: keep the results in a folder under the daemon's state dir "
                   "(its path is printed). Needed for a SPEC outside any git repository.")
@click.option("--follow", is_flag=True, help="Then follow the run live until it ends.")
def submit_cmd(
    ctx: click.Context, spec: str, repo: str | None, workers: int | None,
    budget_usd: float | None, test_cmd: str | None, allow_dirty: bool, scratch: bool,
    follow: bool,
) -> None:
    """Start a run of SPEC; prints its id (planning goes on in the daemon)."""
    if scratch and repo is not None:
        raise click.UsageError("--scratch and --repo exclude each other")
    params: dict[str, Any] = {"spec_path": os.path.realpath(spec)}
    if repo is not None:
        params["repo"] = os.path.realpath(repo)
    if scratch:
        params["scratch"] = True
    if workers is not None:
        params["workers"] = workers
    if budget_usd is not None:
        params["budget_usd"] = budget_usd
    if test_cmd is not None:
        params["test_cmd"] = test_cmd
    if allow_dirty:
        params["allow_dirty"] = True
    settings = settings_of(ctx)
    with settings.client(timeout_s=LONG_CALL_S) as client:
        result = client.call("run.submit", params)
        run_id = str(result.get("run_id") or result.get("id")) if isinstance(result, dict) \
            else str(result)
        scratch_dir = result.get("scratch_dir") if isinstance(result, dict) else None
        reply: dict[str, Any] = {"run_id": run_id}
        if scratch_dir:
            reply["scratch_dir"] = scratch_dir
        if settings.json and follow:
            # One JSON document per line: this, then the run's events.
            click.echo(json_line(reply))
        elif settings.json:
            print_json(reply)
        else:
            click.echo(run_id)
            if scratch_dir:  # stderr: stdout stays just the id, for scripts
                click.echo(f"scratch run: the results are kept in {scratch_dir}", err=True)
        if follow:
            follow_runs(ctx, client, [run_id], mode="status", as_json=settings.json)
