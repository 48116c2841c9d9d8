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
