"""Contract: names and layout (distribution, console scripts, folders, README, .ci/run) and
brctl's import diet."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.contract._support import (
    BRCTL,
    BUILDRUNNERD,
    HEAVY_MODULES,
    REPO_ROOT,
    Daemon,
    clean_env,
)


def test_one_distribution_named_buildrunner_for_python_311() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert project["name"] == "buildrunner"
    assert re.fullmatch(r">=\s*3\.11(\.0)?", project["requires-python"].strip())


def test_console_scripts_are_buildrunnerd_and_brctl() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    scripts = project["scripts"]
    assert scripts["buildrunnerd"].split(":")[0].split(".")[0] == "buildrunnerd"
    assert scripts["brctl"].split(":")[0].split(".")[0] == "brctl"
    for exe in (BUILDRUNNERD, BRCTL):  # installed, runnable
        result = subprocess.run([str(exe), "--help"], capture_output=True, text=True,
                                env=clean_env(), timeout=60)
        assert result.returncode == 0, result.stderr


def test_top_level_folders() -> None:
    for folder in ("buildrunnerd", "brctl", "tests", "config", "systemd", "docs", "examples",
                   "bench"):
        assert (REPO_ROOT / folder).is_dir(), folder
    for package in ("buildrunnerd", "brctl"):  # the two import packages
        assert (REPO_ROOT / package / "__init__.py").is_file(), package


def _readme_commands() -> dict[str, str]:
    """The README's commands labelled ``# run`` / ``# test`` in its fenced shell blocks."""
    readme = (REPO_ROOT / "README.md").read_text("utf-8")
    commands: dict[str, str] = {}
    for block in re.findall(r"```(?:sh|bash|console|shell)?\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            match = re.match(r"\s*(?:\$\s*)?(?P<cmd>[^#]+?)\s+#\s*(?P<label>run|test)\b", line)
            if match and match["label"] not in commands:
                commands[match["label"]] = match["cmd"].strip()
    return commands


def test_readme_holds_the_run_and_test_commands() -> None:
    commands = _readme_commands()
    assert set(commands) == {"run", "test"}, commands
    for command in commands.values():
        program = shlex.split(command)[0]
        if "/" in program:  # a script of the repository: it must exist and be executable
            path = REPO_ROOT / program
            assert path.is_file(), command
            assert path.stat().st_mode & 0o111, f"{command} is not executable"


def test_ci_run_calls_the_readme_test_command() -> None:
    test_command = _readme_commands()["test"]
    ci = REPO_ROOT / ".ci" / "run"
    assert ci.is_file() and ci.stat().st_mode & 0o111
    executed = [line.split("#", 1)[0].strip() for line in ci.read_text("utf-8").splitlines()]
    assert any(line == test_command or line.startswith(test_command + " ")
               or line.endswith(" " + test_command) for line in executed), (test_command,
                                                                          executed)


def _modules_imported_by_brctl(*args: str, env: dict[str, str]) -> set[str]:
    """Every module the real ``brctl`` imports to run ``args`` (``-X importtime`` output)."""
    result = subprocess.run([str(BRCTL), *args], capture_output=True, text=True, timeout=60,
                            env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    modules = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    assert modules, result.stderr  # the profile output must be there, or this proves nothing
    return modules


@pytest.mark.parametrize("args", [("--help",), ("ping",), ("--json", "ping"), ("runs",)])
def test_brctl_does_not_import_the_daemons_heavy_modules(daemon: Daemon,
                                                         args: tuple[str, ...]) -> None:
    modules = _modules_imported_by_brctl("--socket", str(daemon.socket), *args, env=daemon.env)
    heavy = {m for m in modules if m.split(".")[0] in HEAVY_MODULES}
    assert not heavy, f"brctl {' '.join(args)} imports {sorted(heavy)}"


def test_brctl_without_daemon_does_not_import_heavy_modules(tmp_path: Path) -> None:
    modules = _modules_imported_by_brctl("--socket", str(tmp_path / "none.sock"), "ping",
                                         env=clean_env())
    assert not {m for m in modules if m.split(".")[0] in HEAVY_MODULES}
