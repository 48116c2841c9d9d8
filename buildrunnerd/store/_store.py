"""The store: runs, tasks, batches, attempts and events, each change with its event in one
transaction. Costs and retention live in :mod:`._costs`, the connection in :mod:`._db`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Unpack, cast, get_args

import msgspec

from buildrunnerd import protocol
from buildrunnerd.errors import InvalidStateError, StoreError
from buildrunnerd.plan._model import Plan
from buildrunnerd.store._attempts import AttemptMethods, end_attempt, open_attempt
from buildrunnerd.store._costs import CostMethods, from_nanousd
from buildrunnerd.store._db import (
    EVENT_COLUMNS,
    Reader,
    Row,
    SqlValue,
    Txn,
    decode_object,
    decode_strings,
    encode_json,
    event_from_row,
    not_found,
)
from buildrunnerd.store._records import (
    AttemptEnd,
    AttemptRecord,
    BatchChange,
    BatchRecord,
    EventData,
    JsonData,
    NewEvent,
    NewRun,
    RunChange,
    RunOptions,
    RunRecord,
    RunSpec,
    RunUpdate,
    TaskChange,
    TaskRecord,
    global_id,
)
from buildrunnerd.store._reports import decode_report, encode_report

__all__ = ["Store"]

_BATCH_STATES = frozenset(get_args(protocol.BatchState))
_TASK_STATES = frozenset(protocol.TASK_STATES)
_RUN_STATES = frozenset(protocol.RUN_STATES)
_TERMINAL_BATCH_STATES = frozenset({"succeeded", "failed", "cancelled"})

# No big text in these rows (migration 3): the spec and the plan live in `run_specs`, the
# prompts and verification reports in `task_texts`, so reading or updating a run or a task
# costs the same whatever the run's size.
_RUN_COLUMNS = (
    "id, title, state, spec_path, repo, branch, base_commit, options_json,"
    " created_at, started_at, finished_at, reason, cost_nanousd, calls, input_tokens,"
    " output_tokens, cache_read_input_tokens, cache_creation_input_tokens"
)
_TASK_BASE_COLUMNS = (
    "t.id, t.run_id, t.plan_id, t.feature, t.title, t.domain, t.complexity,"
    " t.estimate_minutes, t.files, t.acceptance_criteria, t.batch_id, t.state, t.attempts,"
    " t.model, t.cost_nanousd, t.reason"
)
_TASK_COLUMNS = (
    f"{_TASK_BASE_COLUMNS}, x.prompt, x.verification, t.description, t.updated_at"
    " FROM tasks t LEFT JOIN task_texts x ON x.task_id = t.id"
)
_TASK_LIST_COLUMNS = f"{_TASK_BASE_COLUMNS}, NULL, NULL, t.description, NULL FROM tasks t"
_BATCH_COLUMNS = (
    "id, run_id, plan_id, task_ids, domain, priority_minutes, prompt_tokens, state, attempts,"
    " model, started_at, finished_at, estimate_minutes"
)
_RUN_FIELDS = frozenset({"title", "repo", "branch", "base_commit", "spec_path", "reason"})
_OPTION_FIELDS = frozenset(RunOptions.__struct_fields__)
# SQLite's default limit on host parameters is far higher, but chunks keep statements small.
_CHUNK = 500


class Store(AttemptMethods, CostMethods):
    """BuildRunner's SQLite store (aiosqlite, WAL, foreign keys, migrations by user_version).

    Ids: run ids come from the daemon; task and batch ids are global,
    ``f"{run_id}:{plan_id}"`` (:func:`global_id`). Every state change and its event are written
    in ONE transaction; after the commit each stored :class:`protocol.Event` goes to
    :attr:`on_event` (never before, never for a rolled-back transaction). SQLite failures (disk
    full, locked, I/O) raise :class:`StoreError` and leave nothing half-written; an unknown id
    raises :class:`NotFoundError`, an unknown state name :class:`InvalidStateError`.

    API (beyond the brief, additive): ``open(..., clock=, busy_timeout_s=, max_size_bytes=)``,
    ``path``, ``now()``, ``task_counts()``, ``get_attempt()``, ``prune(...,
    api_calls_older_than=)``; ``transition`` accepts :class:`RunChange`/:class:`BatchChange`
    or plain tuples in the same order; records have ``to_info()`` for the wire types;
    ``on_event`` may be set after ``open``. Costs are kept as integer nano-dollars (exact sums).

    Side effects worth knowing: ``set_run_state`` sets ``started_at`` the first time a run goes
    ``running`` and ``finished_at`` when it reaches a terminal state (cleared when it leaves
    one); ``set_batch_state`` sets ``started_at`` on ``running`` and ``finished_at`` on a
    terminal state; ``start_attempt`` increments the batch's ``attempts`` (and sets its model).
    """

    # --- runs ---------------------------------------------------------------------------
    async def create_run(self, new: NewRun, plan: Plan | None) -> RunRecord:
        """Store a submitted run in ONE transaction: the run, its spec, and the
        ``run.submitted`` event ``{title, tasks, batches, spec_path, repo, scratch_dir}``.

        With a ``plan``, the run is ``queued`` with its features, tasks (``pending``), batches
        (``pending``) and their dependencies. Without one it is ``planning`` (the daemon is
        still planning it: no tasks yet) until :meth:`set_run_plan`; ``new.title`` is then
        required."""
        run_id = new.id
        title = new.title if new.title is not None else plan.spec_title if plan else None
        if title is None:
            raise TypeError("create_run() without a plan needs NewRun.title")
        state = "queued" if plan is not None else "planning"

        async def create(txn: Txn) -> RunRecord:
            await txn.execute(
                "INSERT INTO runs (id, title, state, spec_path, repo, branch, base_commit,"
                " options_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, title, state, new.spec_path, new.repo, new.branch, new.base_commit,
                 encode_json(new.options), txn.ts),
            )
            await txn.execute(
                "INSERT INTO run_specs (run_id, spec_text, plan_json) VALUES (?, ?, ?)",
                (run_id, new.spec_text,
                 msgspec.json.encode(plan).decode() if plan is not None else None),
            )
            if plan is not None:
                await _insert_plan(txn, run_id, plan)
            txn.add_event(
                run_id, "run.submitted",
                {"title": title, "tasks": len(plan.tasks) if plan else None,
                 "batches": len(plan.batches) if plan else None, "state": state,
                 "spec_path": new.spec_path, "repo": new.repo,
                 "scratch_dir": new.options.scratch_dir},
            )
            rows = await txn.fetchall(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
            return _run_from_row(rows[0])

        record, _ = await self._write(f"creating run {run_id}", create)
        return record

    async def set_run_plan(
        self, run_id: str, plan: Plan, *, data: EventData | None = None
    ) -> RunRecord:
        """A ``planning`` run gets its plan, in ONE transaction: features, tasks, batches,
        the plan itself, the state ``queued`` and the ``run.planned`` event
        ``{from, to, tasks, batches, **data}``. InvalidStateError if it is not planning (it
        was cancelled meanwhile, say)."""

        async def store_plan(txn: Txn) -> RunRecord:
            rows = await txn.fetchall("SELECT state FROM runs WHERE id = ?", (run_id,))
            if not rows:
                raise not_found("run", run_id)
            if rows[0][0] != "planning":
                raise InvalidStateError(
                    f"run {run_id} is {rows[0][0]}, not planning: its plan cannot be set",
                    data={"state": rows[0][0], "allowed": ["planning"]},
                )
            await txn.execute(
                "UPDATE run_specs SET plan_json = ? WHERE run_id = ?",
                (msgspec.json.encode(plan).decode(), run_id),
            )
            await _insert_plan(txn, run_id, plan)
            await txn.execute("UPDATE runs SET state = 'queued' WHERE id = ?", (run_id,))
            txn.add_event(run_id, "run.planned", {
                "from": "planning", "to": "queued", "tasks": len(plan.tasks),
                "batches": len(plan.batches), **(data or {}),
            })
            rows = await txn.fetchall(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
            return _run_from_row(rows[0])

        record, _ = await self._write(f"storing the plan of run {run_id}", store_plan)
        return record

    async def get_run(self, run_id: str) -> RunRecord:
        """One run (NotFoundError if there is none)."""
        rows = await self._fetchall(
            f"reading run {run_id}", f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)
        )
        if not rows:
            raise not_found("run", run_id)
        return _run_from_row(rows[0])

    async def get_run_spec(self, run_id: str) -> RunSpec:
        """A run's spec text and plan (NotFoundError for an unknown run). Kept apart from
        :meth:`get_run`: they are the run's biggest data and only activation needs them."""
        rows = await self._fetchall(
            f"reading the spec of run {run_id}",
            "SELECT spec_text, plan_json FROM run_specs WHERE run_id = ?", (run_id,),
        )
        if not rows:
            raise not_found("run", run_id)
        return RunSpec(spec_text=rows[0][0], plan_json=rows[0][1])

    async def list_runs(self, states: Iterable[str] | None = None) -> list[RunRecord]:
        """Runs, oldest first; only those in ``states`` when given."""
        if states is None:
            rows = await self._fetchall(
                "listing runs", f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_at, id"
            )
        else:
            wanted = list(states)
            marks = ", ".join("?" * len(wanted))
            rows = await self._fetchall(
                "listing runs",
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ({marks})"
                " ORDER BY created_at, id",
                wanted,
            )
        return [_run_from_row(r) for r in rows]

    async def set_run_state(
        self, run_id: str, to: str, *, event_type: str, reason: str | None = None,
        data: EventData | None = None,
    ) -> protocol.Event:
        """Move a run to ``to`` and store ``event_type`` ``{from, to, reason, **data}``, in one
        transaction; returns the event."""
        change = RunChange(run_id, to, event_type, reason, data)
        _, events = await self._write(
            f"changing the state of run {run_id}", lambda txn: _apply_run_change(txn, change)
        )
        return events[0]

    async def update_run(self, run_id: str, **fields: Unpack[RunUpdate]) -> None:
        """Set plain fields of a run (``title, repo, branch, base_commit, spec_path, reason``)
        or its options (``workers, budget_usd, test_cmd, allow_dirty``). No event."""
        unknown = set(fields) - _RUN_FIELDS - _OPTION_FIELDS
        if unknown:
            allowed = ", ".join(sorted(_RUN_FIELDS | _OPTION_FIELDS))
            raise TypeError(f"update_run() cannot set {', '.join(sorted(unknown))}: use {allowed}")
        async def update(txn: Txn) -> None:
            rows = await txn.fetchall("SELECT options_json FROM runs WHERE id = ?", (run_id,))
            if not rows:
                raise not_found("run", run_id)
            # Every run field of RunUpdate is text or NULL (its items() only say ``object``).
            columns = {k: cast("str | None", v) for k, v in fields.items() if k in _RUN_FIELDS}
            options = {k: v for k, v in fields.items() if k in _OPTION_FIELDS}
            if options:
                merged = msgspec.convert(
                    {**decode_object(rows[0][0]), **options}, RunOptions
                )
                columns["options_json"] = encode_json(merged)
            if columns:
                assignments = ", ".join(f"{name} = ?" for name in columns)
                await txn.execute(
                    f"UPDATE runs SET {assignments} WHERE id = ?", (*columns.values(), run_id)
                )

        await self._write(f"updating run {run_id}", update)

    # --- tasks and batches ---------------------------------------------------------------
    async def list_tasks(self, run_id: str, *, details: bool = True) -> list[TaskRecord]:
        """A run's tasks in plan order (an unknown run has none). ``details=False`` leaves
        out each task's prompt, verification report and ``updated_at`` (None): listings that
        do not show them read far less (the texts live in another table, not joined)."""
        columns = _TASK_COLUMNS if details else _TASK_LIST_COLUMNS

        async def query(db: Reader) -> tuple[list[Row], list[Row]]:
            rows = await db.fetchall(
                f"SELECT {columns} WHERE t.run_id = ? ORDER BY t.position", (run_id,)
            )
            deps = await db.fetchall(
                "SELECT d.task_id, d.depends_on FROM task_deps d JOIN tasks t"
                " ON t.id = d.task_id WHERE t.run_id = ?",
                (run_id,),
            )
            return rows, deps

        rows, deps = await self._read(f"listing the tasks of run {run_id}", query)
        depends_on = _group(deps)
        return [_task_from_row(r, depends_on.get(r[0], [])) for r in rows]

    async def get_task(self, task_id: str) -> TaskRecord:
        """One task by its global id (NotFoundError if there is none)."""

        async def query(db: Reader) -> tuple[list[Row], list[Row]]:
            rows = await db.fetchall(f"SELECT {_TASK_COLUMNS} WHERE t.id = ?", (task_id,))
            deps = await db.fetchall(
                "SELECT depends_on FROM task_deps WHERE task_id = ? ORDER BY depends_on",
                (task_id,),
            )
            return rows, deps

        rows, deps = await self._read(f"reading task {task_id}", query)
        if not rows:
            raise not_found("task", task_id)
        return _task_from_row(rows[0], [d[0] for d in deps])

    async def task_counts(self, run_ids: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """``{run_id: {state: n}}`` for the given runs (all runs when None)."""
        sql = "SELECT run_id, state, count(*) FROM tasks"
        params: list[str] = []
        if run_ids is not None:
            params = list(run_ids)
            sql += f" WHERE run_id IN ({', '.join('?' * len(params))})"
        rows = await self._fetchall("counting tasks", sql + " GROUP BY run_id, state", params)
        counts: dict[str, dict[str, int]] = {run_id: {} for run_id in params}
        for run_id, state, n in rows:
            counts.setdefault(run_id, {})[state] = int(n)
        return counts

    async def set_task_states(self, changes: Sequence[TaskChange]) -> list[protocol.Event]:
        """Apply every change and store one ``task.state_changed`` ``{from, to, reason}`` event
        each, all in ONE transaction; returns the events in order."""
        if not changes:
            return []
        _, events = await self._write(
            "changing task states", lambda txn: _apply_task_changes(txn, changes)
        )
        return events

    async def list_batches(self, run_id: str) -> list[BatchRecord]:
        """A run's batches in plan order (an unknown run has none)."""

        async def query(db: Reader) -> tuple[list[Row], list[Row]]:
            rows = await db.fetchall(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE run_id = ? ORDER BY position",
                (run_id,),
            )
            deps = await db.fetchall(
                "SELECT d.batch_id, d.depends_on FROM batch_deps d"
                " JOIN batches b ON b.id = d.batch_id WHERE b.run_id = ?",
                (run_id,),
            )
            return rows, deps

        rows, deps = await self._read(f"listing the batches of run {run_id}", query)
        depends_on = _group(deps)
        return [_batch_from_row(r, depends_on.get(r[0], [])) for r in rows]

    async def get_batch(self, batch_id: str) -> BatchRecord:
        """One batch by its global id (NotFoundError if there is none)."""

        async def query(db: Reader) -> tuple[list[Row], list[Row]]:
            rows = await db.fetchall(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
            )
            deps = await db.fetchall(
                "SELECT depends_on FROM batch_deps WHERE batch_id = ? ORDER BY depends_on",
                (batch_id,),
            )
            return rows, deps

        rows, deps = await self._read(f"reading batch {batch_id}", query)
        if not rows:
            raise not_found("batch", batch_id)
        return _batch_from_row(rows[0], [d[0] for d in deps])

    async def set_batch_state(
        self, batch_id: str, to: str, *, event_type: str | None = None,
        data: EventData | None = None, model: str | None = None,
    ) -> protocol.Event | None:
        """Move a batch to ``to`` (and set its model); with ``event_type``, store that event
        ``{from, to, **data}`` in the same transaction and return it."""
        change = BatchChange(batch_id, to, event_type, data, model)
        _, events = await self._write(
            f"changing the state of batch {batch_id}", lambda txn: _apply_batch_change(txn, change)
        )
        return events[0] if events else None

    async def transition(
        self,
        *,
        # A plain tuple is checked when RunChange(*run) is made. (A union of the tuple types
        # it may be would be exact, but mypy then infers the event data dict of a caller's
        # tuple literal as dict[str, object] and refuses it.)
        run: RunChange | tuple[Any, ...] | None = None,
        batch: BatchChange | tuple[Any, ...] | None = None,
        tasks: Sequence[TaskChange] = (),
        events: Sequence[NewEvent] = (),
        attempt: AttemptEnd | None = None,
    ) -> list[protocol.Event]:
        """Several changes and extra events in ONE transaction; returns the stored events.
        With ``attempt``, the attempt ends in it too (a batch's result and the attempt that
        made it: one commit).

        ``run`` is ``(run_id, to, event_type, reason=None, data=None)``, ``batch`` is
        ``(batch_id, to, event_type=None, data=None, model=None)``. Order: a run change to a
        non-terminal state first (``run.started`` before ``batch.dispatched``), then the batch,
        the tasks, the extra events, and a run change to a terminal state last
        (``run.succeeded`` is the run's last event)."""
        run_change = RunChange(*run) if run is not None else None
        batch_change = BatchChange(*batch) if batch is not None else None
        run_last = run_change is not None and run_change.to in protocol.TERMINAL_RUN_STATES

        async def apply(txn: Txn) -> None:
            if attempt is not None:
                await end_attempt(txn, attempt)
            if run_change is not None and not run_last:
                await _apply_run_change(txn, run_change)
            if batch_change is not None:
                await _apply_batch_change(txn, batch_change)
            if tasks:
                await _apply_task_changes(txn, tasks)
            for e in events:
                txn.add_event(e.run_id, e.type, e.data, batch_id=e.batch_id, task_id=e.task_id)
            if run_change is not None and run_last:
                await _apply_run_change(txn, run_change)

        _, stored = await self._write("applying a state transition", apply)
        return stored

    async def dispatch(
        self,
        *,
        batch: BatchChange | tuple[Any, ...],
        tasks: Sequence[TaskChange],
        worktree: str | None,
        model: str | None = None,
        prompt: str | None = None,
    ) -> AttemptRecord:
        """A batch starts an attempt, in ONE transaction: the batch's change (``running``,
        ``batch.dispatched``) and its tasks' (as :meth:`transition`), the new attempt (as
        :meth:`start_attempt`) and, when given, the ``prompt`` of the batch's tasks (as
        :meth:`set_tasks_details`). One commit instead of three: the attempt exists exactly
        when the batch is running in the store."""
        change = BatchChange(*batch)
        ids = list(dict.fromkeys(t.task_id for t in tasks))

        async def apply(txn: Txn) -> AttemptRecord:
            await _apply_batch_change(txn, change)
            if tasks:
                await _apply_task_changes(txn, tasks)
            attempt = await open_attempt(txn, change.batch_id, worktree=worktree, model=model)
            if prompt is not None and ids:
                # The tasks exist and have their new updated_at: the changes above saw to it.
                await _upsert_task_texts(txn, ids, ["prompt"], [prompt], checked=True)
            return attempt

        attempt, _ = await self._write(f"dispatching batch {change.batch_id}", apply)
        return attempt

    async def set_task_prompt(self, task_id: str, prompt: str) -> None:
        """Keep the prompt a task was built with (shown by ``brctl task``)."""
        await self.set_tasks_details([task_id], prompt=prompt)

    async def set_task_verification(
        self, task_id: str, report: protocol.VerificationReport
    ) -> None:
        """Keep a task's latest verification report."""
        await self.set_tasks_details([task_id], verification=report)

    async def set_tasks_details(
        self, task_ids: Sequence[str], *, prompt: str | None = None,
        verification: protocol.VerificationReport | None = None,
        events: Sequence[NewEvent] = (),
    ) -> list[protocol.Event]:
        """Set the prompt and/or the verification report of several tasks (a batch's tasks
        share both) in ONE transaction, with ``events`` (e.g. ``verify.passed``) stored in it
        too. Added for the daemon's hot path (one write per batch instead of one per task,
        and none apart for the event); NotFoundError if a task is missing. Returns the stored
        events."""
        columns: list[str] = []
        values: list[SqlValue] = []
        if prompt is not None:
            columns.append("prompt")
            values.append(prompt)
        if verification is not None:
            columns.append("verification")
            values.append(encode_report(verification))
        ids = list(dict.fromkeys(task_ids))
        if not columns or not ids:
            ids = []
        if not ids and not events:
            return []

        async def update(txn: Txn) -> None:
            if ids:
                await _upsert_task_texts(txn, ids, columns, values)
            for e in events:
                txn.add_event(e.run_id, e.type, e.data, batch_id=e.batch_id, task_id=e.task_id)

        _, stored = await self._write(f"setting details of {len(ids)} task(s)", update)
        return stored

    # --- events --------------------------------------------------------------------------
    async def append_event(
        self, run_id: str, type: str, data: EventData | None = None, *,
        batch_id: str | None = None, task_id: str | None = None,
    ) -> protocol.Event:
        """Store one event (its own transaction) and return it with its id and ``ts``."""

        async def append(txn: Txn) -> None:
            txn.add_event(run_id, type, data, batch_id=batch_id, task_id=task_id)

        try:
            _, events = await self._write(f"storing a {type} event of run {run_id}", append)
        except StoreError as exc:
            # The run's existence is checked by the foreign key (one statement less on the
            # hot path): the only constraint an event row can break.
            if str(exc.data.get("sqlite_error", "")).startswith("SQLITE_CONSTRAINT"):
                raise not_found("run", run_id) from None
            raise
        return events[0]

    async def list_events(
        self, *, run_id: str | None = None, since: int = 0, limit: int = 1000,
        task_id: str | None = None, types: Sequence[str] | None = None,
    ) -> list[protocol.Event]:
        """Events with ``id > since``, oldest first, at most ``limit``; filtered by run,
        task and types when given."""
        where = ["id > ?"]
        params: list[SqlValue] = [since]
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if task_id is not None:
            where.append("task_id = ?")
            params.append(task_id)
        if types is not None:
            wanted = list(types)
            where.append(f"type IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        params.append(max(0, limit))
        rows = await self._fetchall(
            "listing events",
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)}"
            " ORDER BY id LIMIT ?",
            params,
        )
        return [event_from_row(r) for r in rows]


