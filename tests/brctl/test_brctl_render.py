"""The live view from recorded event lists: plain lines, state folding, the rich display."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from brctl._render import LiveState, RunView, plain_line, rich_view
from tests.brctl.brctl_recorded import failed_run


def _fold(count: int | None = None) -> tuple[LiveState, list[str]]:
    snapshot, events = failed_run()
    state = LiveState([RunView.from_snapshot(snapshot, snapshot["tasks"])])
    lines = []
    for event in events[:count]:
        view = state.apply(event)
        lines.append(plain_line(event, view))
    return state, lines


def test_plain_lines_one_per_event_with_progress() -> None:
    state, lines = _fold()
    _, events = failed_run()
    assert len(lines) == len(events)
    assert lines[0] == "18:00:00 r-0a1b2c3d run submitted"
    assert "18:00:00 r-0a1b2c3d B001 dispatched on claude-haiku-5-5 [db.1]" in lines
    assert "18:00:02 r-0a1b2c3d db.1: verifying -> succeeded [1/4 succeeded]" in lines
    assert ("18:00:03 r-0a1b2c3d api.2: pending -> blocked (blocked: depends on failed task "
            "api.1) [1/4 succeeded]") in lines
    assert "api call claude-sonnet-5-5: 3000 in / 1500 out, $0.0315" in lines[14]
    assert "verification failed: tests FAILED" in lines[16]
    assert lines[-1] == ("18:00:03 r-0a1b2c3d run failed: 1 batch(es) failed, 2 blocked "
                         "(1/4 tasks succeeded, $0.0367)")
    assert state.ended and state.exit_code() == 1


def test_state_mid_run_and_at_the_end() -> None:
    mid, _ = _fold(8)
    view = mid.runs["r-0a1b2c3d"]
    assert view.state == "running" and not mid.ended
    assert {b: r.model for b, r in view.running.items()} == {
        "r-0a1b2c3d:B001": "claude-haiku-5-5", "r-0a1b2c3d:B002": "claude-sonnet-5-5",
    }
    assert view.counts() == {"pending": 2, "running": 2}

    end, _ = _fold()
    view = end.runs["r-0a1b2c3d"]
    assert view.counts() == {"succeeded": 1, "failed": 1, "blocked": 2}
    assert view.running == {}
    assert round(view.cost_usd, 4) == 0.0367
    assert view.elapsed_s(datetime.now(UTC)) == 3.58  # from run.started to run.failed


def test_replayed_events_are_not_applied_twice() -> None:
    snapshot, events = failed_run()
    state = LiveState([RunView.from_snapshot(snapshot, snapshot["tasks"])])
    for event in events[:12]:
        state.apply(event)
    for event in events:  # a replay overlapping what was already seen
        state.apply(event)
    assert round(state.runs["r-0a1b2c3d"].cost_usd, 4) == 0.0367


def test_rich_view_shows_progress_batches_spend_and_events() -> None:
    state, _ = _fold(11)
    console = Console(record=True, width=110, force_terminal=True, color_system="truecolor")
    now = datetime(2026, 11, 24, 18, 0, 5, tzinfo=UTC)
    console.print(rich_view(state, now=now))
    text = console.export_text()
    assert "run r-0a1b2c3d" in text and "Todo API" in text and "running" in text
    assert "0/4 tasks succeeded" in text
    assert "verifying 1" in text and "running 1" in text and "pending 2" in text
    assert "B002" in text and "claude-sonnet-5-5" in text and "api.1" in text
    assert "spend $0.0052 of $1.0000 budget" in text
    assert "api call claude-haiku-5-5" in text  # among the last events
    assert "elapsed 4s" in text
    assert "━" in text  # the progress bar
