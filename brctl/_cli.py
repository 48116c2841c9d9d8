"""``brctl``: the command-line client of buildrunnerd (see docs/protocol.md for the wire side).

Exit codes: 0 success; 1 the daemon answered with an error, or a followed run failed or was
cancelled; 2 usage error; 3 the daemon is not reachable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NoReturn

import click
import msgspec

from brctl._client import DaemonUnreachableError, RemoteError, RpcClient
from buildrunnerd import __version__, protocol
from buildrunnerd.errors import BuildRunnerError

__all__ = ["main"]

EXIT_OK, EXIT_DAEMON_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
_LONG_CALL_S = 300.0  # planning and submitting parse, plan and touch git: allow minutes


class Settings:
    """Global options, settable before or after the command name."""

    def __init__(self) -> None:
        self.socket: Path | None = None
        self.json = False
        self.timeout_s = 30.0

    def socket_path(self) -> Path:
        if self.socket is not None:
            return self.socket
        from buildrunnerd.paths import socket_path

        return socket_path()

    def client(self, *, timeout_s: float | None = None) -> RpcClient:
        """A client; ``timeout_s`` raises the wait for slow methods (never lowers --timeout-s)."""
        return RpcClient(self.socket_path(), timeout_s=max(timeout_s or 0.0, self.timeout_s))


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    if not isinstance(obj, Settings):
        obj = ctx.find_root().obj = Settings()
    return obj


def _set_socket(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        _settings(ctx).socket = value


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _settings(ctx).json = True


_socket_option = click.option(
    "--socket", type=click.Path(path_type=Path), expose_value=False, callback=_set_socket,
    is_eager=True, help="Daemon socket (default: $BUILDRUNNER_SOCKET or the XDG runtime dir).",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, expose_value=False, callback=_set_json, is_eager=True,
    help="Machine-readable output on stdout (messages go to stderr).",
)


# Commands that live in other modules, imported only when used or listed (brctl starts fast):
# `service` and `completion` come from the ops side, and brctl works without them.
_LAZY_COMMANDS = {
    "service": ("brctl._service", "service"),
    "completion": ("brctl._completion", "completion"),
}


class _BrctlGroup(click.Group):
    """Turns daemon errors into the contract's exit codes and messages on stderr."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name in _LAZY_COMMANDS if self.get_command(ctx, name) is not None]
        return sorted([*super().list_commands(ctx), *lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        import importlib

        module, attr = _LAZY_COMMANDS[cmd_name]
        try:
            command = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            if exc.name == module:
                return None
            raise
        return command if isinstance(command, click.Command) else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DaemonUnreachableError as exc:
            _fail(ctx, exc, EXIT_UNREACHABLE)
        except BuildRunnerError as exc:
            _fail(ctx, exc, EXIT_DAEMON_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # `brctl logs RUN | head`: the reader is gone, which is not an error. Point stdout
            # at /dev/null so the interpreter's final flush does not complain either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_OK)


def _fail(ctx: click.Context, exc: BuildRunnerError, code: int) -> NoReturn:
    settings = _settings(ctx)
    if isinstance(exc, RemoteError) and exc.code == protocol.SPEC_INVALID and exc.data:
        from brctl._output import format_spec_errors

        click.echo(format_spec_errors(exc.data, "<spec>") or exc.message, err=True)
        if settings.json:
            _print_json({"errors": exc.data.get("errors", [])})
    else:
        prefix = "" if code == EXIT_UNREACHABLE else "error: "
        click.echo(f"{prefix}{exc.message}", err=True)
        if settings.json:
            wire_code = exc.code if isinstance(exc, RemoteError) else None
            _print_json({"error": {"code": wire_code, "message": exc.message,
                                   "data": exc.data or None, "exit_code": code}})
    ctx.exit(code)


def _print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _emit(ctx: click.Context, result: Any, human: str) -> None:
    if _settings(ctx).json:
        _print_json(result)
    else:
        click.echo(human)


def _as_list(result: Any, key: str) -> list[dict[str, Any]]:
    # Methods returning a collection may wrap it ({"runs": [...]}) or not; accept both.
    if isinstance(result, dict):
        result = result.get(key, [])
    return list(result or [])


@click.group(cls=_BrctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="brctl")
@_socket_option
@_json_option
@click.option("--timeout-s", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="How long to wait for the daemon's answer.")
@click.pass_context
def main(ctx: click.Context, timeout_s: float) -> None:
    """Control buildrunnerd: submit specs, watch runs, pause, resume, cancel, see costs.

    Exit codes: 0 ok; 1 the daemon reported an error (or a followed run failed or was
    cancelled); 2 usage error; 3 the daemon is not reachable.
    """
    _settings(ctx).timeout_s = timeout_s


def _command(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """A subcommand that also accepts the global --socket and --json after its name."""
    def decorate(fn: Callable[..., None]) -> click.Command:
        return main.command(name)(_socket_option(_json_option(click.pass_context(fn))))
    return decorate


@_command("ping")
def ping_cmd(ctx: click.Context) -> None:
    """Daemon version, uptime, backend and workers."""
    from brctl._output import format_ping

    with _settings(ctx).client() as client:
        result = client.call("daemon.ping")
    _emit(ctx, result, format_ping(result))


@_command("plan")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def plan_cmd(ctx: click.Context, spec: Path) -> None:
    """Plan SPEC (features, tasks, batches, critical path); runs nothing."""
    from brctl._output import format_plan

    with _settings(ctx).client(timeout_s=_LONG_CALL_S) as client:
        result = client.call("spec.plan", {"spec_path": str(spec.resolve())})
    _emit(ctx, result, format_plan(result))


@_command("submit")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path),
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
    ctx: click.Context, spec: Path, repo: Path | None, workers: int | None,
    budget_usd: float | None, test_cmd: str | None, allow_dirty: bool, scratch: bool,
    follow: bool,
) -> None:
    """Start a run of SPEC; prints its id (planning goes on in the daemon)."""
    if scratch and repo is not None:
        raise click.UsageError("--scratch and --repo exclude each other")
    params: dict[str, Any] = {"spec_path": str(spec.resolve())}
    if repo is not None:
        params["repo"] = str(repo.resolve())
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
    settings = _settings(ctx)
    with settings.client(timeout_s=_LONG_CALL_S) as client:
        result = client.call("run.submit", params)
        run_id = str(result.get("run_id") or result.get("id")) if isinstance(result, dict) \
            else str(result)
        scratch_dir = result.get("scratch_dir") if isinstance(result, dict) else None
        reply: dict[str, Any] = {"run_id": run_id}
        if scratch_dir:
            reply["scratch_dir"] = scratch_dir
        if settings.json and follow:
            # One JSON document per line: this, then the run's events.
            click.echo(msgspec.json.encode(reply).decode())
        elif settings.json:
            _print_json(reply)
        else:
            click.echo(run_id)
            if scratch_dir:  # stderr: stdout stays just the id, for scripts
                click.echo(f"scratch run: the results are kept in {scratch_dir}", err=True)
        if follow:
            _follow_runs(ctx, client, [run_id], mode="status", as_json=settings.json)


def _follow_runs(
    ctx: click.Context, client: RpcClient, run_ids: list[str], *,
    mode: Literal["status", "logs"], as_json: bool = False,
) -> NoReturn:
    from brctl._follow import follow, snapshot

    views = [snapshot(client, run_id) for run_id in run_ids]
    out = sys.stdout
    ctx.exit(follow(client, views, out=out, mode=mode, tty=out.isatty(), as_json=as_json))


def _active_runs(client: RpcClient) -> list[dict[str, Any]]:
    runs = _as_list(client.call("run.list"), "runs")
    return [r for r in runs if r.get("state") not in protocol.TERMINAL_RUN_STATES]


def _run_with_tasks(client: RpcClient, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = client.call("run.get", {"run_id": run_id})
    if run.get("tasks") is None:
        run["tasks"] = _as_list(client.call("task.list", {"run_id": run_id}), "tasks")
    return run


@_command("status")
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--follow", is_flag=True,
              help="Redraw live until the run ends (exit 0 if it succeeded, 1 otherwise); "
                   "with --json, print its events as JSON lines.")
def status_cmd(ctx: click.Context, run_id: str | None, follow: bool) -> None:
    """A run's state, tasks by state, cost, elapsed, branch (no RUN: every active run)."""
    settings = _settings(ctx)
    with settings.client() as client:
        if run_id is None:
            run_ids = [str(r["id"]) for r in _active_runs(client)]
            if not run_ids:
                _emit(ctx, [], "no active runs")
                return
        else:
            run_ids = [run_id]
        if follow:
            # --json --follow: the events as JSON lines, as `logs --follow --json` prints them.
            _follow_runs(ctx, client, run_ids, mode="status", as_json=settings.json)
        runs = [_run_with_tasks(client, rid) for rid in run_ids]
    if settings.json:
        _print_json(runs[0] if run_id is not None else runs)
    else:
        from brctl._output import format_status  # not imported for --json: scripts poll this

        click.echo("\n\n".join(format_status(run) for run in runs))


@_command("runs")
def runs_cmd(ctx: click.Context) -> None:
    """List runs, newest first."""
    from brctl._output import format_runs

    with _settings(ctx).client() as client:
        runs = _as_list(client.call("run.list"), "runs")
    _emit(ctx, runs, format_runs(runs))


@_command("tasks")
@click.argument("run_id", metavar="RUN")
def tasks_cmd(ctx: click.Context, run_id: str) -> None:
    """A run's tasks: id, state, batch, attempts, model, cost, title."""
    from brctl._output import format_tasks

    with _settings(ctx).client() as client:
        run = _run_with_tasks(client, run_id)  # run.get already carries the tasks
    tasks = _as_list(run["tasks"], "tasks")
    result = {"id": run.get("id", run_id), "run_id": run.get("id", run_id),
              "state": run.get("state"), "tasks": tasks}
    _emit(ctx, result, format_tasks(tasks))


@_command("task")
@click.argument("task_id", metavar="TASK")
def task_cmd(ctx: click.Context, task_id: str) -> None:
    """One task in full: prompt, verification output, files, events."""
    from brctl._output import format_task

    with _settings(ctx).client() as client:
        task = client.call("task.get", {"task_id": task_id})
    _emit(ctx, task, format_task(task))


def _all_events(client: RpcClient, run_id: str, *, page: int = 1000) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        batch = _as_list(
            client.call("events.list", {"run_id": run_id, "since": since, "limit": page}),
            "events",
        )
        if not batch:
            return events
        events.extend(batch)
        since = max(int(e.get("id") or 0) for e in batch)
        if len(batch) < page:
            return events


@_command("logs")
@click.argument("run_id", metavar="RUN")
@click.option("--follow", is_flag=True, help="Keep printing events until the run ends.")
def logs_cmd(ctx: click.Context, run_id: str, follow: bool) -> None:
    """A run's events, one per line (--json: JSON lines)."""
    from brctl._render import plain_line

    settings = _settings(ctx)
    with settings.client() as client:
        if follow:
            _follow_runs(ctx, client, [run_id], mode="logs", as_json=settings.json)
        client.call("run.get", {"run_id": run_id})  # an unknown run is an error, not silence
        events = _all_events(client, run_id)
    for event in events:
        click.echo(msgspec.json.encode(event).decode() if settings.json
                   else plain_line(event, None))


@_command("export")
@click.argument("run_id", metavar="RUN")
def export_cmd(ctx: click.Context, run_id: str) -> None:
    """Every stored event of RUN as JSON lines (e.g. before retention prunes them)."""
    with _settings(ctx).client() as client:
        client.call("run.get", {"run_id": run_id})
        events = _all_events(client, run_id)
    for event in events:
        click.echo(msgspec.json.encode(event).decode())


def _control(ctx: click.Context, method: str, key: str, value: str, done: str) -> None:
    with _settings(ctx).client() as client:
        result = client.call(method, {key: value})
    state = f" (now {result['state']})" if isinstance(result, dict) and result.get("state") else ""
    _emit(ctx, result, f"{done} {value}{state}")


@_command("pause")
@click.argument("run_id", metavar="RUN")
def pause_cmd(ctx: click.Context, run_id: str) -> None:
    """Stop dispatching new batches of RUN (running ones finish)."""
    _control(ctx, "run.pause", "run_id", run_id, "paused run")


@_command("resume")
@click.argument("run_id", metavar="RUN")
def resume_cmd(ctx: click.Context, run_id: str) -> None:
    """Resume a paused RUN."""
    _control(ctx, "run.resume", "run_id", run_id, "resumed run")


@_command("cancel")
@click.argument("run_id", metavar="RUN")
def cancel_cmd(ctx: click.Context, run_id: str) -> None:
    """Cancel RUN: stop its in-flight work, mark the rest cancelled."""
    _control(ctx, "run.cancel", "run_id", run_id, "cancelled run")


@_command("retry")
@click.argument("task_id", metavar="TASK")
def retry_cmd(ctx: click.Context, task_id: str) -> None:
    """Re-queue a failed TASK and unblock what waited on it."""
    _control(ctx, "task.retry", "task_id", task_id, "re-queued task")


@_command("costs")
@click.option("--run", "run_id", metavar="RUN", help="Only this run.")
@click.option("--by", type=click.Choice(["model", "day", "run"]), default="model",
              show_default=True, help="Group rows by.")
def costs_cmd(ctx: click.Context, run_id: str | None, by: str) -> None:
    """Spend from the database: tokens and USD, total and per model, day or run."""
    from brctl._output import format_costs

    params: dict[str, Any] = {"by": by}
    if run_id:
        params["run_id"] = run_id
    with _settings(ctx).client() as client:
        summary = client.call("costs.summary", params)
    _emit(ctx, summary, format_costs(summary))


@_command("shutdown")
def shutdown_cmd(ctx: click.Context) -> None:
    """Stop the daemon gracefully (in-flight work checkpoints; runs continue on next start)."""
    with _settings(ctx).client() as client:
        result = client.call("daemon.shutdown")
    _emit(ctx, result if result is not None else {"ok": True}, "buildrunnerd is shutting down")


