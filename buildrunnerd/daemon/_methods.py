"""Every JSON-RPC method of the contract, registered on a :class:`~buildrunnerd.rpc.Dispatcher`.

Params arrive by name and are validated with msgspec Structs; a bad param is a -32602 error
whose ``data.param`` names it. Application errors are :mod:`buildrunnerd.errors` (their
JSON-RPC code and ``data`` go to the client as they are). Results are the wire types of
:mod:`buildrunnerd.protocol`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec

from buildrunnerd import __version__, protocol
from buildrunnerd.daemon._events import EventBus
from buildrunnerd.daemon._intake import SubmitRequest, plan_spec, read_spec
from buildrunnerd.daemon._runs import RunManager
from buildrunnerd.daemon._runs import tasks_by_state as count_tasks
from buildrunnerd.errors import BuildRunnerError, NotFoundError

if TYPE_CHECKING:
    from buildrunnerd.rpc import Connection, Dispatcher
    from buildrunnerd.store import Store

__all__ = ["DaemonMethods", "DaemonStoppingError", "InvalidParamsError"]

T = TypeVar("T")


class InvalidParamsError(BuildRunnerError):
    """A method's params are missing, unknown or of the wrong type (names the param)."""

    code = protocol.INVALID_PARAMS


class DaemonStoppingError(BuildRunnerError):
    """The daemon is shutting down and takes no new work."""

    code = protocol.DAEMON_STOPPING


# --- params ------------------------------------------------------------------------------
class _Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class _NoParams(_Params):
    pass


class _SpecParams(_Params):
    spec_path: str | None = None
    spec_text: str | None = None


class _SubmitParams(_Params):
    spec_path: str | None = None
    spec_text: str | None = None
    repo: str | None = None
    workers: int | None = None
    budget_usd: float | None = None
    test_cmd: str | None = None
    allow_dirty: bool = False
    scratch: bool = False


class _RunListParams(_Params):
    state: str | list[str] | None = None


class _RunParams(_Params):
    run_id: str


class _TaskParams(_Params):
    task_id: str


_IdText = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class _RunResolveParams(_Params):
    run_id: _IdText


class _TaskResolveParams(_Params):
    task_id: _IdText


# An event id is an SQLite INTEGER: a cursor past 2**63-1 is a client error, not a crash.
_Cursor = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _SubscribeParams(_Params):
    run_id: str | None = None
    since: _Cursor = 0
    replay: bool = True  # False: only events stored from now on (`brctl status --follow`)


class _EventsListParams(_Params):
    run_id: str | None = None
    since: _Cursor = 0
    limit: int = 1000
    task_id: str | None = None
    types: list[str] | None = None


class _CostsParams(_Params):
    run_id: str | None = None
    by: Literal["model", "day", "run"] = "model"


_PARAM_RE = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")
_FIELD_RE = re.compile(r"(?:field|fields) `([A-Za-z_][A-Za-z0-9_]*)`")


def parse_params(method: str, params: dict[str, Any], kind: type[T]) -> T:
    """Validate ``params`` for ``method`` into ``kind`` or raise InvalidParamsError."""
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PARAM_RE.search(text) or _FIELD_RE.search(text)
        param = match.group(1) if match else None
        raise InvalidParamsError(
            f"invalid params for {method}: {text}"
            + (f" (param {param!r})" if param else ""),
            data={"method": method, "param": param, "reason": text},
        ) from exc


def _one_spec(method: str, spec_path: str | None, spec_text: str | None) -> None:
    if (spec_path is None) == (spec_text is None):
        raise InvalidParamsError(
            f"invalid params for {method}: pass exactly one of spec_path (an absolute path) "
            "or spec_text",
            data={"method": method, "param": "spec_path", "reason": "need exactly one"},
        )



# The wire types omit default values (``omit_defaults``), but the contract promises some of
# them in every listing (a task's ``attempts`` and ``cost_usd`` even when 0, a run's
# ``cost_usd``): results are sent with every field, and the ``task.get``/``run.get``-only
# details only when they are set.
_TASK_DETAILS = frozenset({"prompt", "verification", "events"})
_RUN_DETAILS = frozenset({"tasks", "batches"})