# --- transaction steps shared by the single-change methods and transition() ---------------
async def _insert_plan(txn: Txn, run_id: str, plan: Plan) -> None:
    """A run's features, batches, tasks and their dependencies (plan ids made global)."""
    batch_of: dict[str, str] = {}
    for batch in plan.batches:
        for task_id in batch.task_ids:
            batch_of[task_id] = batch.id
    await txn.executemany(
        "INSERT INTO features (run_id, plan_id, name, line, depends_on)"
        " VALUES (?, ?, ?, ?, ?)",
        [(run_id, f.id, f.name, f.line, encode_json(f.depends_on)) for f in plan.features],
    )
    await txn.executemany(
        "INSERT INTO batches (id, run_id, plan_id, position, task_ids, domain,"
        " estimate_minutes, priority_minutes, prompt_tokens, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
        [
            (global_id(run_id, b.id), run_id, b.id, i,
             encode_json([global_id(run_id, t) for t in b.task_ids]), b.domain,
             b.estimate_minutes, b.priority_minutes, b.prompt_tokens)
            for i, b in enumerate(plan.batches)
        ],
    )
    await txn.executemany(
        "INSERT INTO batch_deps (batch_id, depends_on) VALUES (?, ?)",
        [
            (global_id(run_id, b.id), global_id(run_id, dep))
            for b in plan.batches for dep in dict.fromkeys(b.depends_on)
        ],
    )
    await txn.executemany(
        "INSERT INTO tasks (id, run_id, plan_id, position, feature, title, domain,"
        " complexity, estimate_minutes, description, files, acceptance_criteria,"
        " batch_id, state, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
        [
            (global_id(run_id, t.id), run_id, t.id, i, t.feature, t.title, t.domain,
             t.complexity, t.estimate_minutes, t.description, encode_json(t.files),
             encode_json(t.acceptance_criteria),
             global_id(run_id, batch_of[t.id]) if t.id in batch_of else None, txn.ts)
            for i, t in enumerate(plan.tasks)
        ],
    )
    await txn.executemany(
        "INSERT INTO task_deps (task_id, depends_on) VALUES (?, ?)",
        [
            (global_id(run_id, t.id), global_id(run_id, dep))
            for t in plan.tasks for dep in dict.fromkeys(t.depends_on)
        ],
    )


