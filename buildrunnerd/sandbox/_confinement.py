"""The daemon's confinement: the chosen sandbox plus what every policy of this daemon shares.

One :class:`Confinement` is made at start and handed to everything that executes worktree
content (the executor's bash tool, verification, a backend's CLI). It knows what to hide (the
state dir with its database and the other runs' worktrees, the socket's folder), the limits and
the configured toolchain paths, so each caller only says which worktree and which command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildrunnerd.config import Config
from buildrunnerd.errors import SandboxUnavailableError
from buildrunnerd.sandbox._policy import Sandbox, SandboxLimits, SandboxPolicy, toolchain_paths
from buildrunnerd.sandbox._select import select_sandbox

__all__ = ["Confinement"]


@dataclass(frozen=True)
class Confinement:
    """The sandbox of this daemon (None when none works: then ``error`` says why and model
    work is refused) and the shared parts of every policy."""

    sandbox: Sandbox | None
    error: str | None = None
    setting: str = "auto"
    hidden_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    limits: SandboxLimits = SandboxLimits()

    @classmethod
    async def create(cls, config: Config, *, state_dir: Path | None = None,
                     socket_path: Path | None = None) -> Confinement:
        """Select and probe the sandbox of ``config.agent.sandbox``; never raises for a
        missing sandbox (the error is kept, and :meth:`require` raises it)."""
        hidden = tuple(str(p) for p in (state_dir, socket_path.parent if socket_path else None)
                       if p is not None)
        extra = _expand(config.sandbox.readonly_paths)
        limits = SandboxLimits.from_config(config.sandbox)
        setting = config.agent.sandbox
        try:
            sandbox: Sandbox | None = await select_sandbox(setting)
            error = None
        except SandboxUnavailableError as exc:
            sandbox, error = None, str(exc)
        return cls(sandbox, error, setting, hidden, extra, limits)

    @property
    def mode(self) -> str:
        """``bwrap`` | ``sandbox-exec`` | ``off`` | ``unavailable`` (for ping and logs)."""
        return self.sandbox.name if self.sandbox is not None else "unavailable"

    def require(self) -> Sandbox:
        """The sandbox, or :class:`SandboxUnavailableError` (model work is refused)."""
        if self.sandbox is None:
            raise SandboxUnavailableError(
                self.error or "no sandbox", data={"sandbox": self.setting,
                                                  "reason": "unavailable"})
        return self.sandbox

    def policy(self, worktree: Path | str, *, command: str | None = None,
               readonly: Sequence[str] = (), network: bool = False,
               env: Mapping[str, str] | None = None,
               writable: Sequence[str] = ()) -> SandboxPolicy:
        """The policy for one command in ``worktree``. ``command`` (a shell command line)
        adds its interpreter's installation (a virtualenv, say) to the read-only paths;
        ``writable`` are daemon-made folders it may write besides the worktree."""
        ro = (*self.readonly_paths, *toolchain_paths(command, os.environ.get("PATH")),
              *readonly)
        return SandboxPolicy(worktree=str(worktree), readonly_paths=tuple(ro),
                             hidden_paths=self.hidden_paths, network=network,
                             env=dict(env or {}), limits=self.limits,
                             writable_paths=tuple(os.path.realpath(p) for p in writable))


def _expand(paths: Sequence[str]) -> tuple[str, ...]:
    return tuple(os.path.expanduser(p) for p in paths)
