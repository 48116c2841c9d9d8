"""``brctl``: the command-line client of buildrunnerd (see docs/protocol.md for the wire side).

Exit codes: 0 success; 1 the daemon answered with an error, or a followed run failed or was
cancelled; 2 usage error; 3 the daemon is not reachable.

Start-up time matters (scripts poll ``brctl --json status``), so this module imports click and
nothing else of weight: the socket client (``json``, ``socket``) is imported when a command
talks to the daemon, the text formatting when it prints text, rich only for a live display.
Only the polled commands (``ping``, ``status``, ``runs``) are defined here; the group loads
the others from their modules when they are named or listed. :func:`console_main` exits
without the interpreter's teardown. bench/brctl_bench.py measures it;
tests/brctl/test_brctl_imports.py keeps it so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from brctl._client import RpcClient
    from buildrunnerd.errors import BuildRunnerError

__all__ = ["console_main", "main"]

EXIT_OK, EXIT_DAEMON_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


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


def _set_socket(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    # click.Path(dir_okay=False)'s checks and messages (it has no exists=True here): a directory
    # and an unreadable file are refused, anything else (a missing path too) is left to connect.
    if os.path.isdir(value):
        raise click.BadParameter(f"File {click.format_filename(value)!r} is a directory.",
                                 ctx=ctx, param=param)
    if os.path.exists(value) and not os.access(value, os.R_OK):
        raise click.BadParameter(f"File {click.format_filename(value)!r} is not readable.",
                                 ctx=ctx, param=param)
    settings_of(ctx).socket = value


def _complete_socket_path(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    # What click.Path completes: files, by the shell.
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file")]


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        settings_of(ctx).json = True


def _show_help(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from buildrunnerd import __version__

        click.echo(f"brctl, version {__version__}", color=ctx.color)
        ctx.exit()


# --- what a start builds ---------------------------------------------------------------------
# Every start builds the group's parameters and those of the one command it runs; each click
# builds costs 15-60 us (the first of a kind the most), about as much as brctl's own modules
# take to import (bench/brctl_bench.py). So:
# - no gettext: click passes some texts through gettext (click.Path's constructor,
#   version_option, the help option it adds to every command), and the first call of a process
#   imports `locale` (~0.8 ms). brctl builds these with click's texts and checks through its
#   public API: --socket checks what click.Path(dir_okay=False) checks in its callback and
#   completes files as it does; --version and -h/--help are eager flags with the same texts
#   (tests/brctl/test_brctl_imports.py checks that `locale` stays out);
# - --socket and --json are accepted after the command name too: the commands share the
#   group's two Option objects (click keeps no per-command state in a parameter), and every
#   command shares one help option;
# - no ParamType subclass (subclassing the generic click.ParamType[str] costs ~0.1 ms).
_SOCKET_OPTION = click.Option(
    ["--socket"], metavar="PATH", expose_value=False, callback=_set_socket, is_eager=True,
    shell_complete=_complete_socket_path,
    help="Daemon socket (default: $BUILDRUNNER_SOCKET or the XDG runtime dir).",
)
_JSON_OPTION = click.Option(
    ["--json", "as_json"], is_flag=True, expose_value=False, callback=_set_json, is_eager=True,
    help="Machine-readable output on stdout (messages go to stderr).",
)


_HELP_OPTIONS: dict[tuple[str, ...], click.Option] = {}


def _help_option(names: tuple[str, ...]) -> click.Option:
    # One object for every command (and the same on every call, as click keeps its own:
    # a context orders its parameters by identity).
    option = _HELP_OPTIONS.get(names)
    if option is None:
        option = _HELP_OPTIONS[names] = click.Option(
            list(names), is_flag=True, expose_value=False, is_eager=True, callback=_show_help,
            help="Show this message and exit.")
    return option


class _Command(click.Command):
    """A brctl command: click's, with the help option built from a given text."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        names = self.get_help_option_names(ctx)
        if not names or not self.add_help_option:
            return None
        return _help_option(tuple(names))

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        # click's, without the check for repeated option names it runs under __debug__ on
        # every call (two Counters; four calls a start). tests/brctl/test_brctl_imports.py
        # runs click's own check on every brctl command.
        help_option = self.get_help_option(ctx)
        return self.params if help_option is None else [*self.params, help_option]


