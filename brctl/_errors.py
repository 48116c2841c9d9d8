"""The errors of the socket client (:mod:`brctl._client`), under :class:`BuildRunnerError`.

Imported when one is raised, not before: ``brctl --json status`` that succeeds never loads
this module, nor :mod:`buildrunnerd.errors` and the codes under it (a fifth of brctl's own
start; bench/brctl_bench.py, tests/brctl/test_brctl_imports.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildrunnerd.errors import BuildRunnerError

if TYPE_CHECKING:
    from brctl._client import SocketPath

__all__ = ["DaemonTimeoutError", "DaemonUnreachableError", "RemoteError"]


class DaemonUnreachableError(BuildRunnerError):
    """Nothing answers on the socket (or the daemon went away mid-conversation)."""

    def __init__(self, socket_path: SocketPath, reason: str) -> None:
        super().__init__(
            f"buildrunnerd is not reachable on {socket_path} ({reason}).\n"
            "Start it with `buildrunnerd &` (or `systemctl --user start buildrunnerd` if the "
            "service is installed), or point brctl at its socket with --socket PATH or "
            "$BUILDRUNNER_SOCKET.",
            data={"socket": str(socket_path), "reason": reason},
        )
        self.socket_path = socket_path


class DaemonTimeoutError(BuildRunnerError):
    """The daemon accepted the request but did not answer in time."""


class RemoteError(BuildRunnerError):
    """The daemon answered with a JSON-RPC error; ``code``, ``message`` and ``data`` are its."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, data=data if isinstance(data, dict) else {"value": data}
                         if data is not None else None)
        self.code = code
