"""Follow runs live through ``events.subscribe``: ``status --follow``, ``logs --follow``.

Ends when every followed run has ended. The exit code is 0 when all of them succeeded and 1 when
any failed or was cancelled (a paused run is still followed: it may be resumed).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import msgspec

from brctl._client import DaemonUnreachableError, RpcClient
from brctl._render import LiveState, RunView, format_duration, format_usd, plain_line, rich_view
from buildrunnerd.protocol import TERMINAL_RUN_STATES

__all__ = ["follow", "snapshot"]

_TICK_S = 0.5  # redraw period of the terminal display (elapsed times move)
_POLL_S = 5.0  # without events for this long, ask the daemon whether the run ended
_MIN_REDRAW_S = 0.1
_RECONNECT_S = 15.0  # a dropped connection or a restarting daemon: resubscribe for this long
_RECONNECT_PAUSE_S = 0.25
_encoder = msgspec.json.Encoder()


def snapshot(client: RpcClient, run_id: str) -> RunView:
    """The run as the daemon knows it now (``run.get``, and ``task.list`` if needed)."""
    run = client.call("run.get", {"run_id": run_id})
    tasks = run.get("tasks")
    if tasks is None:
        tasks = client.call("task.list", {"run_id": run_id})
        if isinstance(tasks, dict):
            tasks = tasks.get("tasks", [])
    return RunView.from_snapshot(run, tasks)


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
        return _follow_live(stream, state, out)
    return _follow_lines(stream, state, out, as_json=as_json)


class _EventStream:
    """The subscription, resumed from the last event seen when the connection drops (the
    daemon dropped us as a slow reader, or restarted): nothing is missed or shown twice."""

    def __init__(self, client: RpcClient, state: LiveState, run_id: str | None) -> None:
        self.client = client
        self.state = state
        self.run_id = run_id

    def subscribe(self) -> None:
        params: dict[str, Any] = {"since": self.state.last_event_id}
        if self.run_id is not None:
            params["run_id"] = self.run_id
        self.client.call("events.subscribe", params)

    @property
    def buffered(self) -> int:
        return self.client.pending_notifications

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            message = self.client.next_notification(timeout_s)
        except DaemonUnreachableError:
            self._resubscribe()
            return None
        if message is None or message.get("method") != "event":
            return None
        params = message.get("params")
        return params if isinstance(params, dict) else None

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


def _follow_lines(stream: _EventStream, state: LiveState, out: TextIO, *, as_json: bool) -> int:
    last_event_at = time.monotonic()
    # The replay arrives before the subscribe reply and is buffered: print it even when the
    # run had already ended (`logs --follow` of a finished run shows its whole history).
    while not state.ended or stream.buffered:
        event = stream.next_event(_POLL_S)
        if event is None:
            if time.monotonic() - last_event_at >= _POLL_S:
                stream.poll_ended()
                last_event_at = time.monotonic()
            continue
        last_event_at = time.monotonic()
        view = state.apply(event)
        if view is None:
            continue
        if as_json:
            out.write(_encoder.encode(event).decode() + "\n")
        else:
            out.write(plain_line(event, view) + "\n")
        out.flush()
    return state.exit_code()


def _follow_live(stream: _EventStream, state: LiveState, out: TextIO) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    last_event_at = time.monotonic()
    with Live(rich_view(state), console=console, auto_refresh=False, transient=False) as live:
        last_draw = 0.0
        while not state.ended or stream.buffered:
            event = stream.next_event(_TICK_S)
            now = time.monotonic()
            if event is not None:
                last_event_at = now
                state.apply(event)
            elif now - last_event_at >= _POLL_S:
                stream.poll_ended()
                last_event_at = now
            if now - last_draw >= _MIN_REDRAW_S or event is None:
                live.update(rich_view(state), refresh=True)
                last_draw = now
        live.update(rich_view(state), refresh=True)
    for view in state.runs.values():
        console.print(
            f"run {view.run_id} {view.state}: {view.done}/{len(view.tasks)} tasks succeeded, "
            f"{format_usd(view.cost_usd)}, {format_duration(view.elapsed_s(datetime.now(UTC)))}"
            + (f" ({view.reason})" if view.reason else ""),
            highlight=False,
        )
    return state.exit_code()
