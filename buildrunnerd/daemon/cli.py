"""``buildrunnerd``: run the daemon in the foreground, or plan a spec offline.

    buildrunnerd [--socket PATH] [--home DIR] [--config FILE] [--backend B] [--workers N]
    buildrunnerd --check-config
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
@click.option("--backend", type=click.Choice(["anthropic", "simulated"]), default=None,
              help="Model backend (default: anthropic when ANTHROPIC_API_KEY is set).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Daemon-wide number of parallel workers.")
@click.option("--log-format", type=click.Choice(["json", "console"]), default=None)
@click.option("--check-config", is_flag=True,
              help="Validate the configuration, print the effective values and exit.")
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
) -> None:
    """BuildRunner daemon: runs specs as parallel, verified Claude agents."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    if ctx.invoked_subcommand is not None:
        return
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


@main.command("plan")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan_cmd(ctx: click.Context, spec: Path, as_json: bool) -> None:
    """Plan SPEC offline (no daemon, no API key) and print it."""
    from buildrunnerd.plan._cli import plan_command

    sys.exit(plan_command(spec, as_json=as_json, config_file=ctx.obj.get("config_file")))
