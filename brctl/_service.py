"""``brctl service install|uninstall|status``: run buildrunnerd as a per-user service.

Linux: a systemd user unit in ``$XDG_CONFIG_HOME/systemd/user/`` (``Type=notify``). macOS: a
LaunchAgent plist in ``~/Library/LaunchAgents/``. The files are written with the path of the
``buildrunnerd`` that belongs to this ``brctl`` (the same virtual environment), and the commands
that activate them are printed, not run: enabling a service is the user's decision.

The unit and plist shipped in ``systemd/`` and ``config/launchd/`` are rendered by this module
(a test keeps them identical), so there is one definition of each.
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import click

from buildrunnerd.paths import socket_path

__all__ = [
    "service",
    "LAUNCHD_LABEL",
    "render_socket_unit",
    "render_unit",
    "render_plist",
    "unit_path",
    "plist_path",
    "find_buildrunnerd",
]

LAUNCHD_LABEL = "dev.buildrunner.buildrunnerd"
UNIT_NAME = "buildrunnerd.service"
DEFAULT_UNIT_EXEC = "%h/.local/bin/buildrunnerd"

_UNIT_TEMPLATE = """\
# BuildRunner daemon as a systemd *user* service.
#
# Installed by `brctl service install` into ~/.config/systemd/user/ with ExecStart pointing at
# the buildrunnerd of the environment it was installed from. By hand:
#   cp systemd/buildrunnerd.service ~/.config/systemd/user/   (fix ExecStart if needed)
#   systemctl --user daemon-reload && systemctl --user enable --now buildrunnerd
#   loginctl enable-linger "$USER"   # keep it running when you are logged out
# Logs: journalctl --user -u buildrunnerd -f   Reload config: systemctl --user reload buildrunnerd
# Started on demand instead: systemd/buildrunnerd.socket (socket activation).
# Why each setting is here: docs/operations.md ("The systemd unit").

[Unit]
Description=BuildRunner daemon (turns product specs into tested code)
After=network-online.target
Wants=network-online.target

[Service]
# The daemon sends READY=1 over $NOTIFY_SOCKET once its control socket is listening.
Type=notify
NotifyAccess=main
ExecStart={exec_start} --log-format json
ExecReload=/bin/kill -HUP $MAINPID
# Secrets (ANTHROPIC_API_KEY=...) live outside the unit; the leading "-" makes the file optional.
EnvironmentFile=-%h/.config/buildrunner/env
Environment=PYTHONUNBUFFERED=1
# The user manager's PATH lacks ~/.local/bin, where pip/pipx/uv put the tools that test
# commands and the claude-code backend run (pytest, ruff, claude, ...).
Environment=PATH=%h/.local/bin:/usr/local/bin:/usr/bin:/bin
Restart=on-failure
RestartSec=5s
# SIGTERM: the daemon lets in-flight work checkpoint within daemon.grace_period_s (20 s);
# systemd waits a little longer before SIGKILL. KillMode=mixed sends SIGTERM to the daemon only,
# so it can stop its agents' subprocesses itself; SIGKILL at the timeout reaches them all.
KillMode=mixed
TimeoutStopSec=30s
TimeoutStartSec=60s
# Hardening that keeps git and bubblewrap working:
# - No NoNewPrivileges, RestrictNamespaces, SystemCallFilter or PrivateUsers: the agent's bash
#   sandbox is bubblewrap, which creates user/mount/pid namespaces (and a setuid bwrap fails
#   under no_new_privs). In a user unit several other options imply NoNewPrivileges, so they
#   are left out too.
# - ProtectSystem=strict makes /usr, /etc, /var ... read-only; the daemon writes only in its
#   state dir, in worktrees under it, in the runtime dir (socket) and in the .git of the
#   repositories you submit (in your home or under /tmp). Repositories elsewhere need a
#   drop-in with ReadWritePaths= (see docs/operations.md).
# - No PrivateTmp: it would give the daemon an empty /tmp of its own, hiding every spec and
#   repository you keep under /tmp ("no such file" for a path you can see).
ProtectSystem=strict
ReadWritePaths=%h %t /tmp /var/tmp
UMask=0077

[Install]
WantedBy=default.target
"""


SOCKET_UNIT_NAME = "buildrunnerd.socket"

_SOCKET_TEMPLATE = """\
# BuildRunner's control socket, for systemd socket activation: systemd listens on the
# daemon's default socket and starts buildrunnerd.service at the first connection (the daemon
# takes the socket over through $LISTEN_FDS). By hand, next to buildrunnerd.service:
#   cp systemd/buildrunnerd.socket ~/.config/systemd/user/
#   systemctl --user daemon-reload && systemctl --user enable --now buildrunnerd.socket
# Why each setting is here: docs/operations.md ("Socket activation").

[Unit]
Description=BuildRunner daemon control socket

