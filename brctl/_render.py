"""The live view: fold events into per-run state, render it as plain lines or a rich display.

Pure functions of recorded data (a run snapshot, its tasks, a list of events) so tests can feed
recorded event lists; the loop that reads the socket lives in :mod:`brctl._follow`, the words
for each event type in :mod:`brctl._describe`. ``rich`` is imported only when a terminal
display is actually drawn (``brctl`` starts fast).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from brctl._describe import (
    describe,
    format_duration,
    format_tokens,
    format_usd,
    local_id,
    one_line,
    parse_ts,
)
from buildrunnerd.codes import TASK_STATES, TERMINAL_RUN_STATES

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console, RenderableType

__all__ = [
    "LiveState", "RunView", "describe", "event_line", "format_duration", "format_tokens",
    "fit_view", "format_usd", "parse_ts", "plain_line", "rich_view", "summary_lines",
]

_RUN_EVENT_STATES = {
    "run.submitted": "queued", "run.planning": "planning", "run.planned": "queued",
    "run.started": "running", "run.paused": "paused",
    "run.resumed": "running", "run.succeeded": "succeeded", "run.failed": "failed",
    "run.cancelled": "cancelled",
}
_BATCH_ENDED = ("batch.succeeded", "batch.failed", "batch.cancelled", "batch.interrupted",
                "batch.requeued")
_OPEN_TASK_STATES = frozenset({"pending", "ready", "running", "verifying"})
LAST_EVENTS = 8


@dataclass
class RunningBatch:
    batch_id: str
    model: str | None
    task_ids: list[str]
    started: datetime | None
    turns: int = 0  # model turns (API calls) of its session so far


@dataclass
class RunView:
    """What the live view knows about one run."""

    run_id: str
    title: str = ""
    state: str = "queued"
    budget_usd: float | None = None
    snapshot_cost_usd: float = 0.0
    event_cost_usd: float = 0.0
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    branch: str | None = None
    reason: str | None = None
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> state
    estimates: dict[str, int] = field(default_factory=dict)  # task id -> estimated minutes
    running: dict[str, RunningBatch] = field(default_factory=dict)
    last_events: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_EVENTS))
    last_event_id: int = 0  # the newest event applied (a replay overlapping it is skipped)

    @classmethod
    def from_snapshot(cls, run: dict[str, Any], tasks: list[dict[str, Any]]) -> RunView:
        """Start from ``run.get`` and ``task.list`` results; events then move it forward."""
        view = cls(
            run_id=str(run.get("id", "")), title=str(run.get("title") or ""),
            state=str(run.get("state") or "queued"), budget_usd=run.get("budget_usd"),
            snapshot_cost_usd=float(run.get("cost_usd") or 0.0),
            created=parse_ts(run.get("created_at")), started=parse_ts(run.get("started_at")),
            finished=parse_ts(run.get("finished_at")), branch=run.get("branch"),
            reason=run.get("reason"),
        )
        for task in tasks:
            task_id = str(task["id"])
            view.tasks[task_id] = str(task.get("state") or "pending")
            if isinstance(task.get("estimate_minutes"), int):
                view.estimates[task_id] = task["estimate_minutes"]
        for batch in run.get("batches") or []:
            if batch.get("state") in ("running", "verifying") and batch.get("id"):
                view.running[str(batch["id"])] = RunningBatch(
                    str(batch["id"]), batch.get("model"), list(batch.get("task_ids") or []),
                    parse_ts(batch.get("started_at")),
                )
        return view

    @property
    def cost_usd(self) -> float:
        # api.call events replayed from the start add up to the stored total; the snapshot
        # covers backends that report no api.call events (simulated) and pruned history.
        return max(self.snapshot_cost_usd, self.event_cost_usd)

    @property
    def done(self) -> int:
        """Tasks that succeeded: the progress bar. Failed and blocked ones show in the counts,
        so a run with failures never looks complete."""
        return sum(1 for state in self.tasks.values() if state == "succeeded")

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_RUN_STATES

    def counts(self) -> dict[str, int]:
        """Tasks per state, in the lifecycle order, only states that occur."""
        counts = {state: 0 for state in TASK_STATES}
        for state in self.tasks.values():
            counts[state] = counts.get(state, 0) + 1
        return {state: n for state, n in counts.items() if n}

    def elapsed_s(self, now: datetime) -> float:
        """Since the run started (or was submitted, while queued) until it ended or ``now``."""
        start = self.started or self.created
        if start is None:
            return 0.0
        return ((self.finished or now) - start).total_seconds()

    def _minutes(self, task_id: str) -> int:
        return self.estimates.get(task_id, 60)  # the planner's default estimate

    def eta_s(self, now: datetime) -> float | None:
        """Seconds until every open task is done, at the rate observed so far: estimated task
        minutes finished per second since the run started, applied to the estimated minutes
        still open. None while no task has succeeded (no rate yet) or nothing is open."""
        if self.ended or self.state == "paused":
            return None
        open_minutes = sum(self._minutes(t) for t, s in self.tasks.items()
                           if s in _OPEN_TASK_STATES)
        done_minutes = sum(self._minutes(t) for t, s in self.tasks.items() if s == "succeeded")
        elapsed_s = self.elapsed_s(now)
        if not open_minutes or not done_minutes or elapsed_s <= 0:
            return None
        return open_minutes / (done_minutes / elapsed_s)

    def eta_text(self, now: datetime) -> str:
        """``ETA 2m 10s``, or why there is none yet."""
        if self.ended:
            return ""
        if self.state == "paused":
            return "ETA - (paused)"
        eta = self.eta_s(now)
        if eta is None:
            return "ETA - (after the first task succeeds)"
        return f"ETA {format_duration(eta)}"

    def apply(self, event: dict[str, Any]) -> None:
        """Move the view forward by one event."""
        kind = str(event.get("type", ""))
        data = event.get("data") or {}
        ts = parse_ts(event.get("ts"))
        batch_id = str(event.get("batch_id")) if event.get("batch_id") else None
        if kind in _RUN_EVENT_STATES:
            self.state = str(data.get("state") or data.get("to") or _RUN_EVENT_STATES[kind]) \
                if kind in ("run.submitted", "run.planned") else _RUN_EVENT_STATES[kind]
            if kind == "run.started" and self.started is None:
                self.started = ts
            if self.state in TERMINAL_RUN_STATES:
                self.finished = ts
                self.reason = data.get("reason", self.reason)
                self.running.clear()
        elif kind.startswith("run.") and isinstance(data.get("to"), str):
            self.state = data["to"]  # a run state this client does not know by name yet
        elif kind == "task.state_changed" and event.get("task_id"):
            self.tasks[str(event["task_id"])] = str(data.get("to", "pending"))
        elif kind == "batch.dispatched" and batch_id:
            self.running[batch_id] = RunningBatch(
                batch_id, data.get("model"), list(data.get("task_ids") or []), ts
            )
        elif kind in _BATCH_ENDED:
            self.running.pop(str(batch_id), None)
        elif kind == "api.call":
            self.event_cost_usd += float(data.get("cost_usd") or 0.0)
        model = data.get("model") if kind in ("api.call", "agent.turn") else \
            data.get("to") if kind == "agent.fallback" else None
        batch = self.running.get(str(batch_id))
        if batch is not None and isinstance(model, str) and model:
            batch.model = model
        if batch is not None and kind == "agent.turn":
            turn = data.get("turn")
            batch.turns = turn if isinstance(turn, int) else batch.turns + 1
        self.last_events.append(event_line(event, clock=True, run=False))


class LiveState:
    """Every followed run, by id. Events of runs not followed are ignored."""

    def __init__(self, runs: list[RunView]) -> None:
        self.runs: dict[str, RunView] = {run.run_id: run for run in runs}
        self.last_event_id = 0

    def add(self, view: RunView) -> None:
        """Follow one more run (``status --follow`` without RUN: a run submitted later)."""
        self.runs.setdefault(view.run_id, view)

    def apply(self, event: dict[str, Any]) -> RunView | None:
        """Apply one event; returns its run's view, or None when it is old or not followed.

        Old means at or below the last event applied to the same run (a replay or history
        overlapping live events); each run keeps its own mark, as the histories of several
        runs and the live events of a new one arrive in separate id-ordered streams."""
        event_id = int(event.get("id") or 0)
        self.last_event_id = max(self.last_event_id, event_id)
        view = self.runs.get(str(event.get("run_id")))
        if view is None or (event_id and event_id <= view.last_event_id):
            return None
        view.last_event_id = max(view.last_event_id, event_id)
        view.apply(event)
        return view

    @property
    def ended(self) -> bool:
        return all(view.ended for view in self.runs.values())

    def exit_code(self) -> int:
        """0 when every followed run succeeded, else 1."""
        return 0 if all(v.state == "succeeded" for v in self.runs.values()) else 1


def event_line(event: dict[str, Any], *, clock: bool = True, run: bool = True) -> str:
    """``HH:MM:SS RUN BATCH description``: the time, the run (when ``run``), the batch when
    the event has one (without its run prefix), then what happened."""
    parts = []
    if clock:
        ts = parse_ts(event.get("ts"))
        # Local time, as the live view's own clock and `runs` show it (events are stored UTC).
        parts.append(ts.astimezone().strftime("%H:%M:%S") if ts else "--:--:--")
    run_id = str(event.get("run_id", "?"))
    if run:
        parts.append(run_id)
    batch = local_id(event.get("batch_id"), run_id)
    if batch:
        parts.append(batch)
    parts.append(describe(event))
    # Ids and paths come from the planner's and the agent's output: one printable line, so
    # an event cannot move the cursor or fake another line.
    return one_line(" ".join(parts), limit=4000)


def plain_line(event: dict[str, Any], view: RunView | None) -> str:
    """One line per event for pipes and ``brctl logs``: :func:`event_line` plus the progress
    after a task changed state, and the totals when the run ended."""
    line = event_line(event)
    if view is not None and event.get("type") == "task.state_changed" and view.tasks:
        line += f" [{view.done}/{len(view.tasks)} succeeded]"
    if view is not None and event.get("type") in ("run.succeeded", "run.failed", "run.cancelled"):
        line += f" ({view.done}/{len(view.tasks)} tasks succeeded, {format_usd(view.cost_usd)})"
    return line


_STATE_STYLES = {
    "succeeded": "green", "running": "cyan", "verifying": "blue", "ready": "yellow",
    "pending": "dim", "failed": "red", "blocked": "magenta", "cancelled": "dim red",
    "queued": "dim", "paused": "yellow", "planning": "cyan",
}
_ENDED_SHOWN = 5  # without RUN, the view keeps this many ended runs, one line each


def _summary(view: RunView, now: datetime) -> str:
    return (f"run {view.run_id} {view.state}: {view.done}/{len(view.tasks)} tasks succeeded, "
            f"{format_usd(view.cost_usd)}, {format_duration(view.elapsed_s(now))}"
            + (f" ({view.reason})" if view.reason else ""))


def _panel(view: RunView, now: datetime, *, compact: bool = False) -> RenderableType:
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    total = len(view.tasks)
    style = _STATE_STYLES.get(view.state, "")
    header = Text.assemble(
        (one_line(view.title or view.run_id, 120), "bold"), "  ", (view.state, f"bold {style}"),
        f"  elapsed {format_duration(view.elapsed_s(now))}",
    )
    eta = view.eta_text(now)
    if eta:
        header.append(f"  {eta}")
    progress = Table.grid(padding=(0, 1))
    progress.add_row(
        ProgressBar(total=max(total, 1), completed=view.done, width=40),
        Text(f"{view.done}/{total} tasks succeeded"),
    )
    counts = Text()
    for task_state, n in view.counts().items():
        counts.append(f"{task_state} {n}", style=_STATE_STYLES.get(task_state, ""))
        counts.append("  ")
    budget = f" of {format_usd(view.budget_usd)} budget" if view.budget_usd else ""
    spend = Text(f"spend {format_usd(view.cost_usd)}{budget}")
    parts: list[RenderableType] = [header, progress, counts, spend]
    if compact:  # several runs on a small terminal: the essentials of each
        return Panel(Group(*parts), title=f"run {view.run_id}", title_align="left")
    if view.running:
        batches = Table("batch", "model", "tasks", "turns", "elapsed", box=None,
                        padding=(0, 2, 0, 0))
        for batch in view.running.values():
            elapsed = (now - batch.started).total_seconds() if batch.started else 0.0
            tasks = ", ".join(local_id(t, view.run_id) or "" for t in batch.task_ids)
            # Text, not str: rich would read "[...]" in a str as markup, and task ids and
            # model names come from the planner's and the API's answers.
            batches.add_row(*(Text(one_line(cell)) for cell in (
                local_id(batch.batch_id, view.run_id), batch.model or "-", tasks or "-",
                str(batch.turns) if batch.turns else "-", format_duration(elapsed))))
        parts.append(batches)
    if view.last_events:
        parts.append(Text("\n".join(view.last_events), style="dim", overflow="ellipsis",
                          no_wrap=True))
    if view.ended and view.reason:
        parts.append(Text(f"reason: {view.reason}", style=style))
    return Panel(Group(*parts), title=f"run {view.run_id}", title_align="left")


def rich_view(state: LiveState, now: datetime | None = None, *,
              waiting: bool = False, compact: bool = False) -> RenderableType:
    """The terminal display: one panel per active run (progress, states, ETA, batches with
    their models, spend, the last events with time and batch). Ended runs are panels while
    they are all there is, else one line each (the last few). ``waiting``: the view stays
    open for runs to come, and says so. ``compact``: each panel without its batches and
    events (see :func:`fit_view`)."""
    from rich.console import Group
    from rich.text import Text

    now = now or datetime.now(UTC)
    views = list(state.runs.values())
    active = [v for v in views if not v.ended]
    ended = [v for v in views if v.ended]
    parts: list[RenderableType] = []
    if active or not waiting:
        parts += [_panel(v, now, compact=compact) for v in (active if waiting else views)]
    if waiting:
        for view in ended[-_ENDED_SHOWN:]:
            parts.append(Text(_summary(view, now), style=_STATE_STYLES.get(view.state, "")))
        if not active:
            parts.append(Text(f"{now.astimezone().strftime('%H:%M:%S')} no active runs; "
                              "waiting for the next one (Ctrl-C to leave)", style="dim"))
    if not parts:
        return Text("no active runs")
    return Group(*parts)


def fit_view(console: Console, render: Callable[[bool], RenderableType]) -> RenderableType:
    """``render(compact=False)`` if it fits the terminal's height, else the compact view (the
    live display crops what does not fit: with several runs, the last ones would vanish)."""
    full = render(False)
    height = len(console.render_lines(full, console.options, pad=False))
    return full if height <= console.size.height else render(True)


def summary_lines(state: LiveState, now: datetime | None = None) -> list[str]:
    """One closing line per followed run."""
    now = now or datetime.now(UTC)
    return [_summary(view, now) for view in state.runs.values()]
