"""The pure parts: the run graph's transitions and the event bus's replay/live hand-over."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from buildrunnerd import protocol
from buildrunnerd.daemon._events import EventBus
from buildrunnerd.daemon._scheduler import BatchSpec, RunGraph


def graph(edges: dict[str, list[str]], states: dict[str, str] | None = None) -> RunGraph:
    states = states or {}
    return RunGraph(BatchSpec(b, tuple(d), 10, states.get(b, "pending"))
                    for b, d in edges.items())


def test_failure_blocks_transitively_and_retry_restores_exactly_what_it_blocked() -> None:
    g = graph({"A": [], "B": ["A"], "C": ["B"], "D": [], "E": ["D", "B"]})
    assert g.pop_ready() in ("A", "D")
    assert g.pop_ready() in ("A", "D")
    assert set(g.fail("A")) == {"B", "C", "E"}
    assert {g.state(b) for b in "BCE"} == {"blocked"}
    g.succeed("D")
    assert g.state("E") == "blocked"  # still waits on B's failure
    assert not g.has_ready and g.finished and not g.all_succeeded
    assert set(g.retry("A")) == {"B", "C", "E"}
    assert g.state("A") == "ready" and {g.state(b) for b in "BCE"} == {"pending"}
    with pytest.raises(ValueError):
        g.retry("B")


def test_two_failures_keep_a_shared_dependent_blocked_until_both_are_retried() -> None:
    g = graph({"A": [], "B": [], "C": ["A", "B"]})
    g.pop_ready(), g.pop_ready()
    g.fail("A")
    g.fail("B")
    g.retry("A")
    assert g.state("C") == "blocked" and g.blocked_by("C") == {"B"}
    g.retry("B")
    assert g.state("C") == "pending"


def test_recovery_states_interrupted_batches_go_back_to_ready() -> None:
    g = graph({"A": [], "B": ["A"], "C": ["B"]}, {"A": "succeeded", "B": "running"})
    assert g.state("B") == "ready" and g.state("C") == "pending"
    assert g.pop_ready() == "B"
    g2 = graph({"A": [], "B": ["A"]}, {"A": "failed"})
    assert g2.state("B") == "blocked" and g2.finished


def test_highest_priority_pops_first_and_requeue_returns_it() -> None:
    g = RunGraph([BatchSpec("low", (), 5), BatchSpec("high", (), 50), BatchSpec("mid", (), 20)])
    assert [g.pop_ready() for _ in range(3)] == ["high", "mid", "low"]
    g.requeue("mid")
    assert g.pop_ready() == "mid"
    assert set(g.cancel_all()) == {"low", "high", "mid"}
    assert g.finished and not g.has_ready


class Recorder:
    """The connection edge: what a subscriber's socket would receive, in order."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.closed_because: str | None = None
        self.closed = anyio.Event()

    def notify(self, method: str, params: Any) -> bool:
        assert method == "event"
        self.ids.append(params["id"])
        return self.closed_because is None

    def close(self, reason: str = "") -> None:
        self.closed_because = reason
        self.closed.set()


def event(i: int, run_id: str = "r-1") -> protocol.Event:
    return protocol.Event(id=i, ts="2026-11-24T00:00:00.000Z", run_id=run_id, type="x.y")


async def test_subscribe_replays_then_streams_with_no_gap_and_no_duplicate() -> None:
    bus = EventBus(replay_page=3)
    stored = [event(i) for i in range(1, 8)]
    recorder = Recorder()

    async def list_events(run_id: str | None, since: int, limit: int) -> list[protocol.Event]:
        page = [e for e in stored if e.id > since][:limit]
        # Events committed while the replay is under way: some land in the pages too.
        new = event(len(stored) + 1)
        stored.append(new)
        bus.publish(new)
        await anyio.lowlevel.checkpoint()
        return page

    async def send_replay(e: protocol.Event) -> bool:
        return recorder.notify("event", {"id": e.id})

    sub = await bus.subscribe(recorder, run_id="r-1", since=2, list_events=list_events,
                              send_replay=send_replay)
    for i in range(len(stored) + 1, len(stored) + 4):
        bus.publish(event(i))
    bus.publish(event(99, run_id="r-other"))  # another run: filtered out
    assert recorder.ids == list(range(3, recorder.ids[-1] + 1))
    assert recorder.ids[-1] == len(stored) + 3 and sub.live
    bus.unsubscribe(sub)
    bus.publish(event(1000))
    assert 1000 not in recorder.ids and bus.subscriber_count == 0


async def test_a_subscriber_that_falls_behind_during_replay_is_closed_not_left_silent() -> None:
    bus = EventBus(buffer_limit=2)
    recorder = Recorder()

    async def list_events(run_id: str | None, since: int, limit: int) -> list[protocol.Event]:
        for i in range(100, 105):  # more live events than the buffer holds, mid-replay
            bus.publish(event(i))
        return [event(1)] if since == 0 else []

    async def send_replay(e: protocol.Event) -> bool:
        return recorder.notify("event", {"id": e.id})

    sub = await bus.subscribe(recorder, run_id=None, since=0, list_events=list_events,
                              send_replay=send_replay)
    assert sub.dropped and not sub.live
    assert recorder.closed_because is not None and "since" in recorder.closed_because
    assert bus.subscriber_count == 0

