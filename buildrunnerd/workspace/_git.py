"""Running git: one async subprocess per call, with a timeout, never blocking the loop.

Every git call of the workspace goes through :func:`git`, so every failure reads the same way:
the command, where it ran, git's stderr, and what to do.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import anyio

from buildrunnerd.errors import BuildRunnerError, WorkspaceError

__all__ = ["BOT_IDENTITY", "GitCalls", "GitResult", "driver_overrides", "git", "git_env",
           "record_git_calls"]

# Passed with ``-c`` so commits work on machines without a global git identity.
BOT_IDENTITY = ("-c", "user.name=BuildRunner", "-c", "user.email=buildrunner@localhost")

# Options for every call. The daemon's git must never run a program that the worktree's content
# (written by the model) can choose, or that a configuration can start on its own:
# - hooks (the user's, or a core.hooksPath) are pointed at a path that holds none;
# - core.fsmonitor would run a program on every status/add;
# - global attributes are not read (the worktree's own .gitattributes is, so every filter,
#   textconv and merge driver that a configuration defines is neutralised per call, see
#   driver_overrides);
# - submodules are never recursed into (their config is the model's);
# - signing would ask for a passphrase; automatic gc/maintenance would prune worktrees and
#   walk them while other batches are adding theirs.
_BASE_OPTIONS = (
    "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
    "-c", "core.attributesFile=/dev/null", "-c", "core.untrackedCache=false",
    "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false",
    "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "diff.external=",
    "-c", "protocol.allow=never",
    # Never into a nested repository (a submodule the model made): a child git there would
    # read that repository's own config, whose filters and drivers the model chose.
    "-c", "submodule.recurse=false",
)

# Inherited variables that would point git at another repository or index than ``cwd``'s
# (set, for instance, when the daemon is started from inside a git hook).
_REPO_VARIABLES = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
    "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES", "GIT_PREFIX",
)


# The model key and the daemon's own settings: nothing git could start needs them.
_PRIVATE_PREFIXES = ("ANTHROPIC_", "BUILDRUNNER_", "CLAUDE_CODE_OAUTH", "NOTIFY_SOCKET")


class GitCalls:
    """The git processes :func:`git` started while :func:`record_git_calls` was active: the
    arguments of each (after the hardening options), in order."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __len__(self) -> int:
        return len(self.commands)

    def subcommands(self) -> list[str]:
        """The git subcommand of each call (``ls-files``, ``commit``, ...), ``-c`` options and
        ``--git-dir``/``--work-tree`` skipped."""
        found: list[str] = []
        for args in self.commands:
            rest = iter(args)
            for arg in rest:
                if arg in ("-c", "--git-dir", "--work-tree"):
                    next(rest, None)
                elif not arg.startswith("-"):
                    found.append(arg)
                    break
        return found


# The recorders of the current task (and the tasks it starts): a test or a bench counts the
# git processes of one batch without seeing another test's.
_RECORDERS: contextvars.ContextVar[tuple[GitCalls, ...]] = contextvars.ContextVar(
    "git_recorders", default=())


@contextlib.contextmanager
def record_git_calls() -> Iterator[GitCalls]:
    """Record every git process :func:`git` starts in this context (tests, benches)."""
    calls = GitCalls()
    token = _RECORDERS.set((*_RECORDERS.get(), calls))
    try:
        yield calls
    finally:
        _RECORDERS.reset(token)


class GitResult:
    """What a finished git call returned (output decoded as UTF-8, undecodable bytes replaced)."""

    __slots__ = ("args", "returncode", "stdout", "stderr", "stdout_bytes")

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str,
                 stdout_bytes: bytes = b"") -> None:
        self.args = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_bytes = stdout_bytes  # undecoded, for blob contents

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def git_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for git: the daemon's, minus every ``GIT_*`` variable (repository and
    configuration overrides) and the model key (``ANTHROPIC_*``, ``BUILDRUNNER_*``), with
    neither the system nor the global configuration (the repository's own config is the
    user's and is read), in the C locale (messages we parse stay English) and never
    prompting on a terminal."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(("GIT_", *_PRIVATE_PREFIXES))}
    env["LC_ALL"] = "C"
    env["LANGUAGE"] = "C"
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env["GIT_ATTR_NOSYSTEM"] = "1"
    env["GIT_OPTIONAL_LOCKS"] = "0"
    return env


# Per-driver keys that name a program: emptied, so an attribute (filter=, diff=, merge=) in a
# .gitattributes the model wrote can never start one.
_DRIVER_KEYS = {
    "filter": ("clean", "smudge", "process"),
    "diff": ("textconv", "command"),
    "merge": ("driver",),
}


async def driver_overrides(repo: Path, *, timeout_s: float) -> tuple[str, ...]:
    """``-c`` options that empty every filter, diff and merge driver the repository's
    configuration defines (an empty command runs nothing), and make no filter required."""
    res = await git(["config", "--name-only", "--get-regexp", r"^(filter|diff|merge)\."],
                    cwd=repo, timeout_s=timeout_s, check=False, overrides=())
    names: set[tuple[str, str]] = set()
    for line in res.stdout.splitlines():
        section, _, rest = line.strip().partition(".")
        name, _, _key = rest.rpartition(".")
        if section in _DRIVER_KEYS and name:
            names.add((section, name))
    options: list[str] = []
    for section, name in sorted(names):
        for key in _DRIVER_KEYS[section]:
            options += ["-c", f"{section}.{name}.{key}="]
        if section == "filter":
            options += ["-c", f"{section}.{name}.required=false"]
    return tuple(options)


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
    overrides: Sequence[str] = (),
    input: bytes | None = None,
) -> GitResult:
    """Run ``git <args>`` in ``cwd`` and return its result.

    With ``check`` a non-zero exit raises ``error`` naming the command, the folder and git's
    stderr; ``what`` is prepended to say which step failed. git missing from ``PATH`` or a call
    running over ``timeout_s`` always raises ``error``. ``overrides`` are more ``-c`` options
    (those of :func:`driver_overrides`). ``input`` is fed to git's stdin
    (``cat-file --batch``).
    """
    argv = ["git", *_BASE_OPTIONS, *overrides, *args]
    command = _command_text(args)
    prefix = f"{what}: " if what else ""
    data = {"command": command, "cwd": str(cwd)}
    for recorder in _RECORDERS.get():
        recorder.commands.append([*overrides, *args])
    try:
        with anyio.fail_after(timeout_s):
            # A cancelled run_process kills the child before it returns, so a timeout leaves
            # no git process behind.
            proc = await anyio.run_process(
                argv,
                cwd=cwd,
                env=git_env(env),
                stdin=subprocess.DEVNULL if input is None else None,
                input=input,
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
        proc.stdout,
    )
    if check and not result.ok:
        stderr = result.stderr.strip() or result.stdout.strip() or "(no output)"
        raise error(
            f"{prefix}`{command}` failed in {cwd} (exit {result.returncode}): {stderr}",
            data={**data, "returncode": result.returncode, "stderr": stderr[-2000:]},
        )
    return result
