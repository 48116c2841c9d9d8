"""A backend's recent checkpoints: which one a batch continues from, the bound, and the
shielded write of a turn."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel
import pytest

from buildrunnerd.executor import ApiCall, BatchJob, RecentCheckpoints, TurnEvent
from buildrunnerd.prompt import BatchPrompt
from tests.executor.support import RecordingContext


class _TurnContext(RecordingContext):
    """Also keeps each turn's writes (``turns``: call, events, checkpoint)."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[tuple[ApiCall | None, tuple[TurnEvent, ...], bytes | None]] = []

    async def record_turn(self, *, call: ApiCall | None = None,
                          events: Sequence[TurnEvent] = (),
                          checkpoint: bytes | None = None) -> None:
        self.turns.append((call, tuple(events), checkpoint))
        await super().record_turn(call=call, events=events, checkpoint=checkpoint)


def _job(batch: str = "B1", *, attempt: int = 1, resume_state: bytes | None = None) -> BatchJob:
    return BatchJob(run_id="r-1", batch_id=f"r-1:{batch}", attempt=attempt, tasks=[],
                    prompt=BatchPrompt(system="s", user="u", tokens=2, context_tokens=0),
                    worktree="/nowhere", resume_state=resume_state)


async def test_a_batch_continues_from_the_daemons_checkpoint_else_its_own_attempts() -> None:
    recent = RecentCheckpoints()
    ctx = _TurnContext()
    assert recent.saved(_job()) is None
    await recent.save(_job(), ctx, b"turn 1")
    await recent.save(_job(), ctx, b"turn 2")
    assert recent.saved(_job()) == b"turn 2"
    # Another attempt of the batch starts over; the daemon's checkpoint wins over ours.
    assert recent.saved(_job(attempt=2)) is None
    assert recent.saved(_job(resume_state=b"stored")) == b"stored"


async def test_the_turn_is_stored_with_its_call_and_events_in_one_write() -> None:
    recent = RecentCheckpoints()
    ctx = _TurnContext()
    call = ApiCall(model="m", input_tokens=3, output_tokens=4)
    event = TurnEvent("agent.turn", {"turn": 1})
    await recent.save(_job(), ctx, b"state", call=call, events=[event])
    assert ctx.turns == [(call, (event,), b"state")]


async def test_the_least_recently_saved_attempt_is_dropped_beyond_the_bound() -> None:
    recent = RecentCheckpoints(max_entries=2)
    ctx = _TurnContext()
    await recent.save(_job("B1"), ctx, b"1")
    await recent.save(_job("B2"), ctx, b"2")
    await recent.save(_job("B1"), ctx, b"1 again")  # B1 is now the most recent
    await recent.save(_job("B3"), ctx, b"3")
    assert len(recent) == 2
    assert recent.saved(_job("B2")) is None
    assert (recent.saved(_job("B1")), recent.saved(_job("B3"))) == (b"1 again", b"3")
    with pytest.raises(ValueError, match="at least 1"):
        RecentCheckpoints(max_entries=0)


class _SlowContext(_TurnContext):
    """Its ``record_turn`` waits for ``release`` before it stores the turn."""

    def __init__(self) -> None:
        super().__init__()
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def record_turn(self, *, call: ApiCall | None = None,
                          events: Sequence[TurnEvent] = (),
                          checkpoint: bytes | None = None) -> None:
        self.started.set()
        await self.release.wait()
        await super().record_turn(call=call, events=events, checkpoint=checkpoint)


@pytest.mark.timeout(10)
async def test_a_cancelled_batch_still_stores_the_turn_it_was_writing() -> None:
    recent = RecentCheckpoints()
    ctx = _SlowContext()
    scope = anyio.CancelScope()

    async def batch() -> None:
        with scope:
            await recent.save(_job(), ctx, b"last turn")

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch)
        await ctx.started.wait()
        scope.cancel()
        await anyio.lowlevel.checkpoint()
        ctx.release.set()
    assert scope.cancel_called
    assert [checkpoint for _, _, checkpoint in ctx.turns] == [b"last turn"]
