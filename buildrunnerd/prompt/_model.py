"""The prompt of one batch, as the agent receives it."""

from __future__ import annotations

import msgspec

__all__ = ["BatchPrompt"]


class BatchPrompt(msgspec.Struct):
    """A batch's prompt. ``system`` is the stable part: identical for every batch of a run,
    so the API can cache it. ``user`` holds the context and the tasks of this batch."""

    system: str
    user: str
    tokens: int  # system + user, counted with the token counter
    context_tokens: int  # the trimmed context part alone (never above the budget)
    # ``user`` cut for the prompt cache (``"".join(user_blocks) == user``): every block but
    # the last is the run's shared context (the overview, then one block per "already built"
    # summary, oldest first), which later batches of the run repeat as their prefix; the last
    # is this batch's own part. Empty: ``user`` is one block.
    user_blocks: list[str] = msgspec.field(default_factory=list)
