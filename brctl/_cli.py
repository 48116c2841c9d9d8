"""``brctl``: the command-line client of buildrunnerd (see docs/protocol.md for the wire side).

Exit codes: 0 success; 1 the daemon answered with an error, or a followed run failed or was
cancelled; 2 usage error; 3 the daemon is not reachable.

Start-up time matters (scripts poll ``brctl --json status``), so this module imports click and
nothing else of weight: the socket client (``json``, ``socket``) is imported when a command
talks to the daemon, the text formatting when it prints text, rich only for a live display.
bench/brctl_bench.py measures it; tests/brctl/test_brctl_imports.py keeps it so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click

from buildrunnerd import __version__, codes
from buildrunnerd.errors import BuildRunnerError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from brctl._client import RpcClient

__all__ = ["console_main", "main"]

EXIT_OK, EXIT_DAEMON_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
_LONG_CALL_S = 300.0  # planning and submitting parse, plan and touch git: allow minutes


class Settings:
    """Global options, settable before or after the command name."""

    def __init__(self) -> None:
        self.socket: str | None = None
        self.json = False
        self.timeout_s = 30.0

    def socket_path(self) -> str:
        if self.socket is not None:
            return self.socket
        from buildrunnerd.paths import socket_path  # pathlib: only when no --socket is given

        return str(socket_path())

    def client(self, *, timeout_s: float | None = None) -> RpcClient:
        """A client; ``timeout_s`` raises the wait for slow methods (never lowers --timeout-s)."""
        from brctl._client import RpcClient

        return RpcClient(self.socket_path(), timeout_s=max(timeout_s or 0.0, self.timeout_s))


def settings_of(ctx: click.Context) -> Settings:
    """The root context's :class:`Settings` (created on first use)."""
    obj = ctx.find_root().obj
    if not isinstance(obj, Settings):
        obj = ctx.find_root().obj = Settings()
    return obj


