"""Starting the Claude Code CLI inside the sandbox.

The SDK starts the executable named by ``ClaudeAgentOptions.cli_path`` with its own arguments.
For each invocation BuildRunner writes a small launcher script there that execs the sandbox's
command line (:meth:`Sandbox.wrap`) around the real CLI, with:

* the network (the CLI calls the API), nothing else of the host: the home is hidden, the
  worktree is the only writable project folder;
* the CLI's config dir (``$CLAUDE_CONFIG_DIR``, under the state dir, which the sandbox hides)
  made visible and writable again: the CLI keeps its login and its session files there;
* the environment of the sandbox's allowlist plus the CLI's variables. The credentials
  (API key, OAuth token) are never written into the script: it passes them on from its own
  environment, which the SDK gives it.

``SandboxPolicy`` has no second writable path, so the config dir is added to the sandbox's
command line here (bubblewrap: a ``--bind``; sandbox-exec: an allow rule at the end of the
profile). The model's shell commands do not run in this sandbox: they go through
BuildRunner's own bash tool, confined without network or credentials.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio

from buildrunnerd.sandbox import Confinement, toolchain_paths

__all__ = ["SECRET_KEYS", "launcher_script", "write_launcher"]

# Passed from the launcher's environment (given by the SDK), never written into the script.
SECRET_KEYS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
_FROM_SDK = ("CLAUDE_CODE_ENTRYPOINT", "CLAUDE_AGENT_SDK_VERSION")


def _with_config_dir(name: str, argv: list[str], config_dir: str) -> list[str]:
    if name == "bwrap" and "--chdir" in argv:
        # After every tmpfs that hides the state dir, before the command.
        at = len(argv) - 1 - argv[::-1].index("--chdir")
        return [*argv[:at], "--bind", config_dir, config_dir, *argv[at:]]
    if name == "sandbox-exec" and len(argv) > 2 and argv[1] == "-p":
        quoted = '"' + config_dir.replace("\\", "\\\\").replace('"', '\\"') + '"'
        profile = argv[2] + f"\n(allow file-read* file-write* (subpath {quoted}))\n"
        return [argv[0], "-p", profile, *argv[3:]]
    return argv


def launcher_script(confinement: Confinement, cli: Path, worktree: Path, config_dir: Path,
                    env: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """The launcher's text and the sandbox's scratch folders to remove after (blocking: it
    looks at the file system)."""
    sandbox = confinement.require()
    public = {k: v for k, v in env.items() if k not in SECRET_KEYS}
    real_cli = os.path.realpath(cli)
    readonly = (*toolchain_paths(str(cli)), *toolchain_paths(real_cli), os.path.dirname(real_cli))
    policy = confinement.policy(worktree, readonly=readonly, network=True, env=public)
    wrapped = sandbox.wrap([str(cli)], policy)
    argv = _with_config_dir(sandbox.name, list(wrapped.argv), str(config_dir))
    if not sandbox.confines:
        # No sandbox to take the CLI down with the daemon: the kernel does it.
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    assigns = [shlex.quote(f"{k}={v}") for k, v in sorted(wrapped.env.items())]
    assigns += [f'{k}="${{{k}}}"' for k in SECRET_KEYS if env.get(k)]
    # What the SDK itself tells the CLI (its version, the entrypoint): passed on as given.
    assigns += [f'{k}="${{{k}-}}"' for k in _FROM_SDK]
    script = ("#!/bin/sh\n# Written by buildrunnerd for one Claude Code invocation.\n"
              "exec env -i " + " ".join(assigns) + " " + " ".join(shlex.quote(a) for a in argv)
              + ' "$@"\n')
    return script, tuple(wrapped.scratch_dirs)


async def write_launcher(confinement: Confinement, cli: Path, worktree: Path,
                         config_dir: Path, env: Mapping[str, str], launch_dir: Path
                         ) -> tuple[Path, Callable[[], Awaitable[None]]]:
    """Write the launcher for one invocation; returns its path and the cleanup that removes
    it (and the sandbox's scratch folders). Raises ``SandboxUnavailableError`` when the daemon
    has no sandbox."""
    script, scratch = await anyio.to_thread.run_sync(
        launcher_script, confinement, cli, worktree, config_dir, env)
    await anyio.Path(launch_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    path = launch_dir / f"claude-{secrets.token_hex(6)}.sh"
    await anyio.Path(path).write_text(script, encoding="utf-8")
    await anyio.Path(path).chmod(0o700)

    def remove_scratch() -> None:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)

    async def cleanup() -> None:
        await anyio.Path(path).unlink(missing_ok=True)
        await anyio.to_thread.run_sync(remove_scratch)

    return path, cleanup
