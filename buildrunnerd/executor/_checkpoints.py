"""A backend's recent checkpoints, and how a turn's checkpoint is stored.

Both model backends (``anthropic`` and ``claude-code``) keep the last checkpoint of each batch
attempt they worked on, so that a fix-up round continues the conversation (and its prompt
cache) when the daemon does not hand the checkpoint back, and store each checkpoint with its
turn's call and events in one shielded transaction.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import anyio

from buildrunnerd.executor._protocol import ApiCall, BatchJob, ExecutionContext, TurnEvent

__all__ = ["RecentCheckpoints"]


class RecentCheckpoints:
    """The last checkpoint per (run, batch, attempt), the least recently saved dropped first
    beyond ``max_entries``."""

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self._recent: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._recent)

    @staticmethod
    def _key(job: BatchJob) -> tuple[str, str, int]:
        return (job.run_id, job.batch_id, job.attempt)

    def saved(self, job: BatchJob) -> bytes | None:
        """The checkpoint to continue ``job`` from: the daemon's (``job.resume_state``, after a
        restart) first, else the last one this backend saved for the same attempt."""
        return job.resume_state or self._recent.get(self._key(job))

    async def save(self, job: BatchJob, ctx: ExecutionContext, data: bytes, *,
                   call: ApiCall | None = None, events: Sequence[TurnEvent] = ()) -> None:
        """Keep ``data`` as ``job``'s checkpoint and store it with the turn's billed ``call``
        and ``events`` in one transaction (:meth:`ExecutionContext.record_turn`)."""
        key = self._key(job)
        self._recent[key] = data
        self._recent.move_to_end(key)
        while len(self._recent) > self.max_entries:
            self._recent.popitem(last=False)
        # Shielded: a cancelled batch still leaves its last finished turn on disk.
        with anyio.CancelScope(shield=True):
            await ctx.record_turn(call=call, events=events, checkpoint=data)
