"""The live view: fold events into per-run state, render it as plain lines or a rich display.

Pure functions of recorded data (a run snapshot, its tasks, a list of events) so tests can feed
recorded event lists; the loop that reads the socket lives in :mod:`brctl._follow`.
``rich`` is imported only when a terminal display is actually drawn (``brctl`` starts fast).
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from buildrunnerd.protocol import TASK_STATES, TERMINAL_RUN_STATES

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = [
    "RunView", "LiveState", "plain_line", "printable", "rich_view", "format_duration",
    "format_tokens", "format_usd", "parse_ts",
]

_RUN_EVENT_STATES = {
    "run.submitted": "queued", "run.started": "running", "run.paused": "paused",
    "run.resumed": "running", "run.succeeded": "succeeded", "run.failed": "failed",
    "run.cancelled": "cancelled",
}
LAST_EVENTS = 6


def parse_ts(ts: str | None) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (None if absent or unreadable)."""
    if not ts:
        return None
    try:
        parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``1m 15s``; ``3725`` -> ``1h 02m``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def format_usd(amount: float | None) -> str:
    """Dollars with enough digits for a cheap model call."""
    if amount is None:
        return "-"
    return f"${amount:.4f}" if amount < 10 else f"${amount:,.2f}"


@dataclass
class RunningBatch:
    batch_id: str
    model: str | None
    task_ids: list[str]
    started: datetime | None


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
    running: dict[str, RunningBatch] = field(default_factory=dict)
    last_events: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_EVENTS))

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
            view.tasks[str(task["id"])] = str(task.get("state") or "pending")
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

    def apply(self, event: dict[str, Any]) -> None:
        """Move the view forward by one event."""
        kind = str(event.get("type", ""))
        data = event.get("data") or {}
        ts = parse_ts(event.get("ts"))
        if kind in _RUN_EVENT_STATES:
            self.state = _RUN_EVENT_STATES[kind]
            if kind == "run.started" and self.started is None:
                self.started = ts
            if self.state in TERMINAL_RUN_STATES:
                self.finished = ts
                self.reason = data.get("reason", self.reason)
                self.running.clear()
        elif kind == "task.state_changed" and event.get("task_id"):
            self.tasks[str(event["task_id"])] = str(data.get("to", "pending"))
        elif kind == "batch.dispatched" and event.get("batch_id"):
            batch_id = str(event["batch_id"])
            self.running[batch_id] = RunningBatch(
                batch_id, data.get("model"), list(data.get("task_ids") or []), ts
            )
        elif kind in ("batch.succeeded", "batch.failed", "batch.cancelled", "batch.interrupted"):
            self.running.pop(str(event.get("batch_id")), None)
        elif kind == "api.call":
            self.event_cost_usd += float(data.get("cost_usd") or 0.0)
            batch = self.running.get(str(event.get("batch_id")))
            if batch is not None and data.get("model"):
                batch.model = str(data["model"])
        self.last_events.append(describe(event))


class LiveState:
    """Every followed run, by id. Events of runs not followed are ignored."""

    def __init__(self, runs: list[RunView]) -> None:
        self.runs: dict[str, RunView] = {run.run_id: run for run in runs}
        self.last_event_id = 0

    def apply(self, event: dict[str, Any]) -> RunView | None:
        """Apply one event; returns its run's view, or None when it is old or not followed."""
        event_id = int(event.get("id") or 0)
        if event_id and event_id <= self.last_event_id:
            return None  # already seen (replay overlapping live events)
        self.last_event_id = max(self.last_event_id, event_id)
        view = self.runs.get(str(event.get("run_id")))
        if view is not None:
            view.apply(event)
        return view

    @property
    def ended(self) -> bool:
        return all(view.ended for view in self.runs.values())

    def exit_code(self) -> int:
        """0 when every followed run succeeded, else 1."""
        return 0 if all(v.state == "succeeded" for v in self.runs.values()) else 1


# Control characters (C0, DEL, C1) and the bidirectional overrides: in a name or a reason
# that the model chose they would be obeyed by the terminal (set its title, write the
# clipboard with OSC 52, move the cursor over what the user reads, start a fake log line).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), never sent."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def describe(event: dict[str, Any]) -> str:
    """A short human description of one event (no timestamp, no run id), safe for a
    terminal: what the model named is shown, its control characters escaped."""
    return printable(_describe(event))


