"""A database written the old way, holding the verification report in every form a version
of buildrunnerd ever stored, for the tests that read them back (the store's records, and
``task.get`` through a real daemon).

The forms, from ``git log`` of the code that wrote them:

- ``verdict``: the verdict alone (``{"passed": ...}``), what the earliest rows hold;
- ``first_git``: the first version's ``VerificationReport.to_dict()`` (``passed``, ``checks``
  without ``exit_code``, ``test_command``; 45ee986);
- ``first_scratch_failed``, ``first_scratch_passed``: the first version's scratch check, a
  dict made by hand with ``file``/``line`` null and ``output_tail`` empty, no
  ``test_command`` (45ee986);
- ``branch_untested``: the run branch's check when there was nothing to test
  (``{"passed": true, "checks": [], "test_command": null}``; bf5ba6f);
- ``current``: ``to_dict()`` since the report gained ``exit_code``, ``test_counts``,
  ``passed_tests`` and ``tree`` (0485e1a), which is what this version writes;
- ``unreadable``: a row no version can read (``checks`` a string), and ``truncated``: a row
  that is not JSON at all (a file damaged on disk).

The first four are written at schema version 1 (``tasks.verification``), the others at
version 3 (``task_texts``), each also as the report of an attempt. Timestamps are fixed, so
what a reader makes of the file is the same bytes every time.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from buildrunnerd.store._migrations import migrate

__all__ = ["RUN", "STORED", "V1_FORMS", "V3_FORMS", "write_old_database"]

RUN = "r-0ld00001"
_TS = "2026-11-30T09:00:00.000Z"

#: The text of the ``verification`` column, per form, as the version that wrote it stored it.
STORED: dict[str, str] = {
    "verdict": '{"passed":true}',
    "first_git": (
        '{"passed":false,"checks":[{"name":"compile","passed":true,"message":"2 files'
        ' compile"},{"name":"tests","passed":false,"message":"1 failed","file":'
        '"tests/test_a.py","line":3,"output_tail":"E   assert 1 == 2"}],'
        '"test_command":"python -m pytest -q"}'
    ),
    "first_scratch_failed": (
        '{"passed":false,"checks":[{"name":"files","passed":false,"file":"src/a.py",'
        '"line":null,"message":"src/a.py (task T003) is missing or empty","output_tail":""}]}'
    ),
    "first_scratch_passed": (
        '{"passed":true,"checks":[{"name":"files","passed":true,"message":"every named file'
        ' exists","file":null,"line":null,"output_tail":""}]}'
    ),
    "branch_untested": '{"passed":true,"checks":[],"test_command":null}',
    "current": (
        '{"passed":false,"checks":[{"name":"compile","passed":true,"message":"ok"},'
        '{"name":"tests","passed":false,"message":"1 failed","file":"tests/test_a.py",'
        '"line":3,"output_tail":"E   assert 1 == 2","exit_code":1}],'
        '"test_command":"python -m pytest -q","test_counts":{"total":2,"passed":1,'
        '"failed":1,"errors":0,"skipped":0,"protected":0,"protected_passed":0},'
        '"passed_tests":["tests.test_a::test_ok"],'
        '"tree":"4b825dc642cb6eb9a060e54bf8d69288fbee4904"}'
    ),
    "unreadable": '{"passed":true,"checks":"all of them"}',
    "truncated": '{"passed":true,"checks":[{"name":"tes',
}
V1_FORMS = ("verdict", "first_git", "first_scratch_failed", "first_scratch_passed")
V3_FORMS = ("branch_untested", "current", "unreadable", "truncated")


def task_id(form: str) -> str:
    """The task (and batch) that holds ``form``: ``r-0ld00001:<form>``."""
    return f"{RUN}:{form}"


async def write_old_database(path: Path) -> None:
    """A database at schema version 3 with one finished run, one batch and one task per form,
    each with an attempt whose report is that form too. The store (or a daemon) opening it
    migrates it to the latest version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, target=1) == 1
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO runs (id, title, state, spec_text, plan_json, options_json,"
            " created_at, started_at, finished_at) VALUES (?, 'Old reports', 'succeeded',"
            " '# Old reports', '{}', '{}', ?, ?, ?)", (RUN, _TS, _TS, _TS))
        for position, form in enumerate(STORED):
            gid = task_id(form)
            db.execute(
                "INSERT INTO batches (id, run_id, plan_id, position, task_ids, domain,"
                " estimate_minutes, priority_minutes, prompt_tokens, state, attempts,"
                " started_at, finished_at) VALUES (?, ?, ?, ?, ?, 'backend', 30, 30, 10,"
                " 'succeeded', 1, ?, ?)",
                (gid, RUN, form, position, f'["{gid}"]', _TS, _TS))
            db.execute(
                "INSERT INTO tasks (id, run_id, plan_id, position, feature, title, domain,"
                " complexity, estimate_minutes, batch_id, state, attempts, prompt,"
                " verification, updated_at) VALUES (?, ?, ?, ?, 'core', ?, 'backend',"
                " 'simple', 30, ?, 'succeeded', 1, 'the prompt', ?, ?)",
                (gid, RUN, form, position, f"task with the {form} report", gid,
                 STORED[form] if form in V1_FORMS else None, _TS))
            db.execute(
                "INSERT INTO events (ts, run_id, batch_id, task_id, type, data) VALUES"
                " (?, ?, ?, ?, 'task.state_changed',"
                " '{\"from\":\"verifying\",\"to\":\"succeeded\",\"reason\":null}')",
                (_TS, RUN, gid, gid))
            if form in V1_FORMS:
                _attempt(db, gid, form)
    db.close()
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, target=3) == 3
    with sqlite3.connect(path) as db:
        for form in V3_FORMS:
            db.execute("INSERT INTO task_texts (task_id, verification) VALUES (?, ?)"
                       " ON CONFLICT (task_id) DO UPDATE SET verification = excluded.verification",
                       (task_id(form), STORED[form]))
            _attempt(db, task_id(form), form)
    db.close()


def _attempt(db: sqlite3.Connection, gid: str, form: str) -> None:
    db.execute(
        "INSERT INTO attempts (batch_id, run_id, number, worktree, model, started_at,"
        " finished_at, outcome, verification, commit_sha) VALUES (?, ?, 1, NULL, NULL, ?, ?,"
        " 'succeeded', ?, NULL)", (gid, RUN, _TS, _TS, STORED[form]))
