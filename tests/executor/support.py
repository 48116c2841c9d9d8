"""The daemon's side of a batch (an ``ExecutionContext``) for tests and benches that drive an
executor without a daemon: it keeps the billed calls and drops the rest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from buildrunnerd.executor import ApiCall, TurnEvent

__all__ = ["RecordingContext"]


class RecordingContext:
    """An ``ExecutionContext`` that records the API calls (``calls``) and nothing else."""

    def __init__(self) -> None:
        self.calls: list[ApiCall] = []

    async def emit(self, type: str, data: dict[str, Any], *, task_id: str | None = None) -> None:
        pass

    async def record_api_call(self, call: ApiCall) -> None:
        self.calls.append(call)

    async def checkpoint(self, state: bytes) -> None:
        pass

    async def record_turn(self, *, call: ApiCall | None = None,
                          events: Sequence[TurnEvent] = (),
                          checkpoint: bytes | None = None) -> None:
        if call is not None:
            self.calls.append(call)

    async def check_budget(self, estimate_usd: float) -> None:
        pass