def _describe(event: dict[str, Any]) -> str:
    kind = str(event.get("type", "?"))
    data: dict[str, Any] = event.get("data") or {}
    run_id = str(event.get("run_id", ""))
    task, batch = _local(event.get("task_id"), run_id), _local(event.get("batch_id"), run_id)
    if kind == "task.state_changed":
        text = f"{task}: {data.get('from', '?')} -> {data.get('to', '?')}"
        return text + (f" ({data['reason']})" if data.get("reason") else "")
    if kind == "batch.dispatched":
        model = f" on {data['model']}" if data.get("model") else ""
        tasks = ",".join(_local(t, run_id) or "" for t in data.get("task_ids") or [])
        return f"{batch} dispatched{model}" + (f" [{tasks}]" if tasks else "")
    if kind.startswith("batch."):
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return f"{batch} {kind.split('.', 1)[1]}{reason}"
    if kind == "api.call":
        return f"api call {data.get('model', '?')}: {format_tokens(data)}, " + format_usd(
            data.get("cost_usd")
        )
    if kind.startswith("file."):
        return f"{kind.split('.', 1)[1]} {data.get('path', '?')}" + (f" ({task})" if task else "")
    if kind.startswith("run."):
        reason = f": {data['reason']}" if data.get("reason") else ""
        return f"run {kind.split('.', 1)[1]}{reason}"
    if kind.startswith("verify."):
        detail = data.get("summary") or data.get("message") or ""
        if not detail and isinstance(data.get("checks"), list):
            detail = ", ".join(
                str(c.get("name", "?")) + ("" if c.get("passed", True) else " FAILED")
                if isinstance(c, dict) else str(c)
                for c in data["checks"]
            )
        return f"verification {kind.split('.', 1)[1]}" + (f": {detail}" if detail else "")
    extra = json.dumps(data, separators=(",", ":"), default=str) if data else ""
    return f"{kind} {extra}".strip()


def format_tokens(data: dict[str, Any]) -> str:
    """The usage of one ``api.call`` event: ``623 in / 129 out (cache 500 read, 0 written)``.

    The daemon records usage as ``data.tokens = {input_tokens, output_tokens,
    cache_read_input_tokens, cache_creation_input_tokens}``; flat keys on ``data`` itself are
    read too, so older recordings still render. The cache part is left out when both are zero.
    """
    tokens = data.get("tokens")
    usage: dict[str, Any] = tokens if isinstance(tokens, dict) else data
    text = f"{usage.get('input_tokens', '?')} in"
    if "output_tokens" in usage:
        text += f" / {usage['output_tokens']} out"
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    if read or written:
        text += f" (cache {read} read, {written} written)"
    return text


def _local(item_id: Any, run_id: str) -> str | None:
    # Task and batch ids are "<run id>:<local id>"; the run id is already on the line.
    if item_id is None:
        return None
    text = str(item_id)
    return text[len(run_id) + 1:] if run_id and text.startswith(run_id + ":") else text


def plain_line(event: dict[str, Any], view: RunView | None) -> str:
    """One line per event for pipes and logs: ``HH:MM:SS run_id description [done/total]``."""
    ts = parse_ts(event.get("ts"))
    clock = ts.strftime("%H:%M:%S") if ts else "--:--:--"
    line = f"{clock} {event.get('run_id', '?')} {describe(event)}"
    if view is not None and event.get("type") == "task.state_changed" and view.tasks:
        line += f" [{view.done}/{len(view.tasks)} succeeded]"
    if view is not None and event.get("type") in ("run.succeeded", "run.failed", "run.cancelled"):
        line += f" ({view.done}/{len(view.tasks)} tasks succeeded, {format_usd(view.cost_usd)})"
    return line


_STATE_STYLES = {
    "succeeded": "green", "running": "cyan", "verifying": "blue", "ready": "yellow",
    "pending": "dim", "failed": "red", "blocked": "magenta", "cancelled": "dim red",
    "queued": "dim", "paused": "yellow",
}


def rich_view(state: LiveState, now: datetime | None = None) -> RenderableType:
    """The terminal display: one panel per run (progress, states, batches, spend, events)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = now or datetime.now(UTC)
    panels = []
    for view in state.runs.values():
        total = len(view.tasks)
        style = _STATE_STYLES.get(view.state, "")
        header = Text.assemble(
            (view.title or view.run_id, "bold"), "  ", (view.state, f"bold {style}"),
            f"  elapsed {format_duration(view.elapsed_s(now))}",
        )
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
        if view.running:
            batches = Table("batch", "model", "tasks", "elapsed", box=None, padding=(0, 2, 0, 0))
            for batch in view.running.values():
                elapsed = (now - batch.started).total_seconds() if batch.started else 0.0
                tasks = ", ".join(_local(t, view.run_id) or "" for t in batch.task_ids)
                batches.add_row(_local(batch.batch_id, view.run_id), batch.model or "-",
                                tasks or "-", format_duration(elapsed))
            parts.append(batches)
        if view.last_events:
            parts.append(Text("\n".join(view.last_events), style="dim"))
        if view.ended and view.reason:
            parts.append(Text(f"reason: {view.reason}", style=style))
        panels.append(Panel(Group(*parts), title=f"run {view.run_id}", title_align="left"))
    if not panels:
        return Text("no active runs")
    return Group(*panels)
