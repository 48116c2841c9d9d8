"""Where things live: state dir, control socket, config file (see docs/configuration.md).

Light on purpose: imported by ``brctl``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["state_home", "socket_path", "config_path"]


def state_home(env: Mapping[str, str] | None = None) -> Path:
    """``$BUILDRUNNER_HOME``, else ``$XDG_STATE_HOME/buildrunner``,
    else ``~/.local/state/buildrunner``."""
    env = os.environ if env is None else env
    if env.get("BUILDRUNNER_HOME"):
        return Path(env["BUILDRUNNER_HOME"]).expanduser()
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]).expanduser() / "buildrunner"
    return Path.home() / ".local" / "state" / "buildrunner"


def socket_path(env: Mapping[str, str] | None = None) -> Path:
    """``$BUILDRUNNER_SOCKET``, else ``$XDG_RUNTIME_DIR/buildrunner/buildrunnerd.sock``,
    else ``<state home>/buildrunnerd.sock``."""
    env = os.environ if env is None else env
    if env.get("BUILDRUNNER_SOCKET"):
        return Path(env["BUILDRUNNER_SOCKET"]).expanduser()
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "buildrunner" / "buildrunnerd.sock"
    return state_home(env) / "buildrunnerd.sock"


def config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """``$BUILDRUNNER_CONFIG``, else ``$XDG_CONFIG_HOME/buildrunner/config.toml`` (or
    ``~/.config/buildrunner/config.toml``) if it exists, else None (built-in defaults)."""
    env = os.environ if env is None else env
    if env.get("BUILDRUNNER_CONFIG"):
        return Path(env["BUILDRUNNER_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    candidate = base / "buildrunner" / "config.toml"
    return candidate if candidate.exists() else None
