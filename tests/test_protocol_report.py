"""The verification report (``buildrunnerd.protocol``): what a fix-up round and the task's
failure reason are made of, and the plain data the store and events keep."""

from __future__ import annotations

import json

import msgspec
import pytest

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
    import msgspec

    report = failing(CheckResult("secrets", False, "key", file="c.py", line=2))
    data = report.to_dict()
    assert data["checks"][1] == {"name": "secrets", "passed": False, "message": "key",
                                 "file": "c.py", "line": 2}
    assert msgspec.convert(data, VerificationReport) == report


def test_a_stored_report_reads_back_typed_also_from_an_older_version() -> None:
    report = failing(CheckResult("tests", False, "1 failed", exit_code=1, output_tail="E"))
    assert VerificationReport.from_stored(report.to_dict()) == report
    # An early version kept the verdict alone; unknown keys (a later version's) are ignored.
    assert VerificationReport.from_stored({"passed": True}) == VerificationReport(True)
    assert VerificationReport.from_stored(
        {"passed": False, "checks": [], "later": 1}) == VerificationReport(False, [])


@pytest.mark.parametrize("stored", [
    [1, 2],
    "all checks passed",
    {"checks": []},
    {"passed": True, "checks": [{"name": "tests", "passed": "yes", "message": ""}]},
    {"passed": True, "checks": [{"name": "tests", "passed": True, "message": "", "line": "4"}]},
])
def test_a_stored_report_that_does_not_decode_is_a_marked_failed_report(stored: object) -> None:
    report = VerificationReport.from_stored(stored)
    assert report.passed is False
    [check] = report.checks
    assert (check.name, check.passed) == (UNREADABLE_CHECK, False)
    assert check.message.startswith("the stored verification report cannot be read")
    if isinstance(stored, dict) and stored.get("passed") is True:
        assert "(it says passed: true)" in check.message
    with pytest.raises(msgspec.ValidationError) as why:  # what is wrong, and where
        msgspec.convert(stored, VerificationReport)
    assert str(why.value) in check.message


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
