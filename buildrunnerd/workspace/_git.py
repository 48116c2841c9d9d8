"""Running git: one async subprocess per call, with a timeout, never blocking the loop.

Every git call of the workspace goes through :func:`git`, so every failure reads the same way:
the command, where it ran, git's stderr, and what to do.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from buildrunnerd.errors import BuildRunnerError, WorkspaceError

__all__ = ["GitResult", "git", "git_env", "BOT_IDENTITY"]

# Passed with ``-c`` so commits work on machines without a global git identity.
BOT_IDENTITY = ("-c", "user.name=BuildRunner", "-c", "user.email=buildrunner@localhost")

# Options for every call. Hooks are the user's, written for their own checkout: a post-checkout
# hook on every worktree or a pre-commit hook on every batch commit would run foreign code in
# our worktrees and can block a run, so they are pointed at a path that holds no hooks.
# Signing would ask for a passphrase the daemon cannot give. Automatic gc/maintenance after a
# commit would prune worktrees and walk them while other batches are adding theirs.
_BASE_OPTIONS = (
    "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false",
    "-c", "gc.auto=0", "-c", "maintenance.auto=false",
)

# Inherited variables that would point git at another repository or index than ``cwd``'s
# (set, for instance, when the daemon is started from inside a git hook).
_REPO_VARIABLES = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
    "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES", "GIT_PREFIX",
)


class GitResult:
    """What a finished git call returned (output decoded as UTF-8, undecodable bytes replaced)."""

    __slots__ = ("args", "returncode", "stdout", "stderr")

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def git_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for git: the daemon's, minus repository overrides, in the C locale
    (messages we parse stay English) and never prompting on a terminal."""
    env = dict(os.environ if base is None else base)
    for name in _REPO_VARIABLES:
        env.pop(name, None)
    env["LC_ALL"] = "C"
    env["LANGUAGE"] = "C"
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _command_text(args: Sequence[str]) -> str:
    return "git " + " ".join(args)


async def git(
    args: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float,
    check: bool = True,
    error: type[BuildRunnerError] = WorkspaceError,
    env: Mapping[str, str] | None = None,
    what: str | None = None,
) -> GitResult:
    """Run ``git <args>`` in ``cwd`` and return its result.

    With ``check`` a non-zero exit raises ``error`` naming the command, the folder and git's
    stderr; ``what`` is prepended to say which step failed. git missing from ``PATH`` or a call
    running over ``timeout_s`` always raises ``error``.
    """
    argv = ["git", *_BASE_OPTIONS, *args]
    command = _command_text(args)
    prefix = f"{what}: " if what else ""
    data = {"command": command, "cwd": str(cwd)}
    try:
        with anyio.fail_after(timeout_s):
            # A cancelled run_process kills the child before it returns, so a timeout leaves
            # no git process behind.
            proc = await anyio.run_process(
                argv,
                cwd=cwd,
                env=git_env(env),
                stdin=subprocess.DEVNULL,
                check=False,
            )
    except FileNotFoundError as exc:
        if not await anyio.Path(cwd).is_dir():
            raise error(
                f"{prefix}folder {cwd} does not exist (running `{command}`)", data=data
            ) from exc
        raise error(
            f"{prefix}git is not installed or not on PATH (needed for `{command}` in {cwd}); "
            "install git and restart buildrunnerd",
            data=data,
        ) from exc
    except PermissionError as exc:
        raise error(f"{prefix}cannot run `{command}` in {cwd}: {exc}", data=data) from exc
    except TimeoutError as exc:
        raise error(
            f"{prefix}`{command}` in {cwd} did not finish within {timeout_s:g} s; check the "
            "repository (a lock file left by a crashed git? a network filesystem?) or raise "
            "verify.git_timeout_s",
            data={**data, "timeout_s": timeout_s},
        ) from exc
    result = GitResult(
        args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )
    if check and not result.ok:
        stderr = result.stderr.strip() or result.stdout.strip() or "(no output)"
        raise error(
            f"{prefix}`{command}` failed in {cwd} (exit {result.returncode}): {stderr}",
            data={**data, "returncode": result.returncode, "stderr": stderr[-2000:]},
        )
    return result
