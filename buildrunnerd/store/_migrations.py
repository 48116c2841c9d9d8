"""The schema, as a numbered list of migrations; ``PRAGMA user_version`` says which ran.

Migration N takes a database at version N-1 to version N. Each runs in its own transaction
together with the ``user_version`` bump, so a crash mid-upgrade leaves the previous version,
never a half-migrated file. Never edit a migration that has shipped: add the next one.
"""

from __future__ import annotations

import sqlite3

import aiosqlite

__all__ = ["MIGRATIONS", "LATEST_VERSION", "migrate", "split_statements", "user_version"]

_RUN_STATES = "'queued','running','paused','succeeded','failed','cancelled'"
_TASK_STATES = (
    "'pending','ready','running','verifying','succeeded','failed','blocked','cancelled'"
)
_BATCH_STATES = "'pending','running','verifying','succeeded','failed','cancelled'"
_OUTCOMES = "'succeeded','failed','interrupted','conflict','cancelled'"

# 1: the base schema. Costs are integer nano-dollars so every sum is exact.
_V1 = f"""
CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ({_RUN_STATES})),
    spec_path     TEXT,
    spec_text     TEXT NOT NULL,
    repo          TEXT,
    branch        TEXT,
    base_commit   TEXT,
    plan_json     TEXT NOT NULL,
    options_json  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    reason        TEXT,
    cost_nanousd  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE features (
    run_id        TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    plan_id       TEXT NOT NULL,
    name          TEXT NOT NULL,
    line          INTEGER,
    depends_on    TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (run_id, plan_id)
);
CREATE TABLE batches (
    id                TEXT PRIMARY KEY,
    run_id            TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    plan_id           TEXT NOT NULL,
    position          INTEGER NOT NULL,
    task_ids          TEXT NOT NULL DEFAULT '[]',  -- JSON, in the plan's order
    domain            TEXT NOT NULL,
    estimate_minutes  INTEGER NOT NULL,
    priority_minutes  INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ({_BATCH_STATES})),
    attempts          INTEGER NOT NULL DEFAULT 0,
    model             TEXT,
    started_at        TEXT,
    finished_at       TEXT
);
CREATE INDEX batches_run ON batches(run_id, position);
CREATE TABLE batch_deps (
    batch_id    TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    depends_on  TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    PRIMARY KEY (batch_id, depends_on)
) WITHOUT ROWID;
CREATE TABLE tasks (
    id                   TEXT PRIMARY KEY,
    run_id               TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    plan_id              TEXT NOT NULL,
    position             INTEGER NOT NULL,
    feature              TEXT NOT NULL,
    title                TEXT NOT NULL,
    domain               TEXT NOT NULL,
    complexity           TEXT NOT NULL,
    estimate_minutes     INTEGER NOT NULL,
    description          TEXT NOT NULL DEFAULT '',
    files                TEXT NOT NULL DEFAULT '[]',
    acceptance_criteria  TEXT NOT NULL DEFAULT '[]',
    batch_id             TEXT REFERENCES batches(id) ON DELETE CASCADE,
    state                TEXT NOT NULL CHECK (state IN ({_TASK_STATES})),
    attempts             INTEGER NOT NULL DEFAULT 0,
    model                TEXT,
    cost_nanousd         INTEGER NOT NULL DEFAULT 0,
    reason               TEXT,
    prompt               TEXT,
    verification         TEXT,
    updated_at           TEXT
);
CREATE INDEX tasks_run ON tasks(run_id, position);
CREATE INDEX tasks_batch ON tasks(batch_id);
CREATE TABLE task_deps (
    task_id     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    depends_on  TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on)
) WITHOUT ROWID;
CREATE TABLE attempts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id       TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    run_id         TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    number         INTEGER NOT NULL,
    worktree       TEXT,
    model          TEXT,
    started_at     TEXT NOT NULL,
    finished_at    TEXT,
    outcome        TEXT CHECK (outcome IS NULL OR outcome IN ({_OUTCOMES})),
    reason         TEXT,
    verification   TEXT,
    commit_sha     TEXT,
    checkpoint     BLOB,
    checkpoint_at  TEXT
);
CREATE INDEX attempts_batch ON attempts(batch_id, id);
-- AUTOINCREMENT: an event id is the subscribers' cursor, so it must never be reused, not even
-- after pruning deleted the newest rows.
CREATE TABLE events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        TEXT NOT NULL,
    run_id    TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    batch_id  TEXT,
    task_id   TEXT,
    type      TEXT NOT NULL,
    data      TEXT NOT NULL DEFAULT '{{}}'
);
CREATE TABLE api_calls (
    id                           INTEGER PRIMARY KEY AUTOINCREMENT,
    ts                           TEXT NOT NULL,
    run_id                       TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    batch_id                     TEXT,
    model                        TEXT NOT NULL,
    purpose                      TEXT NOT NULL DEFAULT 'batch',
    input_tokens                 INTEGER NOT NULL,
    output_tokens                INTEGER NOT NULL,
    cache_creation_input_tokens  INTEGER NOT NULL DEFAULT 0,
    cache_read_input_tokens      INTEGER NOT NULL DEFAULT 0,
    cost_nanousd                 INTEGER NOT NULL DEFAULT 0,
    latency_ms                   INTEGER NOT NULL DEFAULT 0,
    request_id                   TEXT,
    stop_reason                  TEXT
);
CREATE INDEX api_calls_run ON api_calls(run_id);
"""