async def _apply_run_change(txn: Txn, change: RunChange) -> None:
    run_id, to, event_type, reason, data = change
    if to not in _RUN_STATES:
        raise _bad_state("run", run_id, to, protocol.RUN_STATES)
    rows = await txn.fetchall("SELECT state FROM runs WHERE id = ?", (run_id,))
    if not rows:
        raise not_found("run", run_id)
    previous = rows[0][0]
    terminal = to in protocol.TERMINAL_RUN_STATES
    await txn.execute(
        "UPDATE runs SET state = ?, reason = ?,"
        " started_at = CASE WHEN ? = 'running' THEN coalesce(started_at, ?) ELSE started_at END,"
        " finished_at = CASE WHEN ? THEN ? ELSE NULL END WHERE id = ?",
        (to, reason, to, txn.ts, terminal, txn.ts, run_id),
    )
    payload: dict[str, JsonData] = {"from": previous, "to": to}
    if reason is not None:
        payload["reason"] = reason
    payload.update(data or {})
    txn.add_event(run_id, event_type, payload)


async def _apply_batch_change(txn: Txn, change: BatchChange) -> None:
    batch_id, to, event_type, data, model = change
    if to not in _BATCH_STATES:
        raise _bad_state("batch", batch_id, to, sorted(_BATCH_STATES))
    rows = await txn.fetchall("SELECT state, run_id FROM batches WHERE id = ?", (batch_id,))
    if not rows:
        raise not_found("batch", batch_id)
    previous, run_id = rows[0]
    await txn.execute(
        "UPDATE batches SET state = ?, model = coalesce(?, model),"
        " started_at = CASE WHEN ? = 'running' THEN ? ELSE started_at END,"
        " finished_at = CASE WHEN ? THEN ? ELSE NULL END WHERE id = ?",
        (to, model, to, txn.ts, to in _TERMINAL_BATCH_STATES, txn.ts, batch_id),
    )
    if event_type is None:
        return
    payload: dict[str, JsonData] = {"from": previous, "to": to}
    if model is not None:
        payload["model"] = model
    payload.update(data or {})
    txn.add_event(run_id, event_type, payload, batch_id=batch_id)