def task_wire(info: protocol.TaskInfo) -> dict[str, Any]:
    """A TaskInfo as sent: every field, details only when set."""
    return {name: getattr(info, name) for name in info.__struct_fields__
            if not (name in _TASK_DETAILS and getattr(info, name) is None)}


def run_wire(info: protocol.RunInfo) -> dict[str, Any]:
    """A RunInfo as sent: every field, its tasks and batches only when set."""
    out: dict[str, Any] = {}
    for name in info.__struct_fields__:
        value = getattr(info, name)
        if name in _RUN_DETAILS and value is None:
            continue
        out[name] = [task_wire(t) for t in value] if name == "tasks" else value
    return out


Handler = Callable[[dict[str, Any], "Connection"], Awaitable[Any]]


class DaemonMethods:
    """The handlers; ``register(dispatcher)`` wires every contract method."""

    def __init__(
        self,
        *,
        runs: RunManager,
        store: Store,
        bus: EventBus,
        backend: str,
        socket: Path,
        home: Path,
        request_shutdown: Callable[[Connection], None],
        started_monotonic: float | None = None,
        sandbox: str = "unavailable",
        sandbox_detail: str = "",
        backend_reason: str = "",
    ) -> None:
        self.runs = runs
        self.sandbox = sandbox
        self.sandbox_detail = sandbox_detail
        self.store = store
        self.bus = bus
        self.backend = backend
        self.backend_reason = backend_reason
        self.socket = socket
        self.home = home
        self.request_shutdown = request_shutdown
        self.started = started_monotonic if started_monotonic is not None else time.monotonic()
        self.stopping = False

    def register(self, dispatcher: Dispatcher) -> None:
        """Register every method of the contract on ``dispatcher``."""
        table: dict[str, Handler] = {
            "daemon.ping": self.ping,
            "daemon.shutdown": self.shutdown,
            "spec.plan": self.spec_plan,
            "run.submit": self.run_submit,
            "run.list": self.run_list,
            "run.resolve": self.run_resolve,
            "run.get": self.run_get,
            "run.pause": self.run_pause,
            "run.resume": self.run_resume,
            "run.cancel": self.run_cancel,
            "task.list": self.task_list,
            "task.get": self.task_get,
            "task.resolve": self.task_resolve,
            "task.retry": self.task_retry,
            "events.subscribe": self.events_subscribe,
            "events.list": self.events_list,
            "costs.summary": self.costs_summary,
        }
        for name, handler in table.items():
            dispatcher.register(name, handler)

    # --- daemon ---------------------------------------------------------------------------
    async def ping(self, params: dict[str, Any], conn: Connection) -> protocol.PingResult:
        """Version, uptime, backend (``simulated`` is flagged), workers."""
        parse_params("daemon.ping", params, _NoParams)
        return protocol.PingResult(
            version=__version__, pid=os.getpid(),
            uptime_s=round(time.monotonic() - self.started, 3),
            backend=self.backend, simulated=self.backend == "simulated",
            workers=self.runs.scheduler.workers, socket=str(self.socket), home=str(self.home),
            sandbox=self.sandbox, sandbox_detail=self.sandbox_detail,
            active_runs=self.runs.active_runs, backend_reason=self.backend_reason,
        )

    async def shutdown(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Stop the daemon gracefully (like SIGTERM); answers before it stops."""
        parse_params("daemon.shutdown", params, _NoParams)
        self.request_shutdown(conn)
        return {"stopping": True, "pid": os.getpid()}

    def _refuse_when_stopping(self, method: str) -> None:
        if self.stopping:
            raise DaemonStoppingError(
                f"{method}: the daemon is shutting down; start it again and retry",
                data={"method": method},
            )

    # --- specs and runs -------------------------------------------------------------------
    async def spec_plan(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Plan a spec (nothing runs): the ``plan --json`` shape."""
        p = parse_params("spec.plan", params, _SpecParams)
        _one_spec("spec.plan", p.spec_path, p.spec_text)
        text, path = await read_spec(p.spec_path, p.spec_text)
        _, plan = await plan_spec(text, path, self.runs.config)
        return plan.to_json_dict()

    async def run_submit(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Plan a spec and start a run on its repository."""
        p = parse_params("run.submit", params, _SubmitParams)
        _one_spec("run.submit", p.spec_path, p.spec_text)
        if p.workers is not None and p.workers < 1:
            raise InvalidParamsError(
                "invalid params for run.submit: workers must be at least 1",
                data={"method": "run.submit", "param": "workers", "reason": "must be >= 1"},
            )
        if p.budget_usd is not None and p.budget_usd < 0:
            raise InvalidParamsError(
                "invalid params for run.submit: budget_usd must be >= 0",
                data={"method": "run.submit", "param": "budget_usd", "reason": "must be >= 0"},
            )
        if p.scratch and p.repo:
            raise InvalidParamsError(
                "invalid params for run.submit: scratch and repo exclude each other (a scratch "
                "run has no repository); pass one of them",
                data={"method": "run.submit", "param": "scratch", "reason": "with repo"},
            )
        self._refuse_when_stopping("run.submit")
        record = await self.runs.submit(SubmitRequest(**msgspec.structs.asdict(p)))
        # The reply comes at once: counts, not the task list (a big run has thousands).
        by_state = dict.fromkeys(protocol.TASK_STATES, 0)
        by_state.update((await self.store.task_counts([record.id])).get(record.id, {}))
        return run_wire(record.to_info(tasks_by_state=by_state))

    async def _run_info(self, run_id: str, *, full: bool = False) -> protocol.RunInfo:
        record = await self.store.get_run(run_id)
        tasks = await self.store.list_tasks(run_id, details=False)
        info = record.to_info(tasks_by_state=count_tasks(tasks))
        info.task_count = len(tasks)
        if full:
            info.tasks = [t.to_info() for t in tasks]
            info.batches = [b.to_info() for b in await self.store.list_batches(run_id)]
        return info

    async def run_list(self, params: dict[str, Any], conn: Connection) -> list[dict[str, Any]]:
        """Every run, newest first (``state`` filters)."""
        p = parse_params("run.list", params, _RunListParams)
        states = [p.state] if isinstance(p.state, str) else p.state
        records = (await self.store.list_runs(states=states))[::-1]  # the store: oldest first
        counts = await self.store.task_counts([r.id for r in records])
        infos = []
        for record in records:
            by_state = dict.fromkeys(protocol.TASK_STATES, 0)
            by_state.update(counts.get(record.id, {}))
            infos.append(run_wire(record.to_info(tasks_by_state=by_state)))
        return infos

    async def _matching_runs(self, text: str) -> list[str]:
        # Newest first. Run ids are "r-<hex>": "0a1b" matches "r-0a1b..." as "r-0a1b" does.
        try:
            await self.store.run_cost_usd(text)  # one column of one row: an exact id
        except NotFoundError:
            pass
        else:
            return [text]
        ids = [r.id for r in reversed(await self.store.list_runs())]
        return [i for i in ids if i.startswith(text) or i.partition("-")[2].startswith(text)]

    async def run_resolve(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """The run ids that ``run_id`` names: itself if it exists, else every id it is a
        prefix of (newest first). brctl resolves what users type with it."""
        p = parse_params("run.resolve", params, _RunResolveParams)
        return {"run_ids": await self._matching_runs(p.run_id)}

    async def run_get(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """One run with its tasks and batches."""
        p = parse_params("run.get", params, _RunParams)
        return run_wire(await self._run_info(p.run_id, full=True))

    async def run_pause(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        p = parse_params("run.pause", params, _RunParams)
        await self.runs.pause(p.run_id, reason="paused by the user")
        return run_wire(await self._run_info(p.run_id))

    async def run_resume(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        p = parse_params("run.resume", params, _RunParams)
        self._refuse_when_stopping("run.resume")
        await self.runs.resume(p.run_id)
        return run_wire(await self._run_info(p.run_id))

    async def run_cancel(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        p = parse_params("run.cancel", params, _RunParams)
        await self.runs.cancel(p.run_id)
        return run_wire(await self._run_info(p.run_id))

    # --- tasks ----------------------------------------------------------------------------
    async def task_list(self, params: dict[str, Any], conn: Connection) -> list[dict[str, Any]]:
        """A run's tasks in plan order."""
        p = parse_params("task.list", params, _RunParams)
        await self.store.get_run(p.run_id)  # NotFoundError for an unknown run
        tasks = await self.store.list_tasks(p.run_id, details=False)
        return [task_wire(t.to_info()) for t in tasks]

    async def task_get(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """One task in full: prompt, verification report, files, events."""
        p = parse_params("task.get", params, _TaskParams)
        task = await self.store.get_task(p.task_id)
        info = task.to_info(full=True)
        info.events = await self.store.list_events(run_id=task.run_id, task_id=task.id,
                                                   limit=1000)
        return task_wire(info)

    async def task_resolve(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """The task ids that ``task_id`` names: itself if it exists; else, for ``RUN:LOCAL``,
        LOCAL in every run RUN is a prefix of; else (no ``:``) that id in every run, newest
        first. One indexed lookup per candidate run."""
        p = parse_params("task.resolve", params, _TaskResolveParams)
        if await self._task_exists(p.task_id):
            return {"task_ids": [p.task_id]}
        run_part, colon, local = p.task_id.partition(":")
        if colon:
            runs = await self._matching_runs(run_part) if run_part else []
        else:
            runs, local = [r.id for r in reversed(await self.store.list_runs())], p.task_id
        found = [f"{run_id}:{local}" for run_id in runs
                 if local and await self._task_exists(f"{run_id}:{local}")]
        return {"task_ids": found}

    async def _task_exists(self, task_id: str) -> bool:
        try:
            await self.store.get_task(task_id)
        except NotFoundError:
            return False
        return True

    async def task_retry(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Re-queue a failed task (its batch) and unblock its dependents."""
        p = parse_params("task.retry", params, _TaskParams)
        self._refuse_when_stopping("task.retry")
        task = await self.runs.retry_task(p.task_id)
        return task_wire(task.to_info())

    # --- events and costs -----------------------------------------------------------------
    async def events_subscribe(self, params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Replay stored events after ``since`` as ``event`` notifications, then stream live
        ones on this connection until it closes. The reply comes after the replay."""
        p = parse_params("events.subscribe", params, _SubscribeParams)
        if p.run_id is not None:
            await self.store.get_run(p.run_id)
        # A subscriber watches and need not speak: a quiet run must not trip the idle timeout.
        conn.mark_subscriber()

        async def list_events(run_id: str | None, since: int, limit: int) -> list[protocol.Event]:
            if not p.replay:
                return []  # live events only: the client takes a snapshot after subscribing
            return await self.store.list_events(run_id=run_id, since=since, limit=limit)

        async def send_replay(event: protocol.Event) -> bool:
            return await conn.send_notification("event", msgspec.to_builtins(event))

        sub = await self.bus.subscribe(
            conn, run_id=p.run_id, since=p.since, list_events=list_events,
            send_replay=send_replay,
        )
        return {"subscribed": not sub.dropped, "run_id": p.run_id, "last_id": sub.last_id}

    async def events_list(self, params: dict[str, Any], conn: Connection) -> list[protocol.Event]:
        """Stored events after ``since`` (the cursor), oldest first, at most ``limit``."""
        p = parse_params("events.list", params, _EventsListParams)
        if p.run_id is not None:
            await self.store.get_run(p.run_id)
        return await self.store.list_events(run_id=p.run_id, since=p.since, limit=p.limit,
                                            task_id=p.task_id, types=p.types)

    async def costs_summary(self, params: dict[str, Any], conn: Connection) -> protocol.CostSummary:
        """Spend from the database, by model, day or run."""
        p = parse_params("costs.summary", params, _CostsParams)
        if p.run_id is not None:
            await self.store.get_run(p.run_id)
        return await self.store.cost_summary(run_id=p.run_id, by=p.by)