# 2: hourly metric roll-ups and per-run usage totals (both survive pruning of the raw rows),
# back-filled from the calls already stored; indexes for the event cursor and for pruning.
_V2 = """
CREATE TABLE metrics_hourly (
    hour                         TEXT NOT NULL,  -- 'YYYY-MM-DDTHH' in UTC
    model                        TEXT NOT NULL,
    calls                        INTEGER NOT NULL DEFAULT 0,
    input_tokens                 INTEGER NOT NULL DEFAULT 0,
    output_tokens                INTEGER NOT NULL DEFAULT 0,
    cache_creation_input_tokens  INTEGER NOT NULL DEFAULT 0,
    cache_read_input_tokens      INTEGER NOT NULL DEFAULT 0,
    cost_nanousd                 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, model)
) WITHOUT ROWID;
INSERT INTO metrics_hourly
    SELECT substr(ts, 1, 13), model, count(*), sum(input_tokens), sum(output_tokens),
           sum(cache_creation_input_tokens), sum(cache_read_input_tokens), sum(cost_nanousd)
    FROM api_calls GROUP BY substr(ts, 1, 13), model;
ALTER TABLE runs ADD COLUMN calls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cache_read_input_tokens INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET
    calls = (SELECT count(*) FROM api_calls a WHERE a.run_id = runs.id),
    input_tokens = (SELECT coalesce(sum(input_tokens), 0) FROM api_calls a
                    WHERE a.run_id = runs.id),
    output_tokens = (SELECT coalesce(sum(output_tokens), 0) FROM api_calls a
                     WHERE a.run_id = runs.id),
    cache_creation_input_tokens = (SELECT coalesce(sum(cache_creation_input_tokens), 0)
                                   FROM api_calls a WHERE a.run_id = runs.id),
    cache_read_input_tokens = (SELECT coalesce(sum(cache_read_input_tokens), 0)
                               FROM api_calls a WHERE a.run_id = runs.id);
CREATE INDEX events_run ON events(run_id, id);
CREATE INDEX events_task ON events(task_id, id) WHERE task_id IS NOT NULL;
CREATE INDEX events_ts ON events(ts);
CREATE INDEX api_calls_ts ON api_calls(ts);
CREATE INDEX runs_state ON runs(state);
"""

