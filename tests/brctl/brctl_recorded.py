"""Recorded runs (events as the daemon stores them) and a fake daemon that replays them.

The fake daemon is a real RpcServer on a real socket; only the answers are canned, so the whole
of brctl (client, follow loop, rendering, exit codes) runs as it does against buildrunnerd.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from buildrunnerd.errors import NotFoundError
from buildrunnerd.rpc import Connection, Dispatcher

DATA = Path(__file__).parent / "data"


def failed_run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run snapshot taken at submit time and every event of the run (it fails)."""
    snapshot = json.loads((DATA / "failed_run_snapshot.json").read_text())
    lines = (DATA / "failed_run_events.jsonl").read_text().splitlines()
    return snapshot, [json.loads(line) for line in lines]


def recorded_dispatcher(
    tg: TaskGroup, snapshot: dict[str, Any], events: list[dict[str, Any]], *,
    live_after: int, delay_s: float,
) -> Dispatcher:
    """Serve one recorded run: ``events[:live_after]`` are replayed at subscribe time, the rest
    arrive one by one every ``delay_s`` as live notifications."""
    run_id = snapshot["id"]
    dispatcher = Dispatcher()

    def current_run() -> dict[str, Any]:
        run = copy.deepcopy(snapshot)
        return run

    async def run_get(params: dict[str, Any], conn: Connection) -> Any:
        if params.get("run_id") != run_id:
            raise NotFoundError(f"run {params.get('run_id')} not found",
                                data={"kind": "run", "id": params.get("run_id")})
        return current_run()

    async def run_list(params: dict[str, Any], conn: Connection) -> Any:
        return [current_run()]

    async def task_list(params: dict[str, Any], conn: Connection) -> Any:
        return current_run()["tasks"]

    async def stream(conn: Connection, since: int) -> None:
        for event in events[live_after:]:
            await anyio.sleep(delay_s)
            if event["id"] > since and not conn.notify("event", event):
                return

    async def subscribe(params: dict[str, Any], conn: Connection) -> Any:
        since = int(params.get("since") or 0)
        for event in events[:live_after]:
            if event["id"] > since:
                conn.notify("event", event)
        tg.start_soon(stream, conn, since)
        return {"subscribed": True, "run_id": params.get("run_id")}

    async def events_list(params: dict[str, Any], conn: Connection) -> Any:
        since, limit = int(params.get("since") or 0), int(params.get("limit") or 1000)
        return [e for e in events if e["id"] > since][:limit]

    async def run_resolve(params: dict[str, Any], conn: Connection) -> Any:
        return {"run_ids": [run_id] if run_id.startswith(str(params.get("run_id"))) else []}

    for name, handler in {
        "run.resolve": run_resolve, "run.get": run_get, "run.list": run_list,
        "task.list": task_list, "events.subscribe": subscribe, "events.list": events_list,
    }.items():
        dispatcher.register(name, handler)
    return dispatcher
