"""One client connection: its peer uid, its bounded outgoing queue and the writer that drains it."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import structlog
from anyio.abc import ByteSendStream

from buildrunnerd.rpc._codec import encode

__all__ = ["Connection"]

_log = structlog.get_logger("buildrunnerd.rpc")
_ids = itertools.count(1)


class Connection:
    """A client connected to the control socket, as seen by method handlers.

    Handlers use :meth:`notify` to push notifications (``events.subscribe``) and wait on
    :attr:`closed` to know when to stop. Everything the connection sends goes through one bounded
    queue drained by a single writer task, so frames never interleave and a client that stops
    reading can only fill its own queue: :meth:`notify` then drops the connection instead of
    buffering forever, and a write that takes longer than ``write_timeout_s`` closes it.
    """

    def __init__(self, *, peer_uid: int | None, queue_size: int, write_timeout_s: float) -> None:
        self.id: int = next(_ids)
        self.peer_uid: int | None = peer_uid
        self.closed: anyio.Event = anyio.Event()
        #: Free for handlers (e.g. the daemon's subscriptions on this connection).
        self.context: dict[str, Any] = {}
        self.close_reason: str | None = None
        self._write_timeout_s = write_timeout_s
        self._send, self._receive = anyio.create_memory_object_stream[bytes](max(1, queue_size))
        self._subscriber = False
        self._cancel_scope: anyio.CancelScope | None = None

    @property
    def is_subscriber(self) -> bool:
        """True once a notification was queued: the idle timeout no longer applies, because a
        subscriber legitimately sends nothing while it watches a run for hours."""
        return self._subscriber

    def mark_subscriber(self) -> None:
        """Exempt this connection from the idle timeout (it watches; it need not speak).

        :meth:`notify` does this implicitly; call it when a subscription starts without one.
        """
        self._subscriber = True

    def notify(self, method: str, params: Any) -> bool:
        """Queue the notification ``{"jsonrpc": "2.0", "method": method, "params": params}``.

        Never blocks. Returns False when the connection is closed, or when its queue is full (the
        client stopped reading): the connection is then dropped, so the caller should forget it.
        Raises ``TypeError`` if ``params`` cannot be encoded (a bug in the caller).
        """
        if self.closed.is_set() or self.close_reason is not None:
            return False
        self._subscriber = True
        frame = encode({"jsonrpc": "2.0", "method": method, "params": params})
        try:
            self._send.send_nowait(frame)
        except anyio.WouldBlock:
            self.close("notification queue full: the client stopped reading")
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    async def send_notification(self, method: str, params: Any) -> bool:
        """Like :meth:`notify`, but wait (at most ``write_timeout_s``) for room in the queue.

        For replays of stored history, where waiting is right and dropping is not: a long
        history must not overflow the queue meant for live events. False once the connection
        is closed (including by the write timeout).
        """
        if self.close_reason is not None:
            return False
        self._subscriber = True
        await self.send_frame(encode({"jsonrpc": "2.0", "method": method, "params": params}))
        return self.close_reason is None

    def close(self, reason: str = "closed by the server") -> None:
        """Drop the connection now (queued frames are discarded). Safe to call more than once."""
        if self.close_reason is None:
            self.close_reason = reason
            if reason != "client closed the connection":
                _log.info("rpc.connection_dropped", conn=self.id, reason=reason)
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
        self._send.close()

    async def send_frame(self, frame: bytes) -> None:
        """Queue one encoded frame (a response), waiting at most ``write_timeout_s`` for room."""
        if self.close_reason is not None:
            return
        try:
            with anyio.fail_after(self._write_timeout_s):
                await self._send.send(frame)
        except TimeoutError:
            self.close(f"response not written within {self._write_timeout_s} s")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the connection is closing: there is nobody left to answer

    def finish_sending(self) -> None:
        """No more frames will be queued: the writer drains what is queued, then stops."""
        self._send.close()

    async def write_loop(self, stream: ByteSendStream) -> None:
        """Drain the queue into ``stream``; each frame must be written within the write timeout."""
        async with self._receive:
            async for frame in self._receive:
                try:
                    with anyio.fail_after(self._write_timeout_s):
                        await stream.send(frame + b"\n")
                except TimeoutError:
                    self.close(f"client did not read for {self._write_timeout_s} s")
                    return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self.close("client closed the connection")
                    return

    def _bind(self, cancel_scope: anyio.CancelScope) -> None:
        self._cancel_scope = cancel_scope

    def _dispose(self) -> None:
        # Called by the server when the connection ends, however it ends.
        self._send.close()
        self._receive.close()
        self.closed.set()

    def __repr__(self) -> str:
        return f"<Connection {self.id} uid={self.peer_uid}>"

