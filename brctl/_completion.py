"""``brctl completion SHELL``: print the shell completion script for bash, zsh or fish.

The scripts are click's own: they call ``brctl`` back with ``_BRCTL_COMPLETE`` set, so
completion always matches the installed commands and options.
"""

from __future__ import annotations

import sys

import click
from click.shell_completion import get_completion_class

__all__ = ["completion", "SHELLS", "completion_script"]

SHELLS = ("bash", "zsh", "fish")
_PROG = "brctl"
_COMPLETE_VAR = "_BRCTL_COMPLETE"

_INSTALL_HINT = {
    "bash": 'echo \'eval "$(brctl completion bash)"\' >> ~/.bashrc',
    "zsh": 'echo \'eval "$(brctl completion zsh)"\' >> ~/.zshrc',
    "fish": "brctl completion fish > ~/.config/fish/completions/brctl.fish",
}


def completion_script(cli: click.Command, shell: str) -> str:
    """The completion script of ``cli`` (the root ``brctl`` group) for ``shell``."""
    cls = get_completion_class(shell)
    if cls is None:
        raise click.BadParameter(f"unsupported shell {shell!r}; use one of {', '.join(SHELLS)}")
    return cls(cli, {}, _PROG, _COMPLETE_VAR).source()


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash:  eval "$(brctl completion bash)"      (add it to ~/.bashrc)
    zsh:   eval "$(brctl completion zsh)"       (add it to ~/.zshrc)
    fish:  brctl completion fish > ~/.config/fish/completions/brctl.fish
    """
    root = ctx.find_root().command
    click.echo(completion_script(root, shell), nl=False)
    if not sys.stdout.isatty():
        return
    # On a terminal the user probably wanted to know how to install it, not the script itself.
    click.echo(f"\n# install: {_INSTALL_HINT[shell]}", err=True)
