"""The live view from recorded event lists: plain lines, state folding, the rich display."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from brctl._render import LiveState, RunView, plain_line, rich_view
from tests.brctl.brctl_recorded import failed_run
from tests.brctl.brctl_support import time_zone

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _utc() -> Iterator[None]:
    # Event lines show local time; the recorded events are at 18:00 UTC.
    with time_zone("UTC"):
        yield


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


def _view_with(states: list[str], *, minutes: int = 30) -> RunView:
    tasks = [{"id": f"r-1:t{i}", "state": s, "estimate_minutes": minutes}
             for i, s in enumerate(states)]
    run = {"id": "r-1", "state": "running", "title": "ETA",
           "started_at": "2026-11-24T18:00:00.000Z", "created_at": "2026-11-24T17:59:00.000Z"}
    return RunView.from_snapshot(run, tasks)


def test_eta_from_the_estimates_at_the_observed_rate() -> None:
    now = datetime(2026, 11, 24, 18, 0, 20, tzinfo=UTC)
    # 1 of 4 equal tasks done in 20 s: the 3 open ones take 60 s more.
    view = _view_with(["succeeded", "running", "ready", "pending"])
    assert view.eta_s(now) == 60.0 and view.eta_text(now) == "ETA 1m 00s"
    # The estimates weigh the tasks: a big open task counts for more.
    view.estimates["r-1:t3"] = 120
    assert view.eta_s(now) == 20 * (30 + 30 + 120) / 30
    # Failed and blocked tasks are not waited for.
    assert _view_with(["succeeded", "failed", "blocked", "running"]).eta_s(now) == 20.0
    # No rate yet, paused, ended: no figure, and the text says why.
    assert _view_with(["running", "pending"]).eta_text(now) == \
        "ETA - (after the first task succeeds)"
    paused = _view_with(["succeeded", "pending"])
    paused.state = "paused"
    assert paused.eta_s(now) is None and paused.eta_text(now) == "ETA - (paused)"
    paused.state = "succeeded"
    assert paused.eta_text(now) == ""


def test_rich_view_shows_the_eta_and_the_model_of_each_running_batch() -> None:
    state, _ = _fold(14)  # db.1 succeeded, api.1 still running on claude-sonnet-5-5
    console = Console(record=True, width=120, force_terminal=True, color_system="truecolor")
    console.print(rich_view(state, now=datetime(2026, 11, 24, 18, 0, 5, tzinfo=UTC)))
    text = console.export_text()
    assert re.search(r"ETA \d+s", text), text
    assert re.search(r"B002 +claude-sonnet-5-5 +api\.1", text), text
    # The last events with their time and batch.
    assert "18:00:02 B001 task db.1: verifying -> succeeded" in text


def _emitted_event_types() -> set[str]:
    """Every event type a string literal in buildrunnerd/ stores (read from the source, so a
    new type without words of its own fails the next test)."""
    found: set[str] = set()
    literal = re.compile(r'"((?:run|batch|task|file|verify|api|budget|agent|tool|plan)'
                         r'\.[a-z_]+)"')
    store_call = re.compile(r"(emit|event_type=|add_event|append_event|batch=\(|"
                            r"transition|set_batch_state)")
    for path in (ROOT / "buildrunnerd").rglob("*.py"):
        text = path.read_text()
        for match in literal.finditer(text):
            before = text[max(0, match.start() - 120):match.start()]
            if store_call.search(before) and "_log." not in before.splitlines()[-1]:
                found.add(match.group(1))
    found |= {"file.created", "file.modified"}  # emitted as f"file.{kind}"
    return found


def test_every_event_type_the_daemon_stores_has_words_of_its_own() -> None:
    from brctl._describe import EVENT_TYPES

    emitted = _emitted_event_types()
    assert {"run.submitted", "batch.dispatched", "task.state_changed", "api.call",
            "tool.call", "agent.text", "budget.exceeded", "plan.warning"} <= emitted
    assert emitted - EVENT_TYPES == set()


_SAMPLES: dict[str, dict[str, Any]] = {
    "agent.turn": {"turn": 3, "model": "claude-opus-4-5", "stop_reason": "tool_use"},
    "agent.text": {"text": "I will add\nthe module.\x1b[2J", "chars": 24, "partial": True},
    "tool.call": {"tool": "bash", "command": "pytest -q tests/test_x.py"},
    "tool.result": {"tool": "bash", "is_error": True, "output": "1 failed\nE assert 1 == 2"},
    "agent.fallback": {"from": "claude-opus-4-5", "to": "claude-sonnet-4-5", "overloads": 3},
    "agent.retry": {"attempt": 2, "status": 529, "error": "overloaded_error", "delay_s": 1.5},
    "budget.exceeded": {"budget_usd": 1.0, "spent_usd": 0.98, "estimate_usd": 0.05},
    "batch.conflict": {"files": ["app/db.py"], "attempt": 1, "rerun": True},
    "batch.requeued": {"reason": "interrupted: the daemon stopped during the attempt"},
    "batch.retried": {"task_id": "r-0a1b2c3d:api.1"},
    "plan.warning": {"message": "feature X has no acceptance criteria", "planner": "claude"},
    "run.verified": {"tests_passed": 12, "tests_failed": 0},
    "run.planning": {"step": "Claude is planning the features", "features": 4},
    "run.planned": {"from": "planning", "to": "queued", "tasks": 9, "batches": 6,
                    "planner": "heuristic", "reason": "fell back: the API refused the key"},
    "some.future_type": {"phase": "planning", "detail": {"calls": 2, "models": ["a", "b"]}},
}


def test_every_event_renders_as_one_readable_line() -> None:
    from brctl._describe import EVENT_TYPES

    for kind in sorted(EVENT_TYPES | set(_SAMPLES)):
        event = {"id": 1, "ts": "2026-11-24T18:00:04.000Z", "run_id": "r-0a1b2c3d",
                 "batch_id": "r-0a1b2c3d:B002", "task_id": "r-0a1b2c3d:api.1", "type": kind,
                 "data": _SAMPLES.get(kind, {})}
        line = plain_line(event, None)
        assert line.startswith("18:00:04 r-0a1b2c3d B002 "), line
        assert "\n" not in line and "\x1b" not in line, line
        assert not re.search(r"[{}]|\[\{|': ", line), line  # no raw JSON or dict repr
    assert plain_line({"ts": None, "run_id": "r", "type": "some.future_type",
                       "data": _SAMPLES["some.future_type"]}, None) == (
        "--:--:-- r some.future_type phase=planning, detail.calls=2, detail.models=a, b")
    assert "agent says: I will add the module.\\x1b[2J …" in plain_line(
        {"run_id": "r", "type": "agent.text", "data": _SAMPLES["agent.text"]}, None)


def test_hostile_ids_and_text_cannot_drive_the_terminal() -> None:
    # Task ids come from the (Claude) planner, text and paths from the agent: untrusted.
    bad = "x\x1b[2J\x1b[H[bold red]FAKE[/bold red]\nnext"
    run = {"id": "r-1", "state": "running", "title": bad}
    view = RunView.from_snapshot(run, [{"id": f"r-1:{bad}", "state": "running"}])
    state = LiveState([view])
    hostile: list[dict[str, Any]] = [
        {"type": "batch.dispatched", "batch_id": "r-1:B1", "data": {"task_ids": [f"r-1:{bad}"]}},
        {"type": "api.call", "batch_id": "r-1:B1", "data": {"model": bad, "cost_usd": 0}},
        {"type": "agent.text", "batch_id": "r-1:B1", "task_id": f"r-1:{bad}",
         "data": {"text": bad}},
        {"type": "file.created", "batch_id": "r-1:B1", "data": {"path": bad}},
    ]
    for i, event in enumerate(hostile):
        event = {**event, "id": i + 1, "ts": "2026-11-24T18:00:04.000Z", "run_id": "r-1"}
        line = plain_line(event, state.apply(event))
        assert "\x1b" not in line and "\n" not in line, line
    console = Console(record=True, width=200, force_terminal=True, color_system="truecolor")
    console.print(rich_view(state, now=datetime(2026, 11, 24, 18, 0, 5, tzinfo=UTC)))
    text = console.export_text()
    assert "\x1b[2J" not in console.export_text(styles=True)
    assert "[bold red]FAKE[/bold red]" in text  # shown as text, not read as markup


def test_several_runs_on_a_small_terminal_keep_every_run_in_view() -> None:
    from brctl._render import fit_view

    snapshot, events = failed_run()
    views = []
    for n in range(4):
        run_id = f"r-{n}"
        run = {**snapshot, "id": run_id, "title": f"Run {n}"}
        view = RunView.from_snapshot(run, [{**t, "id": t["id"].replace("r-0a1b2c3d", run_id)}
                                           for t in snapshot["tasks"]])
        views.append(view)
    state = LiveState(views)
    for n in range(4):
        for event in events[:11]:  # mid-run: batches running, events to show
            state.apply({**event, "id": event["id"] + 100 * n, "run_id": f"r-{n}",
                         "batch_id": (event.get("batch_id") or "").replace("r-0a1b2c3d",
                                                                           f"r-{n}") or None,
                         "task_id": (event.get("task_id") or "").replace("r-0a1b2c3d",
                                                                         f"r-{n}") or None})
    now = datetime(2026, 11, 24, 18, 0, 5, tzinfo=UTC)

    def render(compact: bool) -> Any:
        return rich_view(state, now=now, waiting=True, compact=compact)

    small = Console(record=True, width=100, height=30, force_terminal=True)
    small.print(fit_view(small, render))
    text = small.export_text()
    assert all(f"run r-{n}" in text for n in range(4))  # all four runs
    assert "B001" not in text and len(text.splitlines()) <= 30  # compact: no batches, events
    tall = Console(record=True, width=100, height=200, force_terminal=True)
    tall.print(fit_view(tall, render))
    assert "B001" in tall.export_text()  # room enough: everything


def test_a_running_session_shows_its_model_and_turns() -> None:
    state, _ = _fold(11)
    for turn in (1, 2, 3):
        state.apply({"id": 200 + turn, "ts": "2026-11-24T18:00:04.000Z", "run_id": "r-0a1b2c3d",
                     "type": "agent.turn", "batch_id": "r-0a1b2c3d:B002",
                     "data": {"turn": turn, "model": "claude-opus-5-5",
                              "stop_reason": "tool_use", "session_id": "s-1"}})
    batch = state.runs["r-0a1b2c3d"].running["r-0a1b2c3d:B002"]
    assert (batch.model, batch.turns) == ("claude-opus-5-5", 3)
    console = Console(record=True, width=110, force_terminal=True, color_system="truecolor")
    console.print(rich_view(state, now=datetime(2026, 11, 24, 18, 0, 5, tzinfo=UTC)))
    row = next(line for line in console.export_text().splitlines() if "B002" in line
               and "claude-opus-5-5" in line)
    assert " 3 " in row
