"""Contract: paths and environment (BUILDRUNNER_HOME, XDG_STATE_HOME, XDG_RUNTIME_DIR,
BUILDRUNNER_SOCKET, BUILDRUNNER_CONFIG, XDG_CONFIG_HOME), the --socket/--home/--config flags,
and the permissions of the socket and its folder."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.contract._support import Daemon, brctl, clean_env, json_out, start_daemon
from tests.contract.conftest import CONFIG_WORKERS


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_socket(socket_path: Path) -> None:
    assert socket_path.exists() and stat.S_ISSOCK(socket_path.stat().st_mode), socket_path
    assert _mode(socket_path.parent) == 0o700, oct(_mode(socket_path.parent))
    assert _mode(socket_path) == 0o600, oct(_mode(socket_path))


def _has_state(home: Path) -> bool:
    return home.is_dir() and any(home.iterdir())


def _config(path: Path, workers: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[daemon]\nworkers = {workers}\n", encoding="utf-8")
    return path


def _stop(daemon: Daemon) -> None:
    assert daemon.stop_sync() == 0, daemon.stderr()


def test_explicit_home_socket_and_config_env(daemon: Daemon) -> None:
    """The module daemon: BUILDRUNNER_HOME, BUILDRUNNER_SOCKET and BUILDRUNNER_CONFIG."""
    _check_socket(daemon.socket)
    assert _has_state(Path(daemon.env["BUILDRUNNER_HOME"]))
    assert json_out(daemon.brctl("--json", "ping"))["workers"] == CONFIG_WORKERS


def test_xdg_defaults(tmp_path: Path) -> None:
    state, runtime, config = tmp_path / "xs", tmp_path / "xr", tmp_path / "xc"
    state.mkdir()
    runtime.mkdir(mode=0o700)
    _config(config / "buildrunner" / "config.toml", 5)
    env = clean_env(XDG_STATE_HOME=str(state), XDG_RUNTIME_DIR=str(runtime),
                    XDG_CONFIG_HOME=str(config), HOME=str(tmp_path / "home"))
    socket_path = runtime / "buildrunner" / "buildrunnerd.sock"
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path)
    try:
        _check_socket(socket_path)
        assert _has_state(state / "buildrunner")
        assert not (tmp_path / "home").exists()
        ping = json_out(brctl("--json", "ping", env=env))  # brctl finds the same default
        assert ping["pid"] == daemon.proc.pid
        assert ping["workers"] == 5  # $XDG_CONFIG_HOME/buildrunner/config.toml was read
    finally:
        _stop(daemon)


def test_home_fallbacks_without_xdg(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    env = clean_env(HOME=str(home))
    state = home / ".local" / "state" / "buildrunner"
    socket_path = state / "buildrunnerd.sock"  # no XDG_RUNTIME_DIR: $BUILDRUNNER_HOME/...
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path)
    try:
        assert socket_path.exists()
        assert _mode(socket_path) == 0o600
        assert _has_state(state)
        ping = json_out(brctl("--json", "ping", env=env))
        assert ping["pid"] == daemon.proc.pid
    finally:
        _stop(daemon)


def test_socket_defaults_to_buildrunner_home(tmp_path: Path) -> None:
    home = tmp_path / "bh"
    env = clean_env(BUILDRUNNER_HOME=str(home), XDG_STATE_HOME=str(tmp_path / "xs"),
                    HOME=str(tmp_path / "home"))
    socket_path = home / "buildrunnerd.sock"
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path)
    try:
        assert socket_path.exists() and _mode(socket_path) == 0o600
        assert _has_state(home)
        assert not _has_state(tmp_path / "xs" / "buildrunner")  # BUILDRUNNER_HOME wins
        assert json_out(brctl("--json", "ping", env=env))["pid"] == daemon.proc.pid
    finally:
        _stop(daemon)


def test_flags_override_the_environment(tmp_path: Path) -> None:
    env_home, flag_home = tmp_path / "eh", tmp_path / "fh"
    env_socket, flag_socket = tmp_path / "es" / "brd.sock", tmp_path / "fs" / "brd.sock"
    env_config = _config(tmp_path / "env.toml", 5)
    flag_config = _config(tmp_path / "flag.toml", 6)
    env = clean_env(BUILDRUNNER_HOME=str(env_home), BUILDRUNNER_SOCKET=str(env_socket),
                    BUILDRUNNER_CONFIG=str(env_config))
    daemon = start_daemon(tmp_path, "--socket", str(flag_socket), "--home", str(flag_home),
                          "--config", str(flag_config), env=env, socket_path=flag_socket)
    try:
        _check_socket(flag_socket)
        assert not env_socket.exists()
        assert _has_state(flag_home) and not _has_state(env_home)
        # brctl --socket beats $BUILDRUNNER_SOCKET too
        ping = json_out(brctl("--socket", str(flag_socket), "--json", "ping", env=env))
        assert ping["pid"] == daemon.proc.pid
        assert ping["workers"] == 6  # --config, not $BUILDRUNNER_CONFIG
    finally:
        _stop(daemon)
