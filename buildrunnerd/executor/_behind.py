"""A backend's turn records, stored while its next step runs, still one at a time and in order.

A turn's record (its billed call, events and checkpoint: one store transaction) used to be
awaited before the turn's tools ran, and the checkpoint after the tools before the next call
was sent: with several batches at once those writes queue on the store's one connection, and
every batch waited for them on its critical path (about 20 ms a write at 8 workers on two
cores, docs/benchmarks.md). Now a backend hands such a write to :class:`WritesBehind` and goes
on with work that does not touch the daemon (running a tool, building and counting the next
request, which is sent only once the write is stored); the context it uses
(:class:`InOrderContext`) waits for that write before it passes anything else to the daemon,
so the daemon sees every write in the order the backend made them, and one at a time, as
before.

What does not change: a write that has started is finished even when the batch is cancelled
(shielded, as before); the billed call of a turn is stored before the next budget check reads
the run's spend; a write that fails raises in the backend at its next step, or when the batch
ends. A crash loses what it lost before: the write that was in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import structlog

from buildrunnerd.executor._protocol import ApiCall, ExecutionContext, TurnEvent

__all__ = ["InOrderContext", "WritesBehind"]

_log = structlog.get_logger("buildrunnerd.executor")


class WritesBehind:
    """At most one store write in flight, run in ``task_group`` (which must outlive it)."""

    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        self._done: anyio.Event | None = None
        self._bills = False  # the write in flight stores a billed call
        self._error: Exception | None = None

    @property
    def bills(self) -> bool:
        """Whether the write in flight stores a billed call (the budget check waits for it)."""
        return self._done is not None and self._bills

    async def start(self, write: Callable[[], Awaitable[None]], *, bills: bool) -> None:
        """Start ``write`` once the one before it is done (raising that one's error)."""
        await self.wait()
        done = anyio.Event()
        self._done, self._bills = done, bills

        async def run() -> None:
            try:
                # Shielded: a cancelled batch still leaves its last finished turn on disk.
                with anyio.CancelScope(shield=True):
                    await write()
            except Exception as exc:  # noqa: BLE001 - raised in the backend by wait()
                self._error = exc
            finally:
                done.set()

        self._task_group.start_soon(run)

    async def wait(self) -> None:
        """Wait for the write in flight; raise its error, if it failed."""
        done = self._done
        if done is not None:
            with anyio.CancelScope(shield=True):
                await done.wait()
            if self._done is done:
                self._done = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def discard(self) -> None:
        """Log the error of a write nobody waited for (the batch stopped with an error of its
        own, which is the one raised)."""
        if self._error is not None:
            _log.warning("a turn's store write failed as the batch stopped",
                         error=repr(self._error))
            self._error = None


class InOrderContext:
    """``ctx`` for a backend that leaves writes behind: every call waits for the write in
    flight first (a budget check only for one that bills), so the daemon gets them in order."""

    def __init__(self, ctx: ExecutionContext, writes: WritesBehind) -> None:
        self._ctx = ctx
        self._writes = writes

    async def emit(self, type: str, data: dict[str, Any], *, task_id: str | None = None
                   ) -> None:
        await self._writes.wait()
        await self._ctx.emit(type, data, task_id=task_id)

    async def record_api_call(self, call: ApiCall) -> None:
        await self._writes.wait()
        await self._ctx.record_api_call(call)

    async def checkpoint(self, state: bytes) -> None:
        await self._writes.wait()
        await self._ctx.checkpoint(state)

    async def record_turn(self, *, call: ApiCall | None = None,
                          events: Sequence[TurnEvent] = (),
                          checkpoint: bytes | None = None) -> None:
        await self._writes.wait()
        await self._ctx.record_turn(call=call, events=events, checkpoint=checkpoint)

    async def check_budget(self, estimate_usd: float) -> None:
        # The spend so far must include every billed call; a checkpoint alone changes nothing
        # the check reads, so the check need not wait for it (the call itself does).
        if self._writes.bills:
            await self._writes.wait()
        await self._ctx.check_budget(estimate_usd)
