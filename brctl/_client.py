"""A small synchronous JSON-RPC 2.0 client for the daemon's Unix socket (standard library only).

Synchronous on purpose: ``brctl`` makes a handful of calls and exits, and must start fast, so
this module imports ``json`` and ``socket`` and nothing else of weight (no msgspec, no pathlib:
the socket path may be a ``str`` or any path-like). Its errors are in :mod:`brctl._errors`,
imported when one is raised.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import TracebackType

    from brctl._errors import DaemonUnreachableError, RemoteError

__all__ = ["RpcClient", "all_events"]

_RECEIVE_BYTES = 256 * 1024
SocketPath = str | os.PathLike[str]


def encode_frame(message: dict[str, Any]) -> bytes:
    """One compact JSON frame, ``\n``-terminated (UTF-8, as the daemon reads it)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _unreachable(socket_path: SocketPath, reason: str) -> DaemonUnreachableError:
    # The errors are imported when one is raised (see brctl._errors).
    from brctl._errors import DaemonUnreachableError

    return DaemonUnreachableError(socket_path, reason)


def _remote_error(error: dict[str, Any]) -> RemoteError:
    from brctl._errors import RemoteError

    return RemoteError(int(error.get("code", -32603)), str(error.get("message", "error")),
                       error.get("data"))


class RpcClient:
    """One connection to the daemon. Use as a context manager::

        with RpcClient(path) as client:
            info = client.call("daemon.ping")

    Notifications that arrive while waiting for a reply are kept, in order, for
    :meth:`next_notification` (``events.subscribe`` may replay events before its reply).
    """

    def __init__(
        self, socket_path: SocketPath, *, timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._notifications: deque[dict[str, Any]] = deque()

    def __enter__(self) -> RpcClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect; raises :class:`~brctl._errors.DaemonUnreachableError` saying why and how
        to start it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout_s)
        try:
            sock.connect(os.fspath(self.socket_path))
        except FileNotFoundError:
            sock.close()
            raise _unreachable(self.socket_path, "no socket file") from None
        except ConnectionRefusedError:
            sock.close()
            raise _unreachable(
                self.socket_path, "connection refused: a stale socket, the daemon is not running"
            ) from None
        except PermissionError:
            sock.close()
            raise _unreachable(
                self.socket_path, "permission denied: the daemon runs as another user"
            ) from None
        except (TimeoutError, OSError) as exc:
            sock.close()
            raise _unreachable(self.socket_path, str(exc) or "timed out") from None
        self._sock = sock

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer.clear()  # a partial frame of the old connection is garbage on a new one

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> Any:
        """Call ``method`` with named ``params`` and return its result.

        Raises (from :mod:`brctl._errors`) :class:`RemoteError` for an error reply,
        :class:`DaemonTimeoutError` when no reply comes within ``timeout_s`` (default: the
        client's), :class:`DaemonUnreachableError` when the connection is lost.
        """
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params:
            request["params"] = params
        self._send(encode_frame(request))
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            message = self._read_message(deadline)
            if message is None:
                from brctl._errors import DaemonTimeoutError

                raise DaemonTimeoutError(
                    f"buildrunnerd did not answer {method} within "
                    f"{self.timeout_s if timeout_s is None else timeout_s:g} s; it may be "
                    "overloaded or stuck (check its log)",
                    data={"method": method},
                )
            if "id" not in message:
                self._notifications.append(message)
                continue
            if message.get("id") not in (request_id, None):
                continue  # a late reply to an earlier call that timed out
            error = message.get("error")
            if isinstance(error, dict):
                raise _remote_error(error)
            if message.get("id") is None:
                continue
            return message.get("result")

    @property
    def pending_notifications(self) -> int:
        """Notifications already received and not yet taken by :meth:`next_notification`."""
        return len(self._notifications)

    def next_notification(self, timeout_s: float) -> dict[str, Any] | None:
        """The next notification (``{"method", "params"}``), or None after ``timeout_s``."""
        if self._notifications:
            return self._notifications.popleft()
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._read_message(deadline)
            if message is None:
                return None
            if "id" not in message:
                return message
            error = message.get("error")
            if isinstance(error, dict):  # e.g. the daemon dropping a slow subscriber
                raise _remote_error(error)

    def _send(self, data: bytes) -> None:
        sock = self._connected()
        sock.settimeout(self.timeout_s)
        try:
            sock.sendall(data)
        except OSError as exc:
            raise _unreachable(self.socket_path, f"send failed: {exc}") from None

    def _read_message(self, deadline: float) -> dict[str, Any] | None:
        sock = self._connected()
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:  # not JSON, or not UTF-8
                    from buildrunnerd.errors import BuildRunnerError

                    raise BuildRunnerError(
                        f"buildrunnerd sent a frame that is not JSON ({exc}); is {self.socket_path}"
                        " really a buildrunnerd socket?"
                    ) from None
                if isinstance(message, list):  # a batch reply: brctl sends no batches
                    continue
                return message if isinstance(message, dict) else None
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return None
            sock.settimeout(remaining_s)
            try:
                chunk = sock.recv(_RECEIVE_BYTES)
            except TimeoutError:
                return None
            except OSError as exc:
                raise _unreachable(self.socket_path, f"receive failed: {exc}") from None
            if not chunk:
                raise _unreachable(self.socket_path, "the daemon closed the connection")
            self._buffer += chunk

    def _connected(self) -> socket.socket:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        return self._sock


def all_events(client: RpcClient, run_id: str, *, page: int = 1000) -> list[dict[str, Any]]:
    """Every stored event of ``run_id``, oldest first (``events.list``, page by page)."""
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        batch = client.call("events.list", {"run_id": run_id, "since": since, "limit": page})
        if isinstance(batch, dict):
            batch = batch.get("events", [])
        if not batch:
            return events
        events.extend(batch)
        since = max(int(e.get("id") or 0) for e in batch)
        if len(batch) < page:
            return events
