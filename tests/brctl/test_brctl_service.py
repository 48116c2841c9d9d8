"""Service files: systemd units verified by systemd-analyze, the launchd plist by plistlib, and
`brctl service install|uninstall|status` against a home directory in tmp_path."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import socket
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from brctl._service import (
    LAUNCHD_LABEL,
    find_buildrunnerd,
    render_plist,
    render_unit,
    service,
)

ROOT = Path(__file__).resolve().parents[2]


def _buildrunnerd() -> Path:
    exe = find_buildrunnerd()
    assert exe is not None, "buildrunnerd must be installed in the test environment"
    return exe


def _verify(unit_dir: Path, tmp_path: Path, *names: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is required (CI installs systemd)"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    # `--user` needs a runtime dir even in a container without a user manager; a private one
    # in tmp_path is enough for verification.
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [tool, "verify", "--user", *names], cwd=unit_dir, env=env, capture_output=True,
        text=True, timeout=60,
    )


def test_shipped_unit_is_the_rendered_default() -> None:
    assert (ROOT / "systemd" / "buildrunnerd.service").read_text() == render_unit()


def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / "buildrunnerd.service").write_text(render_unit(str(_buildrunnerd())))
    result = _verify(unit_dir, tmp_path, "buildrunnerd.service")
    assert result.returncode == 0, result.stderr
    # Unknown or misspelled settings are only warnings to systemd; we want none.
    assert result.stderr.strip() == "", result.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above must be able to fail: a unit whose program does not exist is rejected.
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / "buildrunnerd.service").write_text(render_unit(str(tmp_path / "missing")))
    result = _verify(unit_dir, tmp_path, "buildrunnerd.service")
    assert result.returncode != 0
    assert "missing" in result.stderr


def test_unit_settings() -> None:
    unit = render_unit("/opt/build runner/bin/buildrunnerd")
    assert 'ExecStart="/opt/build runner/bin/buildrunnerd" --log-format json' in unit
    assert "Type=notify" in unit
    assert "Restart=on-failure" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    # bwrap needs namespaces; these settings would break the agent's sandbox.
    for forbidden in ("NoNewPrivileges=", "RestrictNamespaces=", "PrivateUsers=",
                      "SystemCallFilter="):
        assert not any(line.startswith(forbidden) for line in unit.splitlines()), forbidden
    assert render_unit("/home/a%b/buildrunnerd").count("/home/a%%b/buildrunnerd") == 1


def test_shipped_plist_is_valid_and_complete() -> None:
    shipped = (ROOT / "config" / "launchd" / f"{LAUNCHD_LABEL}.plist").read_bytes()
    doc = plistlib.loads(shipped)
    assert doc["Label"] == "dev.buildrunner.buildrunnerd"
    assert doc["ProgramArguments"][0].endswith("/buildrunnerd")
    assert doc["KeepAlive"] == {"SuccessfulExit": False}
    assert doc["StandardOutPath"].endswith(".log")
    assert doc["StandardErrorPath"].endswith(".log")
    assert "PATH" in doc["EnvironmentVariables"]
    assert shipped == render_plist("/Users/you/.local/bin/buildrunnerd", Path("/Users/you"))


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "BUILDRUNNER_SOCKET": str(tmp_path / "run" / "br.sock"),
    }
    (tmp_path / "home").mkdir()
    (tmp_path / "run").mkdir()
    return env


@click.group()
@click.option("--json", "json_output", is_flag=True)
def root(json_output: bool) -> None:
    """Stand-in for brctl's root group (global --json) so `service` is used as brctl uses it."""


root.add_command(service)


def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(root, list(args), env=env, prog_name="brctl")
    return result.exit_code, result.stdout, result.stderr