def _set_socket(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        settings_of(ctx).socket = value


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        settings_of(ctx).json = True


_socket_option = click.option(
    "--socket", type=click.Path(dir_okay=False), metavar="PATH", expose_value=False,
    callback=_set_socket, is_eager=True,
    help="Daemon socket (default: $BUILDRUNNER_SOCKET or the XDG runtime dir).",
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
        except BuildRunnerError as exc:
            from brctl._client import DaemonUnreachableError  # imported by whoever raised it

            unreachable = isinstance(exc, DaemonUnreachableError)
            _fail(ctx, exc, EXIT_UNREACHABLE if unreachable else EXIT_DAEMON_ERROR)
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
    from brctl._client import RemoteError

    settings = settings_of(ctx)
    if isinstance(exc, RemoteError) and exc.code == codes.SPEC_INVALID and exc.data:
        from brctl._output import format_spec_errors

        click.echo(format_spec_errors(exc.data, "<spec>") or exc.message, err=True)
        if settings.json:
            print_json({"errors": exc.data.get("errors", [])})
    else:
        prefix = "" if code == EXIT_UNREACHABLE else "error: "
        click.echo(f"{prefix}{exc.message}", err=True)
        if settings.json:
            wire_code = exc.code if isinstance(exc, RemoteError) else None
            print_json({"error": {"code": wire_code, "message": exc.message,
                                  "data": exc.data or None, "exit_code": code}})
    ctx.exit(code)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (UTF-8 as it is, not \\u-escaped)."""
    import json

    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def json_line(value: Any) -> str:
    """``value`` as one compact JSON line (``logs --json``, ``export``)."""
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _emit(ctx: click.Context, result: Any, human: Callable[[], str]) -> None:
    # `human` is called only for text output: its formatting module is then imported.
    if settings_of(ctx).json:
        print_json(result)
    else:
        click.echo(human())


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

    RUN is a run id or any unique prefix of it (with or without the "r-"); TASK is a task id,
    with its run prefix or, when only one run has it, without.

    Exit codes: 0 ok; 1 the daemon reported an error (or a followed run failed or was
    cancelled); 2 usage error; 3 the daemon is not reachable.
    """
    settings_of(ctx).timeout_s = timeout_s


def _command(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """A subcommand that also accepts the global --socket and --json after its name."""
    def decorate(fn: Callable[..., None]) -> click.Command:
        return main.command(name)(_socket_option(_json_option(click.pass_context(fn))))
    return decorate


def _complete_run_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    from brctl._resolve import complete_run_ids  # only when completing

    return complete_run_ids(ctx, param, incomplete)


def _complete_task_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    from brctl._resolve import complete_task_ids

    return complete_task_ids(ctx, param, incomplete)


def _resolve_run(client: RpcClient, text: str) -> str:
    from brctl._resolve import resolve_run  # `status` without RUN never needs it

    return resolve_run(client, text)


def _resolve_task(client: RpcClient, text: str) -> str:
    from brctl._resolve import resolve_task

    return resolve_task(client, text)


def _run_argument(*, required: bool = True) -> Callable[[Callable[..., None]], Any]:
    return click.argument("run_id", metavar="RUN" if required else "[RUN]", required=required,
                          shell_complete=_complete_run_ids)


_task_argument = click.argument("task_id", metavar="TASK", shell_complete=_complete_task_ids)
_spec_argument = click.argument("spec", type=click.Path(exists=True, dir_okay=False))


@_command("ping")
def ping_cmd(ctx: click.Context) -> None:
    """Daemon version, uptime, backend and workers."""
    with settings_of(ctx).client() as client:
        result = client.call("daemon.ping")

    def human() -> str:
        from brctl._output import format_ping

        return format_ping(result)

    _emit(ctx, result, human)


@_command("plan")
@_spec_argument
def plan_cmd(ctx: click.Context, spec: str) -> None:
    """Plan SPEC (features, tasks, batches, critical path); runs nothing."""
    with settings_of(ctx).client(timeout_s=_LONG_CALL_S) as client:
        result = client.call("spec.plan", {"spec_path": os.path.realpath(spec)})

    def human() -> str:
        from brctl._output import format_plan

        return format_plan(result)

    _emit(ctx, result, human)


@_command("submit")
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
            click.echo(json_line(reply))
        elif settings.json:
            print_json(reply)
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
    return [r for r in runs if r.get("state") not in codes.TERMINAL_RUN_STATES]


def _run_with_tasks(client: RpcClient, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = client.call("run.get", {"run_id": run_id})
    if run.get("tasks") is None:
        run["tasks"] = _as_list(client.call("task.list", {"run_id": run_id}), "tasks")
    return run


@_command("status")
@_run_argument(required=False)
@click.option("--follow", is_flag=True,
              help="Redraw live (with --json: print the events as JSON lines). With RUN: until "
                   "the run ends (exit 0 if it succeeded, 1 otherwise). Without RUN: every "
                   "run, including runs submitted later, until interrupted.")
@click.option("--exit-when-idle", is_flag=True,
              help="With --follow and no RUN: exit once no run is active (0 if every run "
                   "followed succeeded, 1 otherwise).")
def status_cmd(
    ctx: click.Context, run_id: str | None, follow: bool, exit_when_idle: bool
) -> None:
    """A run's state, tasks by state, cost, elapsed, branch (no RUN: every active run)."""
    if exit_when_idle and (not follow or run_id is not None):
        raise click.UsageError("--exit-when-idle goes with --follow and no RUN", ctx=ctx)
    settings = settings_of(ctx)
    with settings.client() as client:
        if run_id is None and follow:
            from brctl._follow import follow_all

            out = sys.stdout
            ctx.exit(follow_all(client, out=out, tty=out.isatty(), as_json=settings.json,
                                exit_when_idle=exit_when_idle))
        if run_id is None:
            run_ids = [str(r["id"]) for r in _active_runs(client)]
            if not run_ids:
                _emit(ctx, [], lambda: "no active runs")
                return
        else:
            run_ids = [_resolve_run(client, run_id)]
        if follow:
            # --json --follow: the events as JSON lines, as `logs --follow --json` prints them.
            _follow_runs(ctx, client, run_ids, mode="status", as_json=settings.json)
        runs = [_run_with_tasks(client, rid) for rid in run_ids]
    if settings.json:
        print_json(runs[0] if run_id is not None else runs)
    else:
        from brctl._output import format_status  # not imported for --json: scripts poll this

        click.echo("\n\n".join(format_status(run) for run in runs))


@_command("runs")
def runs_cmd(ctx: click.Context) -> None:
    """List runs, newest first."""
    with settings_of(ctx).client() as client:
        runs = _as_list(client.call("run.list"), "runs")

    def human() -> str:
        from brctl._output import format_runs

        return format_runs(runs)

    _emit(ctx, runs, human)


@_command("tasks")
@_run_argument(required=False)
def tasks_cmd(ctx: click.Context, run_id: str | None) -> None:
    """A run's tasks: id, state, batch, attempts, model, cost, title (no RUN: the latest run)."""
    with settings_of(ctx).client() as client:
        if run_id is None:
            runs = _as_list(client.call("run.list"), "runs")  # newest first
            if not runs:
                from brctl._resolve import NoMatchError

                raise NoMatchError("no runs yet (start one with: brctl submit SPEC)",
                                   data={"kind": "run", "id": None})
            run_id = str(runs[0]["id"])
        else:
            run_id = _resolve_run(client, run_id)
        run = _run_with_tasks(client, run_id)  # run.get already carries the tasks
    tasks = _as_list(run["tasks"], "tasks")
    result = {"id": run.get("id", run_id), "run_id": run.get("id", run_id),
              "state": run.get("state"), "tasks": tasks}

    def human() -> str:
        from brctl._output import format_tasks

        return f"run {result['id']}  {result['state']}\n" + format_tasks(tasks)

    _emit(ctx, result, human)


@_command("task")
@_task_argument
def task_cmd(ctx: click.Context, task_id: str) -> None:
    """One task in full: prompt, verification output, files, events."""
    with settings_of(ctx).client() as client:
        task = client.call("task.get", {"task_id": _resolve_task(client, task_id)})

    def human() -> str:
        from brctl._output import format_task

        return format_task(task)

    _emit(ctx, task, human)


def _all_events(client: RpcClient, run_id: str) -> list[dict[str, Any]]:
    from brctl._client import all_events

    return all_events(client, run_id)


@_command("logs")
@_run_argument()
@click.option("--follow", is_flag=True, help="Keep printing events until the run ends.")
def logs_cmd(ctx: click.Context, run_id: str, follow: bool) -> None:
    """A run's events, one readable line each (--json: JSON lines, as stored)."""
    settings = settings_of(ctx)
    with settings.client() as client:
        run_id = _resolve_run(client, run_id)
        if follow:
            _follow_runs(ctx, client, [run_id], mode="logs", as_json=settings.json)
        events = _all_events(client, run_id)
    if settings.json:
        for event in events:
            click.echo(json_line(event))
        return
    from brctl._render import plain_line

    for event in events:
        click.echo(plain_line(event, None))


@_command("export")
@_run_argument()
def export_cmd(ctx: click.Context, run_id: str) -> None:
    """Every stored event of RUN as JSON lines (e.g. before retention prunes them)."""
    with settings_of(ctx).client() as client:
        events = _all_events(client, _resolve_run(client, run_id))
    for event in events:
        click.echo(json_line(event))


def _control(ctx: click.Context, method: str, key: str, value: str, done: str) -> None:
    with settings_of(ctx).client() as client:
        value = _resolve_task(client, value) if key == "task_id" else _resolve_run(client, value)
        result = client.call(method, {key: value})
    state = f" (now {result['state']})" if isinstance(result, dict) and result.get("state") else ""
    _emit(ctx, result, lambda: f"{done} {value}{state}")


@_command("pause")
@_run_argument()
def pause_cmd(ctx: click.Context, run_id: str) -> None:
    """Stop dispatching new batches of RUN (running ones finish)."""
    _control(ctx, "run.pause", "run_id", run_id, "paused run")


@_command("resume")
@_run_argument()
def resume_cmd(ctx: click.Context, run_id: str) -> None:
    """Resume a paused RUN."""
    _control(ctx, "run.resume", "run_id", run_id, "resumed run")


@_command("cancel")
@_run_argument()
def cancel_cmd(ctx: click.Context, run_id: str) -> None:
    """Cancel RUN: stop its in-flight work, mark the rest cancelled."""
    _control(ctx, "run.cancel", "run_id", run_id, "cancelled run")


@_command("retry")
@_task_argument
def retry_cmd(ctx: click.Context, task_id: str) -> None:
    """Re-queue a failed TASK and unblock what waited on it."""
    _control(ctx, "task.retry", "task_id", task_id, "re-queued task")


@_command("costs")
@click.option("--run", "run_id", metavar="RUN", help="Only this run.",
              shell_complete=_complete_run_ids)
@click.option("--by", type=click.Choice(["model", "day", "run"]), default="model",
              show_default=True, help="Group rows by.")
def costs_cmd(ctx: click.Context, run_id: str | None, by: str) -> None:
    """Spend from the database: tokens and USD, total and per model, day or run."""
    params: dict[str, Any] = {"by": by}
    with settings_of(ctx).client() as client:
        if run_id:
            params["run_id"] = _resolve_run(client, run_id)
        summary = client.call("costs.summary", params)

    def human() -> str:
        from brctl._output import format_costs

        return format_costs(summary)

    _emit(ctx, summary, human)


@_command("shutdown")
def shutdown_cmd(ctx: click.Context) -> None:
    """Stop the daemon gracefully (in-flight work checkpoints; runs continue on next start)."""
    with settings_of(ctx).client() as client:
        result = client.call("daemon.shutdown")
    _emit(ctx, result if result is not None else {"ok": True},
          lambda: "buildrunnerd is shutting down")


def console_main() -> NoReturn:
    """The ``brctl`` console script (and ``python -m brctl``): :func:`main`, then a fast exit.

    Once the command has run and its output is flushed, nothing is left to do, yet the
    interpreter's normal exit would tear down every module click imports: about a fifth of the
    time of ``brctl --json status`` (bench/brctl_bench.py). ``os._exit`` skips that teardown
    (and atexit handlers: brctl registers none; rich's live display restores the terminal when
    its ``with`` block ends, before this point). A bug's traceback still goes the normal way.
    """
    try:
        main(prog_name="brctl")
    except SystemExit as exc:
        code = _exit_status(exc.code)
    else:  # standalone click always raises SystemExit; be safe if that ever changes
        code = EXIT_OK
    os._exit(_flush_std_streams(code))


def _exit_status(code: object) -> int:
    # What the interpreter would make of SystemExit(code).
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_DAEMON_ERROR


def _flush_std_streams(code: int) -> int:
    """Flush stdout and stderr as the interpreter's exit would; the exit status to use."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            pass  # the reader left (`brctl --json runs | head -1`): not an error, as above
        except (OSError, ValueError):
            # The interpreter's own exit reports a failed flush with status 120.
            code = code or 120
    return code
