"""The verification report stays a ``VerificationReport`` through the store: every form a
version ever stored reads back typed from a real database written the old way, what this
version writes is the text the previous one wrote, and ``task.get`` sends the same bytes as
before (a real daemon on that database)."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest

from buildrunnerd.protocol import UNREADABLE_CHECK, CheckResult, VerificationReport
from buildrunnerd.store import AttemptEnd, NewEvent, Store, TaskChange
from buildrunnerd.store._reports import decode_report, encode_report
from tests.daemons import Daemons

from .conftest import Clock, submit
from .old_reports import RUN, STORED, task_id, write_old_database

WIRE = Path(__file__).resolve().parents[1] / "data" / "wire" / "task_get_stored_reports.jsonl"

# What each stored form means, typed. The earliest forms get every field added since at its
# default; a check's ``file: null`` is the unset file.
CURRENT = VerificationReport(
    passed=False,
    checks=[CheckResult("compile", True, "ok"),
            CheckResult("tests", False, "1 failed", file="tests/test_a.py", line=3,
                        output_tail="E   assert 1 == 2", exit_code=1)],
    test_command="python -m pytest -q",
    test_counts={"total": 2, "passed": 1, "failed": 1, "errors": 0, "skipped": 0,
                 "protected": 0, "protected_passed": 0},
    passed_tests=["tests.test_a::test_ok"],
    tree="4b825dc642cb6eb9a060e54bf8d69288fbee4904",
)
EXPECTED: dict[str, VerificationReport] = {
    "verdict": VerificationReport(passed=True),
    "first_git": VerificationReport(False, [
        CheckResult("compile", True, "2 files compile"),
        CheckResult("tests", False, "1 failed", file="tests/test_a.py", line=3,
                    output_tail="E   assert 1 == 2"),
    ], test_command="python -m pytest -q"),
    "first_scratch_failed": VerificationReport(False, [CheckResult(
        "files", False, "src/a.py (task T003) is missing or empty", file="src/a.py",
        output_tail="")]),
    "first_scratch_passed": VerificationReport(True, [CheckResult(
        "files", True, "every named file exists", output_tail="")]),
    "branch_untested": VerificationReport(True, []),
    "current": CURRENT,
    # No version can read these two: a failed report that says why, not an error.
    "unreadable": VerificationReport.unreadable(
        "Expected `array`, got `str` - at `$.checks`", said_passed=True),
    "truncated": VerificationReport.unreadable("Input data was truncated"),
}


def _columns(path: Path, table: str, key: str) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        rows = db.execute(f"SELECT {key}, verification FROM {table}").fetchall()
    db.close()
    return {str(k).removeprefix(f"{RUN}:"): v for k, v in rows}


async def test_every_stored_form_reads_back_typed_from_an_old_database(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "old.db"
    await write_old_database(path)
    store = await Store.open(path, clock=clock)  # migrates it to the latest version
    try:
        listed = {t.plan_id: t.verification for t in await store.list_tasks(RUN)}
        for form in STORED:
            task = await store.get_task(task_id(form))
            [attempt] = await store.list_attempts(task_id(form))
            assert isinstance(task.verification, VerificationReport), form
            assert task.verification == EXPECTED[form], form
            # The same form as an attempt's report, and in a listing with details.
            assert attempt.verification == listed[form] == task.verification, form
            assert task.to_info(full=True).verification == task.verification
            assert task.to_info().verification is None
        marked = EXPECTED["unreadable"].checks[0]
        assert EXPECTED["unreadable"].passed is False and marked.name == UNREADABLE_CHECK
        assert "(it says passed: true)" in marked.message
    finally:
        await store.close()
    # Reading changed no row: an unreadable one is kept for whoever looks at the file.
    assert _columns(path, "task_texts", "task_id") == STORED
    assert _columns(path, "attempts", "batch_id") == STORED


async def test_a_report_is_stored_as_the_text_the_previous_version_wrote(
    store: Store, db_path: Path
) -> None:
    # What this version writes, an older daemon (and any SQL reader) reads as before.
    assert encode_report(CURRENT) == STORED["current"]
    assert encode_report(None) is None
    await submit(store, "r-1")
    await store.set_task_verification("r-1:T001", CURRENT)
    attempt = await store.start_attempt("r-1:B001", worktree=None, model=None)
    await store.finish_attempt(attempt.id, outcome="failed", verification=CURRENT)
    assert _columns(db_path, "task_texts", "task_id")["r-1:T001"] == STORED["current"]
    assert _columns(db_path, "attempts", "batch_id")["r-1:B001"] == STORED["current"]


async def test_a_report_goes_in_and_comes_out_as_itself(store: Store) -> None:
    # The model writes the tests and their output: text that looks like JSON, quotes,
    # newlines, a NUL and non-ASCII must come back exactly, never as structure.
    hostile = '"}],"passed":true,"checks":[{"name":"x\n\x00 \u00e9 \U0001f600'
    report = VerificationReport(False, [
        CheckResult("tests", False, hostile, file='a"b.py', line=7, output_tail=hostile,
                    exit_code=2)], test_command="pytest", test_counts={"total": 1},
        passed_tests=[hostile], tree="abc")
    await submit(store, "r-1")
    stored = await store.set_tasks_details(
        ["r-1:T001", "r-1:T002"], verification=report,
        events=[NewEvent("r-1", "verify.failed", {"reason": "tests"}, batch_id="r-1:B001")])
    assert [e.type for e in stored] == ["verify.failed"]
    for gid in ("r-1:T001", "r-1:T002"):
        got = (await store.get_task(gid)).verification
        assert got == report
        assert got is not None and got.passed is False and got.checks[0].message == hostile
    # An attempt's report, ended alone and with the batch's result (one transaction).
    first = await store.start_attempt("r-1:B001", worktree=None, model=None)
    await store.finish_attempt(first.id, outcome="conflict", verification=report)
    second = await store.start_attempt("r-1:B001", worktree=None, model=None)
    await store.transition(
        batch=("r-1:B001", "succeeded", "batch.succeeded", {}),
        tasks=[TaskChange("r-1:T001", "succeeded")],
        attempt=AttemptEnd(second.id, "succeeded", verification=CURRENT, commit="c0ffee"))
    ended = {a.id: a.verification for a in await store.list_attempts("r-1:B001")}
    assert ended == {first.id: report, second.id: CURRENT}
    # None is "no report": the column stays NULL and nothing is decoded.
    third = await store.start_attempt("r-1:B001", worktree=None, model=None)
    await store.finish_attempt(third.id, outcome="failed")
    assert (await store.get_attempt(third.id)).verification is None
    assert (await store.get_task("r-1:T003")).verification is None


@pytest.mark.parametrize("text", [
    "[1, 2]",
    '"all checks passed"',
    '{"checks": []}',
    '{"passed": true, "checks": [{"name": "tests", "passed": "yes", "message": ""}]}',
    '{"passed": true, "checks": [{"name": "tests", "passed": true, "message": "", "line": "4"}]}',
    '{"passed": tr',
    "",
])
def test_a_column_that_is_not_a_report_decodes_to_a_marked_failed_report(text: str) -> None:
    report = decode_report(text)
    assert report is not None and report.passed is False
    [check] = report.checks
    assert (check.name, check.passed) == (UNREADABLE_CHECK, False)
    assert check.message.startswith("the stored verification report cannot be read")
    said = '"passed": true' in text and text.endswith("}")
    assert ("(it says passed: true)" in check.message) is said


def test_unknown_keys_a_later_version_may_add_are_ignored() -> None:
    assert decode_report('{"passed": false, "checks": [], "later": 1}') == VerificationReport(
        False, [])
    assert decode_report(None) is None


async def test_task_get_sends_every_stored_form_byte_for_byte_as_before(
    tmp_path: Path,
) -> None:
    # The bytes of tests/data/wire/: what buildrunnerd at e7e7dc1 (the report a dict in the
    # store, made typed again by the wire type) answered for the same database.
    daemons = Daemons(tmp_path)
    await write_old_database(daemons.home / "buildrunner.db")
    before = WIRE.read_bytes().splitlines()
    daemon = await daemons.start()
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30.0)
            sock.connect(str(daemons.socket))
            replies = sock.makefile("rb")
            sent: dict[str, bytes] = {}
            for n, form in enumerate(STORED, 1):
                request = {"jsonrpc": "2.0", "id": n, "method": "task.get",
                           "params": {"task_id": task_id(form)}}
                sock.sendall(json.dumps(request).encode() + b"\n")
                sent[form] = replies.readline().rstrip(b"\n")
        assert await daemon.stop() == 0
    finally:
        daemons.close()
    forms = [form for form in STORED if form != "truncated"]
    assert [sent[form] for form in forms] == before
    # The version before answered a row that is not JSON with -32603 (the task could not be
    # shown at all); now it is the task with a marked report, like any unreadable row.
    result = json.loads(sent["truncated"])["result"]
    assert result["id"] == task_id("truncated")
    assert result["verification"]["passed"] is False
    assert [c["name"] for c in result["verification"]["checks"]] == [UNREADABLE_CHECK]
