"""``buildrunnerd``: run the daemon in the foreground, or plan a spec offline.

    buildrunnerd [--socket PATH] [--home DIR] [--config FILE] [--backend B] [--workers N]
    buildrunnerd --check-config
    buildrunnerd --check-sandbox
    buildrunnerd plan SPEC [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from buildrunnerd import __version__

__all__ = ["main"]


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="buildrunnerd")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None,
              help="Control socket (default: $BUILDRUNNER_SOCKET or the XDG runtime dir).")
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="State dir: database, logs, worktrees (default: $BUILDRUNNER_HOME).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="Config file (TOML; default: $BUILDRUNNER_CONFIG or XDG config).")
@click.option("--backend", type=click.Choice(["anthropic", "claude-code", "simulated"]),
              default=None,
              help="Model backend (default: anthropic when ANTHROPIC_API_KEY is set, else "
                   "claude-code when a logged-in Claude Code CLI is found, else simulated).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Daemon-wide number of parallel workers.")
@click.option("--log-format", type=click.Choice(["json", "console"]), default=None)
@click.option("--check-config", is_flag=True,
              help="Validate the configuration, print the effective values and exit.")
@click.option("--check-sandbox", is_flag=True,
              help="Show what the sandbox hides from model-written code; exit 1 when it "
                   "cannot confine.")
@click.pass_context
def main(
    ctx: click.Context,
    socket_path: Path | None,
    home: Path | None,
    config_file: Path | None,
    backend: str | None,
    workers: int | None,
    log_format: str | None,
    check_config: bool,
    check_sandbox: bool,
) -> None:
    """BuildRunner daemon: runs specs as parallel, verified Claude agents."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    if ctx.invoked_subcommand is not None:
        return
    if check_sandbox:
        sys.exit(_check_sandbox(config_file, home, socket_path))
    from buildrunnerd.daemon._app import DaemonOptions, run_daemon

    options = DaemonOptions(
        socket_path=socket_path,
        home=home,
        config_file=config_file,
        backend=backend,
        workers=workers,
        log_format=log_format,
        check_config=check_config,
    )
    sys.exit(run_daemon(options))


def _check_sandbox(config_file: Path | None, home: Path | None, socket: Path | None) -> int:
    import anyio

    from buildrunnerd import paths
    from buildrunnerd.config import load_config
    from buildrunnerd.errors import ConfigError
    from buildrunnerd.sandbox import check_sandbox, format_check

    try:
        config = load_config(config_file if config_file is not None else paths.config_path())
    except ConfigError as exc:
        click.echo(f"buildrunnerd: {exc}", err=True)
        return 1
    state = home or paths.state_home()
    check = anyio.run(lambda: check_sandbox(config.agent.sandbox, state_dir=state,
                                            socket_path=socket or paths.socket_path()))
    click.echo(format_check(check))
    return 0 if check.ok else 1


@main.command("plan")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan_cmd(ctx: click.Context, spec: Path, as_json: bool) -> None:
    """Plan SPEC offline (no daemon, no API key) and print it."""
    from buildrunnerd.daemon._plan_cli import plan_command

    sys.exit(plan_command(spec, as_json=as_json, config_file=ctx.obj.get("config_file")))
