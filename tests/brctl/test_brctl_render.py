"""The live view from recorded event lists: plain lines, state folding, the rich display."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from brctl._render import LiveState, RunView, plain_line, rich_view
from tests.brctl.brctl_recorded import failed_run

ROOT = Path(__file__).resolve().parents[2]


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
    # The time, the run, the batch when the event has one, then what happened.
    assert lines[0] == ("18:00:00 r-0a1b2c3d run submitted: Todo API, 4 tasks in 3 batches, "
                        "in /tmp/repo")
    assert "18:00:00 r-0a1b2c3d B001 dispatched on claude-haiku-5-5 [db.1]" in lines
    assert "18:00:02 r-0a1b2c3d B001 task db.1: verifying -> succeeded [1/4 succeeded]" in lines
    assert ("18:00:03 r-0a1b2c3d B003 task api.2: pending -> blocked (blocked: depends on "
            "failed task api.1) [1/4 succeeded]") in lines
    assert lines[14] == ("18:00:03 r-0a1b2c3d B002 api call claude-sonnet-5-5: 3000 in / 1500 "
                         "out, $0.0315")
    assert lines[16] == "18:00:03 r-0a1b2c3d B002 verification failed: tests FAILED (1 failed)"
    assert lines[12] == "18:00:02 r-0a1b2c3d B001 succeeded by claude-haiku-5-5"
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


def _api_call_event(model: str, tokens: dict[str, int], cost_usd: float) -> dict[str, Any]:
    # The shape buildrunnerd.store records: usage nested under data.tokens.
    return {
        "id": 100, "ts": "2026-11-24T18:00:04.000Z", "run_id": "r-0a1b2c3d", "type": "api.call",
        "batch_id": "r-0a1b2c3d:B002",
        "data": {"model": model, "tokens": tokens, "cost_usd": cost_usd,
                 "request_id": "req_01", "latency_ms": 900, "purpose": "batch"},
    }


def test_api_call_with_a_tokens_object_renders_readably_in_both_views() -> None:
    event = _api_call_event("claude-sonnet-5-5", {
        "input_tokens": 623, "output_tokens": 129,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 500,
    }, 0.0123)
    expected = "api call claude-sonnet-5-5: 623 in / 129 out (cache 500 read, 0 written), $0.0123"
    state, _ = _fold(11)
    view = state.apply(event)
    assert plain_line(event, view) == f"18:00:04 r-0a1b2c3d B002 {expected}"

    console = Console(record=True, width=110, force_terminal=True, color_system="truecolor")
    console.print(rich_view(state, now=datetime(2026, 11, 24, 18, 0, 5, tzinfo=UTC)))
    text = console.export_text()
    assert expected in text
    assert "{" not in text  # no raw dict anywhere in the display


def test_api_call_without_cache_use_leaves_the_cache_part_out() -> None:
    event = _api_call_event("simulated", {
        "input_tokens": 623, "output_tokens": 129,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
    }, 0.0)
    assert plain_line(event, None) == (
        "18:00:04 r-0a1b2c3d B002 api call simulated: 623 in / 129 out, $0.0000"
    )


def test_user_docs_link_the_capture_of_the_live_view() -> None:
    capture = ROOT / "docs" / "live-view.txt"
    assert "tasks succeeded" in capture.read_text()  # a real capture of the rich panel
    readme = (ROOT / "README.md").read_text()
    every_day = readme.split("## Use it every day", 1)[1].split("\n## ", 1)[0]
    assert "[what the live view looks like](docs/live-view.txt)" in every_day
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    assert "[what the live view looks like](live-view.txt)" in quickstart