# Commands that live in other modules, imported only when used or listed: `brctl --json
# status` builds only the commands of this module (the ones scripts poll). `service` and
# `completion` come from the ops side, and brctl works without them.
_LAZY_COMMANDS = {
    "cancel": ("brctl._cmd_control", "cancel_cmd"),
    "completion": ("brctl._completion", "completion"),
    "costs": ("brctl._cmd_inspect", "costs_cmd"),
    "export": ("brctl._cmd_inspect", "export_cmd"),
    "logs": ("brctl._cmd_inspect", "logs_cmd"),
    "pause": ("brctl._cmd_control", "pause_cmd"),
    "plan": ("brctl._cmd_submit", "plan_cmd"),
    "resume": ("brctl._cmd_control", "resume_cmd"),
    "retry": ("brctl._cmd_control", "retry_cmd"),
    "service": ("brctl._service", "service"),
    "shutdown": ("brctl._cmd_control", "shutdown_cmd"),
    "submit": ("brctl._cmd_submit", "submit_cmd"),
    "task": ("brctl._cmd_inspect", "task_cmd"),
    "tasks": ("brctl._cmd_inspect", "tasks_cmd"),
}


class _BrctlGroup(_Command, click.Group):
    """Turns daemon errors into the contract's exit codes and messages on stderr."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name in _LAZY_COMMANDS if self.get_command(ctx, name) is not None]
        return sorted({*super().list_commands(ctx), *_POLLED_COMMANDS, *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _POLLED_COMMANDS and cmd_name not in self.commands:
            self.add_command(_POLLED_COMMANDS[cmd_name]())
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
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # `brctl logs RUN | head`: the reader is gone, which is not an error. Point stdout
            # at /dev/null so the interpreter's final flush does not complain either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_OK)
        except Exception as exc:
            # The errors are imported here, not at the start: a command that succeeds never
            # loads them. When a BuildRunnerError was raised, whoever raised it imported them.
            from buildrunnerd.errors import BuildRunnerError

            if not isinstance(exc, BuildRunnerError):
                raise
            from brctl._errors import DaemonUnreachableError

            unreachable = isinstance(exc, DaemonUnreachableError)
            _fail(ctx, exc, EXIT_UNREACHABLE if unreachable else EXIT_DAEMON_ERROR)


def _fail(ctx: click.Context, exc: BuildRunnerError, code: int) -> NoReturn:
    from brctl._errors import RemoteError
    from buildrunnerd import codes

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


def emit(ctx: click.Context, result: Any, human: Callable[[], str]) -> None:
    """``result`` as JSON with --json, else the text ``human()`` makes.

    ``human`` is called only for text output: its formatting module is imported then.
    """
    if settings_of(ctx).json:
        print_json(result)
    else:
        click.echo(human())


def as_list(result: Any, key: str) -> list[dict[str, Any]]:
    """A collection result as a list: methods may wrap it (``{"runs": [...]}``) or not."""
    if isinstance(result, dict):
        result = result.get(key, [])
    return list(result or [])


@click.group(cls=_BrctlGroup, context_settings={"help_option_names": ["-h", "--help"]},
             params=[click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                                  callback=_show_version, help="Show the version and exit."),
                     _SOCKET_OPTION, _JSON_OPTION])
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


# --- what the command modules share ---------------------------------------------------------
def command(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """A subcommand that also accepts the global --socket and --json after its name.

    It is not registered here: the group finds it in ``_LAZY_COMMANDS`` (or, for the commands
    of this module, in ``_POLLED_COMMANDS``).
    """
    def decorate(fn: Callable[..., None]) -> click.Command:
        return click.command(name, cls=_Command, params=[_SOCKET_OPTION, _JSON_OPTION])(
            click.pass_context(fn))
    return decorate


# brctl._resolve is imported only by a command given a RUN or TASK, or when completing.
def complete_run_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion of a RUN (see :func:`brctl._resolve.complete_run_ids`)."""
    from brctl import _resolve

    return _resolve.complete_run_ids(ctx, param, incomplete)


def complete_task_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion of a TASK (see :func:`brctl._resolve.complete_task_ids`)."""
    from brctl import _resolve

    return _resolve.complete_task_ids(ctx, param, incomplete)


def resolve_run(client: RpcClient, text: str) -> str:
    """The one run id ``text`` names (see :func:`brctl._resolve.resolve_run`)."""
    from brctl import _resolve

    return _resolve.resolve_run(client, text)


def resolve_task(client: RpcClient, text: str) -> str:
    """The one task id ``text`` names (see :func:`brctl._resolve.resolve_task`)."""
    from brctl import _resolve

    return _resolve.resolve_task(client, text)


def run_argument(*, required: bool = True) -> Callable[[Callable[..., None]], Any]:
    """The RUN argument (an id or a unique prefix), completed from the daemon's runs."""
    return click.argument("run_id", metavar="RUN" if required else "[RUN]", required=required,
                          shell_complete=complete_run_ids)


task_argument = click.argument("task_id", metavar="TASK", shell_complete=complete_task_ids)


