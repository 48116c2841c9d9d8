"""The event bus: fan-out of stored events to ``events.subscribe`` connections.

The store hands every event to :meth:`EventBus.publish` after its transaction commits, in id
order. A new subscription first replays the stored events after its ``since`` cursor, while
live events are buffered (bounded); then the buffer is flushed, skipping ids already replayed,
and the subscription goes live. So a subscriber sees every event exactly once and in order:
no gap between replay and live, no duplicate.

Each connection's notification queue is bounded by the RPC layer: a subscriber that stops
reading is dropped there, and its subscription removed here when ``notify`` says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import msgspec

from buildrunnerd import protocol

__all__ = ["EventBus", "Subscriber", "Subscription"]


class Subscriber(Protocol):
    """What the bus needs of a connection (``buildrunnerd.rpc.Connection`` fits)."""

    @property
    def closed(self) -> anyio.Event: ...

    def notify(self, method: str, params: Any) -> bool: ...

    def close(self, reason: str = ...) -> None: ...


ListEvents = Callable[[str | None, int, int], Awaitable[list[protocol.Event]]]
SendReplay = Callable[[protocol.Event], Awaitable[bool]]


class Subscription:
    """One subscriber's filter and delivery state."""

    def __init__(self, sub_id: int, conn: Subscriber, run_id: str | None, buffer_limit: int):
        self.id = sub_id
        self.conn = conn
        self.run_id = run_id
        self.live = False
        self.last_id = 0
        self.buffer: list[protocol.Event] = []
        self.buffer_limit = buffer_limit
        self.dropped = False

    def matches(self, event: protocol.Event) -> bool:
        return self.run_id is None or event.run_id == self.run_id

    def deliver(self, event: protocol.Event) -> bool:
        """Send one event now (live) or buffer it (during replay). False: drop this subscriber."""
        if not self.live:
            if len(self.buffer) >= self.buffer_limit:
                return False
            self.buffer.append(event)
            return True
        return self._send(event)

    def _send(self, event: protocol.Event) -> bool:
        if event.id <= self.last_id:
            return True  # already sent during replay
        self.last_id = event.id
        return self.conn.notify("event", msgspec.to_builtins(event))


class EventBus:
    """Routes stored events to subscriptions; see the module docstring for the ordering rule."""

    def __init__(self, *, buffer_limit: int = 1000, replay_page: int = 500) -> None:
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._buffer_limit = buffer_limit
        self._replay_page = replay_page
        self._listeners: list[Callable[[protocol.Event], None]] = []

    def add_listener(self, listener: Callable[[protocol.Event], None]) -> None:
        """An in-process observer of every event (e.g. run-finished waiters in tests)."""
        self._listeners.append(listener)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish(self, event: protocol.Event) -> None:
        """Called by the store after commit, once per event, in id order."""
        for listener in self._listeners:
            listener(event)
        dead: list[int] = []
        for sub in self._subs.values():
            if sub.matches(event) and not sub.deliver(event):
                dead.append(sub.id)
        for sub_id in dead:
            self._drop(sub_id)

    async def subscribe(
        self,
        conn: Subscriber,
        *,
        run_id: str | None,
        since: int,
        list_events: ListEvents,
        send_replay: SendReplay,
    ) -> Subscription:
        """Replay stored events after ``since``, then stream live ones on ``conn``.

        ``list_events(run_id, since, limit)`` reads stored events in id order;
        ``send_replay(event)`` sends one replayed event waiting for room (backpressure: a
        long history must not overflow the connection's live queue), False if it is gone.
        """
        # Forget subscribers whose connection closed (a run that emits nothing more would
        # otherwise never find out): the table stays as small as the open connections.
        for stale in [s.id for s in self._subs.values() if s.conn.closed.is_set()]:
            self._subs.pop(stale, None)
        sub = Subscription(next(self._ids), conn, run_id, self._buffer_limit)
        sub.last_id = since
        # Register before reading: anything committed from now on lands in the buffer, anything
        # committed before is found by the replay; the id check removes the overlap.
        self._subs[sub.id] = sub
        try:
            while True:
                page = await list_events(run_id, sub.last_id, self._replay_page)
                for event in page:
                    if event.id <= sub.last_id:
                        continue
                    sub.last_id = event.id
                    if not await send_replay(event):
                        self._drop(sub.id)
                        return sub
                if len(page) < self._replay_page:
                    break
            if sub.id not in self._subs:  # dropped meanwhile (buffer overflow)
                return sub
            for event in sub.buffer:
                if not sub._send(event):
                    self._drop(sub.id)
                    return sub
            sub.buffer.clear()
            sub.live = True
        except BaseException:
            self._drop(sub.id)
            raise
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop sending to ``sub`` (its connection closed)."""
        self._subs.pop(sub.id, None)

    def _drop(self, sub_id: int) -> None:
        sub = self._subs.pop(sub_id, None)
        if sub is not None:
            sub.dropped = True
            # A subscriber that misses events must not think it has them all: close it, and
            # it can subscribe again with ``since`` = the last id it saw.
            sub.conn.close("event subscriber fell behind; resubscribe with since=<last id>")