async def _apply_task_changes(txn: Txn, changes: Sequence[TaskChange]) -> None:
    for change in changes:
        if change.to not in _TASK_STATES:
            raise _bad_state("task", change.task_id, change.to, protocol.TASK_STATES)
    ids = list(dict.fromkeys(c.task_id for c in changes))
    current: dict[str, tuple[str, str, str | None]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        rows = await txn.fetchall(
            f"SELECT id, state, run_id, batch_id FROM tasks WHERE id IN"
            f" ({', '.join('?' * len(chunk))})",
            chunk,
        )
        for task_id, state, run_id, batch_id in rows:
            current[task_id] = (state, run_id, batch_id)
    missing = [task_id for task_id in ids if task_id not in current]
    if missing:
        raise not_found("task", missing[0])
    updates: list[tuple[SqlValue, ...]] = []
    for change in changes:
        previous, run_id, batch_id = current[change.task_id]
        # A task listed twice moves twice: the second change starts where the first ended.
        current[change.task_id] = (change.to, run_id, batch_id)
        updates.append(
            (change.to, change.reason, change.attempts_inc, change.model, txn.ts, change.task_id)
        )
        txn.add_event(
            run_id, "task.state_changed",
            {"from": previous, "to": change.to, "reason": change.reason},
            batch_id=batch_id, task_id=change.task_id,
        )
    await txn.executemany(
        "UPDATE tasks SET state = ?, reason = ?, attempts = attempts + ?,"
        " model = coalesce(?, model), updated_at = ? WHERE id = ?",
        updates,
    )


async def _upsert_task_texts(
    txn: Txn, ids: Sequence[str], columns: Sequence[str], values: Sequence[SqlValue], *,
    checked: bool = False,
) -> None:
    """Set ``columns`` (of ``task_texts``) to ``values`` for every task in ``ids``, and their
    ``updated_at``; NotFoundError if a task is missing. ``checked``: the caller's transaction
    already found every task and set its ``updated_at``."""
    for start in range(0, len(ids) if not checked else 0, _CHUNK):
        chunk = ids[start:start + _CHUNK]
        changed = await txn.execute(
            f"UPDATE tasks SET updated_at = ? WHERE id IN ({', '.join('?' * len(chunk))})",
            (txn.ts, *chunk),
        )
        if changed != len(chunk):
            rows = await txn.fetchall(
                f"SELECT id FROM tasks WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            found = {r[0] for r in rows}
            raise not_found("task", next(t for t in chunk if t not in found))
    marks = ", ".join("?" * len(columns))
    upsert = (
        f"INSERT INTO task_texts (task_id, {', '.join(columns)}) VALUES (?, {marks})"
        " ON CONFLICT (task_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in columns)
    )
    await txn.executemany(upsert, [(task_id, *values) for task_id in ids])


# --- rows -> records ---------------------------------------------------------------------
def _run_from_row(r: Row) -> RunRecord:
    return RunRecord(
        id=r[0], title=r[1], state=r[2], spec_path=r[3], repo=r[4], branch=r[5],
        base_commit=r[6], options=msgspec.json.decode(r[7], type=RunOptions),
        created_at=r[8], started_at=r[9], finished_at=r[10], reason=r[11],
        cost_usd=from_nanousd(int(r[12])), calls=int(r[13]), input_tokens=int(r[14]),
        output_tokens=int(r[15]), cache_read_input_tokens=int(r[16]),
        cache_creation_input_tokens=int(r[17]),
    )


def _task_from_row(r: Row, depends_on: list[str]) -> TaskRecord:
    return TaskRecord(
        id=r[0], run_id=r[1], plan_id=r[2], feature=r[3], title=r[4], domain=r[5],
        complexity=r[6], estimate_minutes=int(r[7]), depends_on=sorted(depends_on),
        files=decode_strings(r[8]), acceptance_criteria=decode_strings(r[9]), batch_id=r[10],
        state=r[11], attempts=int(r[12]), model=r[13], cost_usd=from_nanousd(int(r[14])),
        reason=r[15], prompt=r[16], verification=decode_report(r[17]), description=r[18],
        updated_at=r[19],
    )


def _batch_from_row(r: Row, depends_on: list[str]) -> BatchRecord:
    return BatchRecord(
        id=r[0], run_id=r[1], plan_id=r[2], task_ids=decode_strings(r[3]),
        depends_on=sorted(depends_on), domain=r[4], priority_minutes=int(r[5]),
        prompt_tokens=int(r[6]), state=r[7], attempts=int(r[8]), model=r[9], started_at=r[10],
        finished_at=r[11], estimate_minutes=int(r[12]),
    )


def _group(pairs: Iterable[Row]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


def _bad_state(kind: str, ident: str, state: str, allowed: Iterable[str]) -> InvalidStateError:
    names = list(allowed)
    return InvalidStateError(
        f"{kind} {ident}: unknown state {state!r}; use one of {', '.join(names)}",
        data={"state": state, "allowed": names},
    )