[Socket]
# $XDG_RUNTIME_DIR/buildrunner/buildrunnerd.sock: where brctl looks by default.
ListenStream=%t/buildrunner/buildrunnerd.sock
SocketMode=0600
DirectoryMode=0700
# The daemon removes nothing here at exit: systemd owns the file and listens again.
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""


def render_socket_unit() -> str:
    """The systemd user socket unit that activates ``buildrunnerd.service``."""
    return _SOCKET_TEMPLATE


def render_unit(exec_path: str = DEFAULT_UNIT_EXEC) -> str:
    """The systemd user unit with ``ExecStart`` running ``exec_path``."""
    # systemd expands %-specifiers in ExecStart: a literal % in a real path must be doubled,
    # but the shipped default deliberately uses %h.
    escaped = exec_path if exec_path == DEFAULT_UNIT_EXEC else exec_path.replace("%", "%%")
    if re.search(r"\s", escaped):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _UNIT_TEMPLATE.format(exec_start=escaped)


def render_plist(exec_path: str, home: Path) -> bytes:
    """The launchd LaunchAgent plist (XML) running ``exec_path`` for the user whose home is
    ``home``."""
    logs = home / "Library" / "Logs" / "buildrunner"
    doc: dict[str, Any] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [exec_path, "--log-format", "json"],
        "RunAtLoad": True,
        # Restart after a crash, not after a clean `brctl shutdown` (exit 0).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "ProcessType": "Background",
        # SIGTERM first; the daemon checkpoints within its grace period (20 s).
        "ExitTimeOut": 30,
        "StandardOutPath": str(logs / "buildrunnerd.out.log"),
        "StandardErrorPath": str(logs / "buildrunnerd.err.log"),
        "EnvironmentVariables": {
            # launchd starts agents with a minimal PATH; git and the projects' test commands
            # (python, node ...) must be found, including Homebrew's prefixes.
            "PATH": "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "PYTHONUNBUFFERED": "1",
            "BUILDRUNNER_LOG_FORMAT": "json",
        },
    }
    return plistlib.dumps(doc, sort_keys=False)


def _platform(choice: str) -> str:
    if choice != "auto":
        return choice
    return "launchd" if sys.platform == "darwin" else "systemd"


def unit_path(env: dict[str, str] | None = None) -> Path:
    """Where the systemd user unit goes: ``$XDG_CONFIG_HOME/systemd/user/buildrunnerd.service``."""
    env = dict(os.environ) if env is None else env
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else _home(env) / ".config"
    return base / "systemd" / "user" / UNIT_NAME


def plist_path(env: dict[str, str] | None = None) -> Path:
    """Where the LaunchAgent goes: ``~/Library/LaunchAgents/dev.buildrunner.buildrunnerd.plist``."""
    env = dict(os.environ) if env is None else env
    return _home(env) / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def _home(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def find_buildrunnerd() -> Path | None:
    """The ``buildrunnerd`` next to this Python (same virtualenv), else the one on ``$PATH``."""
    beside = Path(sys.executable).parent / "buildrunnerd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("buildrunnerd")
    return Path(found).absolute() if found else None


def _target(platform: str) -> Path:
    return unit_path() if platform == "systemd" else plist_path()


def _render(platform: str, exec_path: Path) -> bytes:
    if platform == "systemd":
        return render_unit(str(exec_path)).encode()
    return render_plist(str(exec_path), _home(dict(os.environ)))


def _activate_commands(platform: str, path: Path) -> list[str]:
    if platform == "systemd":
        return [
            "systemctl --user daemon-reload && systemctl --user enable --now buildrunnerd",
            'loginctl enable-linger "$USER"   # optional: keep it running after logout',
        ]
    return [
        f'launchctl bootstrap "gui/$(id -u)" "{path}"',
        f'launchctl kickstart -k "gui/$(id -u)/{LAUNCHD_LABEL}"',
    ]


def _deactivate_commands(platform: str, path: Path) -> list[str]:
    if platform == "systemd":
        return ["systemctl --user disable --now buildrunnerd"]
    return [f'launchctl bootout "gui/$(id -u)/{LAUNCHD_LABEL}"']


def _json_wanted(ctx: click.Context) -> bool:
    # brctl's global --json lives on the root command; honour it without depending on its
    # internals (the option may be absent when this group is used on its own).
    root = ctx.find_root()
    if any(root.params.get(name) for name in ("json", "as_json", "json_output", "json_mode")):
        return True
    obj = root.obj
    if isinstance(obj, dict):
        return bool(obj.get("json"))
    return bool(getattr(obj, "json", False))


def _out(ctx: click.Context, doc: dict[str, Any], lines: list[str]) -> None:
    if _json_wanted(ctx):
        click.echo(json.dumps(doc))
        return
    for line in lines:
        click.echo(line)


_platform_option = click.option(
    "--platform", "platform_choice", type=click.Choice(["auto", "systemd", "launchd"]),
    default="auto", show_default=True,
    help="Service manager (auto: launchd on macOS, systemd elsewhere).",
)
_dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Print what would be written or removed; change nothing.",
)