def test_install_writes_the_unit_and_prints_commands(home: dict[str, str], tmp_path: Path) -> None:
    code, out, _ = _run(home, "service", "install", "--platform", "systemd")
    assert code == 0, out
    unit = Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user" / "buildrunnerd.service"
    text = unit.read_text()
    assert f"ExecStart={_buildrunnerd()} --log-format json" in text
    assert "systemctl --user daemon-reload && systemctl --user enable --now buildrunnerd" in out
    assert f"wrote: {unit}" in out
    # What was installed passes systemd's own verification.
    result = _verify(unit.parent, tmp_path, "buildrunnerd.service")
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr

    code, out, _ = _run(home, "service", "install", "--platform", "systemd")
    assert code == 0 and "unchanged" in out


def test_install_refuses_to_overwrite_a_different_file(home: dict[str, str]) -> None:
    unit = Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user" / "buildrunnerd.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/bin/true\n# my edits\n")
    code, _, err = _run(home, "service", "install", "--platform", "systemd")
    assert code == 1
    assert "--force" in err
    assert "# my edits" in unit.read_text()
    code, _, _ = _run(home, "service", "install", "--platform", "systemd", "--force")
    assert code == 0
    assert "Type=notify" in unit.read_text()


def test_dry_run_changes_nothing(home: dict[str, str]) -> None:
    code, out, _ = _run(home, "service", "install", "--platform", "systemd", "--dry-run")
    assert code == 0
    assert "Type=notify" in out
    assert not (Path(home["XDG_CONFIG_HOME"]) / "systemd").exists()


def test_uninstall_and_status(home: dict[str, str]) -> None:
    code, out, _ = _run(home, "service", "status", "--platform", "systemd")
    assert code == 1 and "not installed" in out
    assert _run(home, "service", "install", "--platform", "systemd")[0] == 0

    code, out, _ = _run(home, "--json", "service", "status", "--platform", "systemd")
    doc = json.loads(out)
    assert code == 0
    assert doc["installed"] is True and doc["up_to_date"] is True
    assert doc["listening"] is False

    # A daemon listening on the socket is seen as such.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(home["BUILDRUNNER_SOCKET"])
        sock.listen()
        code, out, _ = _run(home, "--json", "service", "status", "--platform", "systemd")
        assert json.loads(out)["listening"] is True

    code, out, _ = _run(home, "service", "uninstall", "--platform", "systemd", "--dry-run")
    assert code == 0 and "would remove" in out
    code, out, _ = _run(home, "service", "uninstall", "--platform", "systemd")
    assert code == 0
    assert "systemctl --user disable --now buildrunnerd" in out
    unit = Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user" / "buildrunnerd.service"
    assert not unit.exists()
    code, out, _ = _run(home, "service", "uninstall", "--platform", "systemd")
    assert code == 0 and "not installed" in out


def test_launchd_install_writes_a_valid_plist(home: dict[str, str]) -> None:
    code, out, _ = _run(home, "--json", "service", "install", "--platform", "launchd")
    assert code == 0
    doc = json.loads(out)
    path = Path(home["HOME"]) / "Library" / "LaunchAgents" / "dev.buildrunner.buildrunnerd.plist"
    assert doc["path"] == str(path)
    assert any(c.startswith("launchctl bootstrap") for c in doc["commands"])
    plist = plistlib.loads(path.read_bytes())
    assert plist["ProgramArguments"][0] == str(_buildrunnerd())
    assert plist["StandardErrorPath"] == str(
        Path(home["HOME"]) / "Library" / "Logs" / "buildrunner" / "buildrunnerd.err.log"
    )
    assert (Path(home["HOME"]) / "Library" / "Logs" / "buildrunner").is_dir()
    code, out, _ = _run(home, "service", "uninstall", "--platform", "launchd")
    assert code == 0 and "launchctl bootout" in out
    assert not path.exists()


def test_the_installed_brctl_has_the_service_commands(home: dict[str, str]) -> None:
    brctl = _buildrunnerd().parent / "brctl"
    env = {**os.environ, **home}
    result = subprocess.run(
        [str(brctl), "--json", "service", "install", "--platform", "systemd", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dry_run"] is True
    assert doc["path"] == str(
        Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user" / "buildrunnerd.service"
    )
    assert not Path(doc["path"]).exists()