# 3: the big texts leave the hot rows. SQLite rewrites a whole row, overflow pages included,
# on any UPDATE, and walks the overflow chain to read a column stored after a big one: with the
# spec and the plan (megabytes at 10,000 tasks) in `runs`, every cost update and every budget
# check of every batch cost time proportional to the run's size. They move to `run_specs`
# (written once), and the tasks' prompts and verification reports to `task_texts`, so a task's
# state change rewrites a small row. The run states gain 'planning' (Claude planning in the
# daemon, before the run has tasks), which a CHECK constraint can only learn by rebuilding the
# table (foreign keys are off during migrations, see migrate()).
_V3 = f"""
CREATE TABLE runs_v3 (
    id                           TEXT PRIMARY KEY,
    title                        TEXT NOT NULL,
    state                        TEXT NOT NULL CHECK (state IN ('planning',{_RUN_STATES})),
    spec_path                    TEXT,
    repo                         TEXT,
    branch                       TEXT,
    base_commit                  TEXT,
    options_json                 TEXT NOT NULL,
    created_at                   TEXT NOT NULL,
    started_at                   TEXT,
    finished_at                  TEXT,
    reason                       TEXT,
    cost_nanousd                 INTEGER NOT NULL DEFAULT 0,
    calls                        INTEGER NOT NULL DEFAULT 0,
    input_tokens                 INTEGER NOT NULL DEFAULT 0,
    output_tokens                INTEGER NOT NULL DEFAULT 0,
    cache_creation_input_tokens  INTEGER NOT NULL DEFAULT 0,
    cache_read_input_tokens      INTEGER NOT NULL DEFAULT 0
);
INSERT INTO runs_v3 (id, title, state, spec_path, repo, branch, base_commit, options_json,
                     created_at, started_at, finished_at, reason, cost_nanousd, calls,
                     input_tokens, output_tokens, cache_creation_input_tokens,
                     cache_read_input_tokens)
    SELECT id, title, state, spec_path, repo, branch, base_commit, options_json, created_at,
           started_at, finished_at, reason, cost_nanousd, calls, input_tokens, output_tokens,
           cache_creation_input_tokens, cache_read_input_tokens
    FROM runs;
CREATE TABLE run_specs (
    run_id     TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    spec_text  TEXT NOT NULL,
    plan_json  TEXT  -- NULL while the run is planning
);
INSERT INTO run_specs (run_id, spec_text, plan_json) SELECT id, spec_text, plan_json FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v3 RENAME TO runs;
CREATE INDEX runs_state ON runs(state);
CREATE TABLE task_texts (
    task_id       TEXT PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    prompt        TEXT,
    verification  TEXT
);
INSERT INTO task_texts (task_id, prompt, verification)
    SELECT id, prompt, verification FROM tasks
    WHERE prompt IS NOT NULL OR verification IS NOT NULL;
ALTER TABLE tasks DROP COLUMN prompt;
ALTER TABLE tasks DROP COLUMN verification;
"""

# 4: which backend made each call ("anthropic", "claude-code", ...; '' for older rows), so
# `brctl costs` can say when a figure is an API-equivalent cost rather than a bill.
_V4 = """
ALTER TABLE api_calls ADD COLUMN backend TEXT NOT NULL DEFAULT '';
"""

#: ``MIGRATIONS[i]`` takes a database from version ``i`` to version ``i + 1``.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
LATEST_VERSION = len(MIGRATIONS)


async def migrate(conn: aiosqlite.Connection, *, target: int = LATEST_VERSION) -> int:
    """Bring the database up to ``target``, one transaction per migration; return the version.

    Raises ``sqlite3.Error`` from the failing statement (the caller translates it); a database
    newer than ``target`` is left alone and its version returned, for the caller to refuse.

    Foreign keys are off while a migration runs (SQLite's documented way to rebuild a table
    that others reference; the pragma cannot change inside a transaction), and
    ``PRAGMA foreign_key_check`` must come back empty before the COMMIT.
    """
    version = await user_version(conn)
    if version >= target:
        return version
    rows = list(await conn.execute_fetchall("PRAGMA foreign_keys"))
    foreign_keys = bool(rows[0][0])
    await conn.execute("PRAGMA foreign_keys = OFF")
    try:
        while version < target:
            await _run_migration(conn, MIGRATIONS[version], version + 1)
            version = await user_version(conn)
    finally:
        if foreign_keys:
            await conn.execute("PRAGMA foreign_keys = ON")
    return version


async def _run_migration(conn: aiosqlite.Connection, script: str, version: int) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in split_statements(script):
            await conn.execute(statement)
        problems = list(await conn.execute_fetchall("PRAGMA foreign_key_check"))
        if problems:
            raise sqlite3.IntegrityError(
                f"migration {version} would break {len(problems)} foreign key(s), e.g. "
                f"{tuple(problems[0])}"
            )
        await conn.execute(f"PRAGMA user_version = {version}")
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, each complete (``sqlite3.complete_statement``), so
    that a semicolon inside a string or a comment does not split one."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if _has_sql(pending):
                statements.append(pending.strip())
            pending = ""
    if _has_sql(pending.rstrip(";")):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending!r}")
    return statements


def _has_sql(text: str) -> bool:
    lines = [line.split("--", 1)[0].strip() for line in text.splitlines()]
    return any(line and line != ";" for line in lines)


async def user_version(conn: aiosqlite.Connection) -> int:
    """The schema version stored in the file (0 for a new, empty database)."""
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])