@click.group("service")
def service() -> None:
    """Run buildrunnerd as a per-user service (systemd user unit or launchd agent)."""


@service.command("install")
@_platform_option
@_dry_run_option
@click.option("--exec", "exec_path", type=click.Path(path_type=Path), default=None,
              help="buildrunnerd to run (default: the one installed next to this brctl).")
@click.option("--force", is_flag=True, help="Overwrite a service file that differs.")
@click.pass_context
def install(
    ctx: click.Context, platform_choice: str, dry_run: bool, exec_path: Path | None, force: bool
) -> None:
    """Write the service file for the current user and print how to start it."""
    platform = _platform(platform_choice)
    exe = exec_path.absolute() if exec_path is not None else find_buildrunnerd()
    if exe is None:
        raise click.ClickException(
            "cannot find the buildrunnerd executable next to this brctl or on $PATH; "
            "install BuildRunner (pip install buildrunner) or pass --exec PATH"
        )
    target = _target(platform)
    content = _render(platform, exe)
    existing = target.read_bytes() if target.exists() else None
    if existing is not None and existing != content and not force and not dry_run:
        raise click.ClickException(
            f"{target} exists and differs from what would be written; "
            "rerun with --force to replace it (or --dry-run to see the new file)"
        )
    if dry_run:
        if not _json_wanted(ctx):
            click.echo(f"# would write {target}")
            click.echo(content.decode(), nl=False)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        if platform == "launchd":
            (_home(dict(os.environ)) / "Library" / "Logs" / "buildrunner").mkdir(
                parents=True, exist_ok=True
            )
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(content)
        tmp.replace(target)  # atomic: the service manager never sees half a file
    commands = _activate_commands(platform, target)
    verb = "would write" if dry_run else ("unchanged" if existing == content else "wrote")
    _out(
        ctx,
        {"platform": platform, "path": str(target), "exec": str(exe), "dry_run": dry_run,
         "changed": existing != content, "commands": commands},
        [f"{verb}: {target}", f"runs: {exe}", "start it with:", *(f"  {c}" for c in commands)],
    )


@service.command("uninstall")
@_platform_option
@_dry_run_option
@click.pass_context
def uninstall(ctx: click.Context, platform_choice: str, dry_run: bool) -> None:
    """Remove the service file (stop the service first with the printed command)."""
    platform = _platform(platform_choice)
    target = _target(platform)
    present = target.exists()
    if present and not dry_run:
        target.unlink()
    commands = _deactivate_commands(platform, target)
    if platform == "systemd":
        commands = [*commands, "systemctl --user daemon-reload"]
    if not present:
        lines = [f"not installed: {target}"]
    else:
        lines = [f"{'would remove' if dry_run else 'removed'}: {target}",
                 "stop the running service with:", *(f"  {c}" for c in commands)]
    _out(ctx, {"platform": platform, "path": str(target), "removed": present and not dry_run,
               "was_installed": present, "dry_run": dry_run, "commands": commands}, lines)


def _socket_answers(path: Path, timeout_s: float = 0.5) -> bool:
    # A plain connect is enough to tell "listening" from "stale file": no RPC needed.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
    except OSError:
        return False
    return True


@service.command("status")
@_platform_option
@click.pass_context
def status(ctx: click.Context, platform_choice: str) -> None:
    """Show whether the service file is installed and current, and whether the daemon listens.

    Exits 0 when installed, 1 when not.
    """
    platform = _platform(platform_choice)
    target = _target(platform)
    installed = target.exists()
    exe = find_buildrunnerd()
    current = installed and exe is not None and target.read_bytes() == _render(platform, exe)
    sock = socket_path()
    listening = _socket_answers(sock)
    lines = [
        f"service file: {target} ({'installed' if installed else 'not installed'})",
    ]
    if installed:
        lines.append("up to date: " + ("yes" if current else
                                        "no (run `brctl service install --force`)"))
    lines.append(f"buildrunnerd: {exe if exe else 'not found'}")
    lines.append(f"socket: {sock} ({'listening' if listening else 'not listening'})")
    if platform == "systemd":
        lines.append("details: systemctl --user status buildrunnerd")
    else:
        lines.append(f'details: launchctl print "gui/$(id -u)/{LAUNCHD_LABEL}"')
    _out(ctx, {"platform": platform, "path": str(target), "installed": installed,
               "up_to_date": current, "exec": str(exe) if exe else None,
               "socket": str(sock), "listening": listening}, lines)
    ctx.exit(0 if installed else 1)
