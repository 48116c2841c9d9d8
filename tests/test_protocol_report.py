"""The verification report (``buildrunnerd.protocol``): what a fix-up round and the task's
failure reason are made of, its plain data, and what stands for a stored one that cannot be
read (how the store reads it back: tests/store/test_stored_reports.py)."""

from __future__ import annotations

import json

import msgspec

from buildrunnerd.protocol import UNREADABLE_CHECK, CheckResult, TaskInfo, VerificationReport
from buildrunnerd.rpc._codec import encode


def failing(*checks: CheckResult) -> VerificationReport:
    return VerificationReport(passed=False, checks=[CheckResult("compile", True, "ok"),
                                                    *checks])


def test_first_failure_names_the_check_where_and_what() -> None:
    report = failing(CheckResult("tests", False, "2 failed", file="t.py", line=4),
                     CheckResult("stubs", False, "TODO left", file="a.py"))
    assert report.first_failure() == "tests failed at t.py:4: 2 failed"
    assert failing(CheckResult("stubs", False, "", file="a.py")).first_failure() == (
        "stubs failed at a.py: failed")
    assert VerificationReport(passed=True, checks=[]).first_failure() == "verification failed"


def test_the_signature_ignores_output_tails_but_not_the_failures() -> None:
    before = failing(CheckResult("tests", False, "1 failed", output_tail="took 0.31 s"))
    same = failing(CheckResult("tests", False, "1 failed", output_tail="took 0.29 s"))
    moved = failing(CheckResult("tests", False, "1 failed", file="t.py", line=9))
    assert before.failure_signature() == same.failure_signature()
    assert before.failure_signature() != moved.failure_signature()


def test_with_tails_keeps_the_end_of_each_output_and_nothing_else_changes() -> None:
    report = failing(CheckResult("tests", False, "boom", output_tail="a" * 10 + "END"))
    cut = report.with_tails(5)
    assert [c.output_tail for c in cut.checks] == ["", "aaEND"]
    assert [c.message for c in cut.checks] == [c.message for c in report.checks]
    assert report.checks[1].output_tail == "a" * 10 + "END"  # the original is untouched


def test_to_dict_is_plain_data_that_decodes_back() -> None:
    report = failing(CheckResult("secrets", False, "key", file="c.py", line=2))
    data = report.to_dict()
    assert data["checks"][1] == {"name": "secrets", "passed": False, "message": "key",
                                 "file": "c.py", "line": 2}
    assert msgspec.convert(data, VerificationReport) == report


def test_an_unreadable_report_is_failed_and_says_why_and_what_the_row_said() -> None:
    report = VerificationReport.unreadable("Expected `array`, got `str`", said_passed=True)
    assert report.passed is False and report.first_failure().startswith("report failed: ")
    [check] = report.checks
    assert (check.name, check.passed) == (UNREADABLE_CHECK, False)
    assert check.message.startswith(
        "the stored verification report cannot be read (it says passed: true): Expected "
        "`array`, got `str`; ")
    assert "(it says" not in VerificationReport.unreadable("not JSON").checks[0].message


def test_task_get_sends_the_report_in_its_documented_shape() -> None:
    # docs/protocol.md: ``passed``, ``checks: [{name, passed, message, file?, line?,
    # output_tail?}]`` with unset keys left out; the rest of the report as the store keeps it.
    report = failing(CheckResult("tests", False, "1 failed", file="t.py", line=4))
    info = TaskInfo(id="r-1:T1", run_id="r-1", title="t", state="failed", verification=report)
    sent = json.loads(encode(info))["verification"]
    assert sent == report.to_dict()
    assert sent["checks"] == [{"name": "compile", "passed": True, "message": "ok"},
                              {"name": "tests", "passed": False, "message": "1 failed",
                               "file": "t.py", "line": 4}]
