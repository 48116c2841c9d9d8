"""Follow runs live through ``events.subscribe``: ``status --follow``, ``logs --follow``.

Two ways to follow:

- :func:`follow` (``status RUN --follow``, ``logs RUN --follow``, ``submit --follow``): the
  given runs, replayed from their first event, until every one has ended. The exit code is 0
  when all of them succeeded and 1 when any failed or was cancelled (a paused run is still
  followed: it may be resumed).
- :func:`follow_all` (``status --follow`` without RUN): every run, including runs submitted
  after it started. It subscribes to live events first, then takes a snapshot of the active
  runs (events that overlap the snapshot converge: each one sets absolute states), and adds a
  run when an event of a run it does not know arrives. It stays open until interrupted, or
  with ``exit_when_idle`` until no run is active.

On a terminal the display is a rich ``Live`` redrawn in place; a resize (SIGWINCH) clears the
screen and redraws at the new size, so no half-drawn frame is left behind. Piped, each event is
one plain line (``--json``: one JSON line, as stored).
"""

from __future__ import annotations

import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TextIO

from brctl._client import RpcClient, all_events
from brctl._errors import DaemonUnreachableError, RemoteError
from brctl._render import LiveState, RunView, fit_view, plain_line, rich_view, summary_lines
from buildrunnerd.codes import TERMINAL_RUN_STATES

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["follow", "follow_all", "snapshot"]

_TICK_S = 0.5  # redraw period of the terminal display (elapsed times and the ETA move)
_POLL_S = 5.0  # without events for this long, ask the daemon whether the runs ended
_MIN_REDRAW_S = 0.1
_RECONNECT_S = 15.0  # a dropped connection or a restarting daemon: resubscribe for this long
_RECONNECT_PAUSE_S = 0.25


def snapshot(client: RpcClient, run_id: str) -> RunView:
    """The run as the daemon knows it now (``run.get``, and ``task.list`` if needed)."""
    run = client.call("run.get", {"run_id": run_id})
    tasks = run.get("tasks")
    if tasks is None:
        tasks = client.call("task.list", {"run_id": run_id})
        if isinstance(tasks, dict):
            tasks = tasks.get("tasks", [])
    return RunView.from_snapshot(run, tasks)


def _json_line(event: dict[str, Any]) -> str:
    from brctl._cli import json_line

    return json_line(event)


def follow(
    client: RpcClient,
    views: list[RunView],
    *,
    out: TextIO,
    mode: Literal["status", "logs"],
    tty: bool,
    as_json: bool = False,
) -> int:
    """Stream events for ``views`` until every run ended; returns the exit code (0/1)."""
    state = LiveState(views)
    stream = _EventStream(client, state, views[0].run_id if len(views) == 1 else None)
    stream.subscribe()
    if mode == "status" and tty and not as_json:
        _follow_live(stream, state, out, done=lambda: state.ended,
                     render=lambda compact: rich_view(state, compact=compact))
    else:
        _follow_lines(stream, state, out, as_json=as_json, done=lambda: state.ended)
    return state.exit_code()


def follow_all(
    client: RpcClient, *, out: TextIO, tty: bool, as_json: bool, exit_when_idle: bool
) -> int:
    """Follow every run, including later ones; see the module docstring. Returns the exit
    code once idle (``exit_when_idle``): 0 if every run followed succeeded, else 1."""
    state = LiveState([])
    stream = _EventStream(client, state, None, discover=True)
    stream.subscribe()

    def done() -> bool:
        return exit_when_idle and state.ended

    if tty and not as_json:
        _follow_live(stream, state, out, done=done, render=lambda compact: rich_view(
            state, waiting=not exit_when_idle, compact=compact))
    else:
        if not state.runs and exit_when_idle and not as_json:
            out.write("no active runs\n")
        elif not state.runs and not as_json:
            # Not a hang: say so (on stderr, stdout keeps only the event lines).
            sys.stderr.write("no active runs; waiting for the next one (Ctrl-C stops)\n")
        _follow_lines(stream, state, out, as_json=as_json, done=done)
    return state.exit_code()