# --- the commands scripts poll -----------------------------------------------------------------
# Built by the group when named or listed, as the commands of the other modules are imported
# then: a start builds the one command it runs, not three (each option click builds costs
# 20-30 us; bench/brctl_bench.py).
_POLLED_COMMANDS: dict[str, Callable[[], click.Command]] = {}


def _polled(
    name: str, *params: Callable[[Any], Any]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The command ``name``: the function with ``params`` (click's parameter decorators, in
    the order they would be stacked), built by the group on first use."""
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        def build() -> click.Command:
            decorated = fn
            for param in reversed(params):
                decorated = param(decorated)
            return command(name)(decorated)

        _POLLED_COMMANDS[name] = build
        return fn
    return register


@_polled("ping")
def ping_cmd(ctx: click.Context) -> None:
    """Daemon version, uptime, backend and workers."""
    with settings_of(ctx).client() as client:
        result = client.call("daemon.ping")

    def human() -> str:
        from brctl._output import format_ping

        return format_ping(result)

    emit(ctx, result, human)


def follow_runs(
    ctx: click.Context, client: RpcClient, run_ids: list[str], *,
    mode: Literal["status", "logs"], as_json: bool = False,
) -> NoReturn:
    from brctl._follow import follow, snapshot

    views = [snapshot(client, run_id) for run_id in run_ids]
    out = sys.stdout
    ctx.exit(follow(client, views, out=out, mode=mode, tty=out.isatty(), as_json=as_json))


def _active_runs(client: RpcClient) -> list[dict[str, Any]]:
    from buildrunnerd.codes import TERMINAL_RUN_STATES

    runs = as_list(client.call("run.list"), "runs")
    return [r for r in runs if r.get("state") not in TERMINAL_RUN_STATES]


def run_with_tasks(client: RpcClient, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = client.call("run.get", {"run_id": run_id})
    if run.get("tasks") is None:
        run["tasks"] = as_list(client.call("task.list", {"run_id": run_id}), "tasks")
    return run


def _run_named(client: RpcClient, text: str) -> dict[str, Any]:
    """The run ``text`` names, with its tasks.

    An exact id (what a script passes) needs one ``run.get``, and wins over any prefix as in
    ``run.resolve``; anything else (a prefix, an unknown id) is resolved first.
    """
    try:
        return run_with_tasks(client, text)
    except Exception as exc:
        # Imported already if the client raised a RemoteError (see BrctlGroup.invoke).
        from brctl._errors import RemoteError
        from buildrunnerd.codes import NOT_FOUND

        if not (isinstance(exc, RemoteError) and exc.code == NOT_FOUND):
            raise
    return run_with_tasks(client, resolve_run(client, text))


@_polled(
    "status",
    run_argument(required=False),
    click.option("--follow", is_flag=True,
                 help="Redraw live (with --json: print the events as JSON lines). With RUN: "
                      "until the run ends (exit 0 if it succeeded, 1 otherwise). Without RUN: "
                      "every run, including runs submitted later, until interrupted."),
    click.option("--exit-when-idle", is_flag=True,
                 help="With --follow and no RUN: exit once no run is active (0 if every run "
                      "followed succeeded, 1 otherwise)."),
)
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
            runs = [run_with_tasks(client, str(r["id"])) for r in _active_runs(client)]
            if not runs:
                emit(ctx, [], lambda: "no active runs")
                return
        elif follow:
            # --json --follow: the events as JSON lines, as `logs --follow --json` prints them.
            follow_runs(ctx, client, [resolve_run(client, run_id)], mode="status",
                        as_json=settings.json)
        else:
            runs = [_run_named(client, run_id)]
    if settings.json:
        print_json(runs[0] if run_id is not None else runs)
    else:
        from brctl._output import format_status  # not imported for --json: scripts poll this

        click.echo("\n\n".join(format_status(run) for run in runs))


@_polled("runs")
def runs_cmd(ctx: click.Context) -> None:
    """List runs, newest first."""
    with settings_of(ctx).client() as client:
        runs = as_list(client.call("run.list"), "runs")

    def human() -> str:
        from brctl._output import format_runs

        return format_runs(runs)

    emit(ctx, runs, human)


# --- the entry point ---------------------------------------------------------------------------
def console_main() -> NoReturn:
    """The ``brctl`` console script (and ``python -m brctl``): :func:`main`, then a fast exit.

    Once the command has run and its output is flushed, nothing is left to do, yet the
    interpreter's normal exit would tear down every module click imports: about a sixth of the
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
        if stream is None:  # started with that fd closed: nothing was written to it
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            pass  # the reader left (`brctl --json runs | head -1`): not an error, as in invoke
        except (OSError, ValueError):
            # The interpreter's own exit reports a failed flush with status 120.
            code = code or 120
    return code
