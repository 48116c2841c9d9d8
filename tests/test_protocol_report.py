"""The verification report (``buildrunnerd.protocol``): what a fix-up round and the task's
failure reason are made of, and the plain data the store and events keep."""

from __future__ import annotations

from buildrunnerd.protocol import CheckResult, VerificationReport


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
