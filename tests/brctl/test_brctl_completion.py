"""`brctl completion SHELL`: the scripts are real and complete brctl's commands in bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from brctl._completion import completion
from brctl._service import service

# A root group with the commands this module owns, installed as an executable called `brctl`
# so bash can call it back exactly as it calls the real one.
PROGRAM = """\
#!{python}
import click
from brctl._completion import completion
from brctl._service import service

@click.group()
def main() -> None:
    pass

main.add_command(completion)
main.add_command(service)
main(prog_name="brctl")
"""


@click.group()
def root() -> None:
    """Stand-in for brctl's root group."""


root.add_command(completion)
root.add_command(service)


def _install_program(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program = bindir / "brctl"
    program.write_text(PROGRAM.format(python=sys.executable))
    program.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def test_scripts_for_each_shell() -> None:
    runner = CliRunner()
    bash = runner.invoke(root, ["completion", "bash"], prog_name="brctl")
    assert bash.exit_code == 0
    assert "_brctl_completion()" in bash.stdout
    assert "_BRCTL_COMPLETE=bash_complete" in bash.stdout
    zsh = runner.invoke(root, ["completion", "zsh"], prog_name="brctl")
    assert zsh.exit_code == 0 and "#compdef brctl" in zsh.stdout
    fish = runner.invoke(root, ["completion", "fish"], prog_name="brctl")
    assert fish.exit_code == 0 and "complete --no-files --command brctl" in fish.stdout


def test_unknown_shell_is_a_usage_error() -> None:
    result = CliRunner().invoke(root, ["completion", "tcsh"], prog_name="brctl")
    assert result.exit_code == 2
    assert "tcsh" in result.stderr


def _complete_in_bash(env: dict[str, str], words: str, cword: int) -> list[str]:
    bash = shutil.which("bash")
    assert bash
    script = (
        'source <(brctl completion bash)\n'
        f'COMP_WORDS=({words}); COMP_CWORD={cword}\n'
        '_brctl_completion brctl  # bash passes the command name as $1\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run([bash, "--norc", "-c", script], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_commands_and_options(tmp_path: Path) -> None:
    env = _install_program(tmp_path)
    assert _complete_in_bash(env, "brctl ser", 1) == ["service"]
    assert sorted(_complete_in_bash(env, "brctl service ''", 2)) == [
        "install", "status", "uninstall",
    ]
    assert "--dry-run" in _complete_in_bash(env, "brctl service install --", 3)


def test_bash_completes_the_installed_brctl() -> None:
    # The real console script from this environment, with every command of the contract.
    bindir = Path(sys.executable).parent
    assert (bindir / "brctl").exists()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    commands = set(_complete_in_bash(env, "brctl ''", 1))
    assert {"submit", "status", "logs", "service", "completion", "shutdown"} <= commands
    assert _complete_in_bash(env, "brctl sub", 1) == ["submit"]
    assert "--follow" in _complete_in_bash(env, "brctl submit x --fo", 3)