class _EventStream:
    """The subscription, resumed from the last event seen when the connection drops (the
    daemon dropped us as a slow reader, or restarted): nothing is missed or shown twice.

    With ``discover`` (every run): it subscribes to live events only, then snapshots the
    active runs; an event of an unknown run brings that run in (its snapshot first)."""

    def __init__(self, client: RpcClient, state: LiveState, run_id: str | None, *,
                 discover: bool = False) -> None:
        self.client = client
        self.state = state
        self.run_id = run_id
        self.discover = discover
        self.ignored: set[str] = set()  # runs whose snapshot failed (removed meanwhile)
        self.history: deque[dict[str, Any]] = deque()  # the active runs' stored events

    def subscribe(self) -> None:
        params: dict[str, Any] = {"since": self.state.last_event_id}
        if self.run_id is not None:
            params["run_id"] = self.run_id
        fresh = self.discover and self.state.last_event_id == 0
        if fresh:
            params["replay"] = False  # history is in the snapshots taken next
        self.client.call("events.subscribe", params)
        if fresh:
            # The runs active now, each with its history (merged in id order, so that the
            # live events buffered meanwhile follow on without a gap; LiveState skips the
            # overlap): every run shows its whole history, however early it was submitted.
            history = []
            for run in self.client.call("run.list") or []:
                if run.get("state") not in TERMINAL_RUN_STATES and self._add(str(run["id"])):
                    history += all_events(self.client, str(run["id"]))
            self.history = deque(sorted(history, key=lambda e: int(e.get("id") or 0)))

    def _add(self, run_id: str) -> RunView | None:
        try:
            view = snapshot(self.client, run_id)
        except RemoteError:  # removed meanwhile (retention): nothing to show
            self.ignored.add(run_id)
            return None
        self.state.add(view)
        return view

    @property
    def buffered(self) -> int:
        return len(self.history) + self.client.pending_notifications

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        if self.history:
            return self.history.popleft()
        try:
            message = self.client.next_notification(timeout_s)
        except DaemonUnreachableError:
            self._resubscribe()
            return None
        if message is None or message.get("method") != "event":
            return None
        params = message.get("params")
        if not isinstance(params, dict):
            return None
        run_id = str(params.get("run_id"))
        if self.discover and run_id not in self.state.runs and run_id not in self.ignored:
            # A run submitted since, or an ended one that a retry re-opened.
            try:
                self._add(run_id)
            except DaemonUnreachableError:
                self._resubscribe()  # replays from the last event applied: this one again
                return None
        return params

    def apply(self, event: dict[str, Any]) -> RunView | None:
        view = self.state.apply(event)
        if view is not None and event.get("type") == "run.planned":
            # The plan's tasks exist from now on (a run is submitted before Claude plans it).
            try:
                fresh = snapshot(self.client, view.run_id)
            except RemoteError:
                return view
            for task_id, task_state in fresh.tasks.items():
                view.tasks.setdefault(task_id, task_state)
            view.estimates.update(fresh.estimates)
        return view

    def poll_ended(self) -> None:
        try:
            _poll_ended(self.client, self.state)
        except DaemonUnreachableError:
            self._resubscribe()

    def _resubscribe(self) -> None:
        deadline = time.monotonic() + _RECONNECT_S
        while True:
            self.client.close()
            try:
                self.client.connect()
                self.subscribe()
                return
            except DaemonUnreachableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_RECONNECT_PAUSE_S)


def _poll_ended(client: RpcClient, state: LiveState) -> None:
    # A safety net, not the mechanism: events normally end the follow. If the terminal event
    # was pruned or missed, the stored state still says the run is over.
    for view in state.runs.values():
        if view.ended:
            continue
        run = client.call("run.get", {"run_id": view.run_id})
        if run.get("state") in TERMINAL_RUN_STATES:
            fresh = RunView.from_snapshot(run, run.get("tasks") or [])
            view.state, view.finished, view.reason = fresh.state, fresh.finished, fresh.reason
            if fresh.tasks:
                view.tasks = fresh.tasks
            view.snapshot_cost_usd = fresh.snapshot_cost_usd
            view.running.clear()


def _follow_lines(stream: _EventStream, state: LiveState, out: TextIO, *, as_json: bool,
                  done: Callable[[], bool]) -> None:
    last_event_at = time.monotonic()
    # The replay arrives before the subscribe reply and is buffered: print it even when the
    # run had already ended (`logs --follow` of a finished run shows its whole history).
    while not done() or stream.buffered:
        event = stream.next_event(_POLL_S)
        if event is None:
            if time.monotonic() - last_event_at >= _POLL_S:
                stream.poll_ended()
                last_event_at = time.monotonic()
            continue
        last_event_at = time.monotonic()
        view = stream.apply(event)
        if view is None:
            continue
        out.write((_json_line(event) if as_json else plain_line(event, view)) + "\n")
        out.flush()


@contextmanager
def _resize_flag() -> Iterator[list[bool]]:
    """``[True]`` after the terminal was resized (SIGWINCH), until the caller resets it."""
    resized = [False]
    if not hasattr(signal, "SIGWINCH"):
        yield resized
        return

    def on_resize(_signum: int, _frame: Any) -> None:
        resized[0] = True

    try:
        previous = signal.signal(signal.SIGWINCH, on_resize)
    except ValueError:  # not the main thread (brctl run from a test harness's thread)
        yield resized
        return
    try:
        yield resized
    finally:
        signal.signal(signal.SIGWINCH, previous)


def _follow_live(stream: _EventStream, state: LiveState, out: TextIO, *,
                 done: Callable[[], bool], render: Callable[[bool], RenderableType]) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)

    def view() -> RenderableType:
        return fit_view(console, render)

    last_event_at = time.monotonic()
    with _resize_flag() as resized, \
            Live(view(), console=console, auto_refresh=False, transient=False) as live:
        last_draw = 0.0
        while not done() or stream.buffered:
            event = stream.next_event(_TICK_S)
            now = time.monotonic()
            if event is not None:
                last_event_at = now
                stream.apply(event)
            elif now - last_event_at >= _POLL_S:
                stream.poll_ended()
                last_event_at = now
            if resized[0]:
                # The terminal re-wrapped the old frame, so moving the cursor up by its
                # height would land in the wrong place: start from a clear screen instead.
                resized[0] = False
                console.clear()
                live.update(view(), refresh=True)
                last_draw = now
            elif now - last_draw >= _MIN_REDRAW_S or event is None:
                live.update(view(), refresh=True)
                last_draw = now
        live.update(view(), refresh=True)
    for line in summary_lines(state):
        console.print(line, highlight=False, markup=False)
    sys.stdout.flush()
