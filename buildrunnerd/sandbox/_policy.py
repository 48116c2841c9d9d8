"""What a confined command may see and do, independent of the mechanism that enforces it.

A :class:`SandboxPolicy` names the one writable folder (the worktree), the read-only toolchain
paths, whether the network is reachable, the extra environment and the resource limits. A
:class:`Sandbox` turns a command and a policy into the argv and environment that enforce it
(:class:`Wrapped`); :mod:`buildrunnerd.sandbox._run` starts it and kills what is left after.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from buildrunnerd.config import SandboxConfig

__all__ = [
    "PRIVATE_ENV_PREFIXES", "SANDBOX_HOME", "Sandbox", "SandboxLimits", "SandboxPolicy",
    "Wrapped", "confined_env", "toolchain_paths",
]

# The HOME of every confined command: inside its private /tmp, so nothing of the user's home
# (dotfiles, credentials, caches) is read, and nothing lands in the worktree's commit.
SANDBOX_HOME = "/tmp/home"

# Only these variables of the daemon's environment pass into a confined command.
_ENV_ALLOW = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")

# Never passed in, whatever the caller asks: the model key, the daemon's own settings and
# systemd's notification socket belong to the daemon alone.
PRIVATE_ENV_PREFIXES = ("ANTHROPIC_", "BUILDRUNNER_", "NOTIFY_SOCKET", "CLAUDE_CODE_OAUTH")

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-process resource limits (0 = no limit). RLIMIT_NPROC is counted per user namespace
    (so per sandbox) since Linux 5.14; older kernels count every process of the uid."""

    max_processes: int = 2048
    max_memory_bytes: int = 8192 * 1024 * 1024
    max_file_bytes: int = 1024 * 1024 * 1024
    max_cpu_s: int = 3600

    @classmethod
    def from_config(cls, config: SandboxConfig) -> SandboxLimits:
        mib = 1024 * 1024
        return cls(max_processes=config.max_processes,
                   max_memory_bytes=config.max_memory_mb * mib,
                   max_file_bytes=config.max_file_size_mb * mib, max_cpu_s=config.max_cpu_s)


class SandboxPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What one confined command may touch.

    ``worktree`` is the only writable path and the working directory; its ``.git`` stays
    read-only. ``readonly_paths`` are the toolchain (a virtualenv, an interpreter under
    ``$HOME``); ``hidden_paths`` are folders hidden even when they lie under a visible one
    (the daemon's state dir and socket folder). ``network`` is for a backend's CLI only.
    ``env`` adds variables on top of the allowlist (never ``BUILDRUNNER_*``; ``ANTHROPIC_*``
    only with ``network``, for a CLI that calls the API itself). ``writable_paths`` are
    daemon-made folders the command may write besides the worktree (the JUnit report's)."""

    worktree: str
    readonly_paths: tuple[str, ...] = ()
    hidden_paths: tuple[str, ...] = ()
    network: bool = False
    env: dict[str, str] = {}
    limits: SandboxLimits = SandboxLimits()
    # Folders outside the worktree the command may write: only ones the daemon made for it
    # (the test report's folder), never a user's.
    writable_paths: tuple[str, ...] = ()


class Wrapped(msgspec.Struct, frozen=True):
    """A command ready to start: the argv that enforces the policy, its environment, and
    folders made for it that are removed when it ends (sandbox-exec's private tmp)."""

    argv: list[str]
    env: dict[str, str]
    scratch_dirs: tuple[str, ...] = ()


class Sandbox(Protocol):
    """A confinement mechanism (bubblewrap, sandbox-exec, or the explicit ``off``)."""

    @property
    def name(self) -> str:
        """``bwrap`` | ``sandbox-exec`` | ``off``."""
        ...

    @property
    def confines(self) -> bool:
        """False only for ``off``: the command runs with the daemon's rights."""
        ...

    def wrap(self, argv: Sequence[str], policy: SandboxPolicy) -> Wrapped:
        """The argv and environment that run ``argv`` under ``policy``."""
        ...


def confined_env(policy: SandboxPolicy, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a confined command: the allowlist of ``base`` (default: the daemon's
    environment), a private HOME, then ``policy.env`` minus anything private."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in _ENV_ALLOW}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.setdefault("LANG", "C.UTF-8")
    env.update({"HOME": SANDBOX_HOME, "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat",
                "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "CI": "1"})
    for key, value in policy.env.items():
        if key.startswith(PRIVATE_ENV_PREFIXES) and not (
                policy.network and key.startswith("ANTHROPIC_")):
            continue
        env[key] = value
    return env


def toolchain_paths(command: str | None, path_env: str | None = None) -> tuple[str, ...]:
    """The read-only paths a command's interpreter needs: for the first word of ``command``
    found on ``PATH`` (or given as a path), its installation prefix (the folder above ``bin``)
    and, for a virtualenv, the base interpreter's prefix from ``pyvenv.cfg``."""
    if not command:
        return ()
    first = command.split(None, 1)[0] if command.split() else ""
    if not first or "=" in first:
        return ()
    found = shutil.which(first, path=path_env) if "/" not in first else first
    if found is None or not os.path.isabs(found):
        return ()
    paths: list[str] = []
    for candidate in {os.path.abspath(found), os.path.realpath(found)}:
        bindir = os.path.dirname(candidate)
        # bin/ of an installation; shims/ of a version manager (pyenv, rbenv, nodenv), whose
        # shims run the manager's own code from its root.
        up = os.path.basename(bindir) in ("bin", "shims")
        prefix = os.path.dirname(bindir) if up else bindir
        if _too_broad(prefix):
            # /bin/sh's "installation" would be /, ~/bin/tool's the whole home: only the
            # folder of the program itself, if even that is not too broad.
            if _too_broad(bindir):
                continue
            prefix = bindir
        paths.append(prefix)
        cfg = Path(prefix) / "pyvenv.cfg"
        try:
            text = cfg.read_text(encoding="utf-8", errors="replace") if cfg.is_file() else ""
        except OSError:
            text = ""
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                home = os.path.realpath(value.strip())
                base = os.path.dirname(home) if os.path.basename(home) == "bin" else home
                if _too_broad(base):
                    base = home
                if not _too_broad(base):
                    paths.append(base)
    return tuple(sorted(set(paths)))


def _too_broad(path: str) -> bool:
    """Whether binding ``path`` read-only would undo the sandbox: ``/`` (the host's whole
    tree, its /proc, /run and /tmp included), or the user's home or a folder holding it."""
    real = os.path.realpath(path)
    home = os.path.realpath(os.path.expanduser("~"))
    return real == "/" or _contains(real, home)


def _contains(folder: str, path: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")
