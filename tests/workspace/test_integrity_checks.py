"""The integrity checks of verification on real worktrees over a seeded project: each cheat of
issue 10 fails the check that is meant to catch it, and honest work passes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.workspace import RunRepo, VerificationReport, prepare_run_repo, verify
from buildrunnerd.workspace._report import (
    ReportError,
    mentions_pytest,
    parse_junit,
    read_report,
)
from tests.projectenv import give_project_env

from ._helpers import run_git, task

CALC = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
TESTS = (
    "from calc import add, mul\n\n\n"
    "def test_add():\n    assert add(1, 2) == 3\n    assert add(0, 0) == 0\n\n\n"
    "def test_mul():\n    assert mul(2, 3) == 6\n\n\n"
    "class TestMore:\n    def test_mixed(self):\n        assert add(mul(2, 2), 1) == 5\n"
)
SPEC = "# Calc\n\nTest command: `pytest -q`\n"


def seed(repo: Path) -> None:
    (repo / "calc.py").write_text(CALC)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_calc.py").write_text(TESTS)
    (repo / "conftest.py").write_text("# the project's root conftest\n")
    (repo / "pytest.ini").write_text("[pytest]\naddopts = -ra\n")
    (repo / "SPEC.md").write_text(SPEC)
    (repo / "package.json").write_text('{"name": "x", "scripts": {"test": "jest"}}\n')
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "seed tests")


@pytest.fixture
async def seeded(repo: Path, project_env_root: Path) -> RunRepo:
    seed(repo)
    give_project_env(repo, project_env_root)
    return await prepare_run_repo(repo, "r1")


@pytest.fixture
async def wt(seeded: RunRepo, wt_root: Path) -> Path:
    return await seeded.add_worktree(wt_root, "b1")


def failures(report: VerificationReport, name: str) -> list[str]:
    return [c.message for c in report.checks if c.name == name and not c.passed]


def notes(report: VerificationReport, name: str) -> list[str]:
    return [c.message for c in report.checks if c.name == name]


async def check(wt: Path, *files: str, **kwargs: object) -> VerificationReport:
    tasks = [task("T1", *files, title="extend calc")] if files else []
    return await verify(wt, tasks, **kwargs)  # type: ignore[arg-type]


async def test_honest_work_passes_with_counts(wt: Path) -> None:
    (wt / "calc.py").write_text(CALC + "\n\ndef sub(a, b):\n    return a - b\n")
    (wt / "tests" / "test_sub.py").write_text(
        "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n")
    report = await check(wt, "calc.py", "tests/test_sub.py")
    assert report.passed, report.summary()
    assert report.test_counts is not None
    assert report.test_counts["passed"] == 4 and report.test_counts["protected"] == 3
    assert report.test_counts["protected_passed"] == 3
    assert "tests.test_calc::test_add" in report.passed_tests


async def test_asserts_rewritten_to_assert_true(wt: Path) -> None:
    (wt / "calc.py").write_text("def add(a, b):\n    return 0\n\n\ndef mul(a, b):\n    return 0\n")
    (wt / "tests" / "test_calc.py").write_text(
        TESTS.replace("assert add(1, 2) == 3\n    assert add(0, 0) == 0", "assert True")
        .replace("assert mul(2, 3) == 6", "assert add(1, 1) == add(1, 1)"))
    report = await check(wt, "calc.py")
    problems = failures(report, "protected")
    assert any("test_add was weakened" in p and "always true" in p for p in problems), problems
    assert any("test_mul was weakened" in p for p in problems), problems
    assert not report.passed


async def test_asserts_swallowed_or_dead(wt: Path) -> None:
    (wt / "tests" / "test_calc.py").write_text(
        TESTS.replace("    assert add(1, 2) == 3\n",
                      "    try:\n        assert add(1, 2) == 3\n    except AssertionError:\n"
                      "        pass\n")
        .replace("    assert mul(2, 3) == 6\n", "    return\n    assert mul(2, 3) == 6\n"))
    (wt / "calc.py").write_text(CALC + "\nX = 1\n")
    report = await check(wt, "calc.py")
    problems = " ".join(failures(report, "protected"))
    assert "test_add was weakened" in problems and "swallowed" in problems
    assert "test_mul was weakened" in problems and "returns before" in problems


async def test_module_level_skip(wt: Path) -> None:
    (wt / "tests" / "test_calc.py").write_text(
        "import pytest\npytest.skip('later', allow_module_level=True)\n" + TESTS)
    (wt / "calc.py").write_text("def add(a, b):\n    return 0\n")
    report = await check(wt, "calc.py")
    assert any("skips" in p for p in failures(report, "protected"))
    # The report check holds on its own too: the protected tests were skipped or never ran.
    tests = " ".join(failures(report, "tests"))
    assert "no tests ran" in tests or "was skipped" in tests, tests


async def test_skip_decorator_and_pytestmark(wt: Path) -> None:
    (wt / "tests" / "test_calc.py").write_text(
        "import pytest\n" + TESTS.replace("def test_add", "@pytest.mark.skip\ndef test_add")
        .replace("class TestMore:", "class TestMore:\n    pytestmark = pytest.mark.xfail"))
    (wt / "calc.py").write_text(CALC + "\nX = 1\n")
    report = await check(wt, "calc.py")
    problems = " ".join(failures(report, "protected"))
    assert "test_add was weakened" in problems and "skipped" in problems
    assert "protected test tests/test_calc.py::test_add was skipped" in " ".join(
        failures(report, "tests"))


async def test_conftest_that_skips_everything(wt: Path) -> None:
    (wt / "tests" / "conftest.py").write_text(
        "import pytest\n\n\ndef pytest_collection_modifyitems(items):\n"
        "    for item in items:\n        item.add_marker(pytest.mark.skip(reason='x'))\n")
    (wt / "calc.py").write_text(CALC.replace("a + b", "0"))
    report = await check(wt, "calc.py")
    assert any("pytest_collection_modifyitems" in p for p in failures(report, "protected"))
    assert any("was skipped" in p for p in failures(report, "tests"))


async def test_conftest_that_exits_zero(wt: Path) -> None:
    (wt / "conftest.py").write_text("import os\nos._exit(0)\n")
    (wt / "calc.py").write_text("def add(a, b):\n    return 0\n")
    report = await check(wt, "calc.py")
    assert any("ends the process" in p for p in failures(report, "protected"))
    assert any("wrote no test report (exit 0)" in p for p in failures(report, "tests"))


async def test_conftest_forcing_exit_status_zero(wt: Path) -> None:
    (wt / "conftest.py").write_text(
        "def pytest_sessionfinish(session, exitstatus):\n    session.exitstatus = 0\n")
    (wt / "calc.py").write_text("def add(a, b):\n    return 0\n\n\ndef mul(a, b):\n    return 0\n")
    report = await check(wt, "calc.py")
    assert any("pytest_sessionfinish" in p for p in failures(report, "protected"))
    assert any("although the command exited 0" in p for p in failures(report, "tests"))


@pytest.mark.parametrize("addopts", ["--collect-only", "-k nothing", "--co",
                                     "--deselect tests/test_calc.py::test_add"])
async def test_addopts_that_run_nothing(wt: Path, addopts: str) -> None:
    (wt / "pytest.ini").write_text(f"[pytest]\naddopts = -ra {addopts}\n")
    (wt / "calc.py").write_text("def add(a, b):\n    return 0\n")
    report = await check(wt, "calc.py")
    assert any("run fewer tests or none" in p for p in failures(report, "protected"))
    tests = " ".join(failures(report, "tests"))
    assert "no tests ran" in tests or "did not run" in tests or "failed" in tests, tests


async def test_pyproject_pytest_section_added(wt: Path) -> None:
    (wt / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-k nothing'\n")
    report = await check(wt, "calc.py")
    assert any("pyproject.toml adds pytest options" in p for p in failures(report, "protected"))


async def test_fake_pytest_module_in_the_worktree_is_not_run(wt: Path, repo: Path,
                                                              project_env_root: Path) -> None:
    (wt / "pytest.py").write_text("print('12 passed')\n")
    (wt / "calc.py").write_text("def add(a, b):\n    return 0\n\n\ndef mul(a, b):\n    return 0\n")
    report = await check(wt, "calc.py")
    [first, *_] = [c for c in report.checks if c.name == "tests"]
    assert not first.passed and "12 passed" not in (first.output_tail or "")
    assert "assert 0 == 3" in (first.output_tail or "")
    # A configured `python -m pytest` cannot be shadowed either (PYTHONSAFEPATH).
    python = give_project_env(repo, project_env_root)
    report = await check(wt, "calc.py", test_cmd=f"{python} -m pytest -q")
    [first, *_] = [c for c in report.checks if c.name == "tests"]
    assert not first.passed and "assert 0 == 3" in (first.output_tail or ""), first


async def test_deleted_tests(wt: Path) -> None:
    (wt / "tests" / "test_calc.py").unlink()
    (wt / "calc.py").write_text(CALC + "\nX = 1\n")
    report = await check(wt, "calc.py")
    assert any("tests/test_calc.py was deleted" in p for p in failures(report, "protected"))


async def test_removed_test_function(wt: Path) -> None:
    (wt / "tests" / "test_calc.py").write_text(TESTS.split("\n\ndef test_mul")[0] + "\n")
    (wt / "calc.py").write_text(CALC + "\nX = 1\n")
    report = await check(wt, "calc.py")
    assert any("test_mul was removed" in p for p in failures(report, "protected"))


async def test_tests_merged_by_the_run_are_protected(seeded: RunRepo, repo: Path,
                                                    wt_root: Path) -> None:
    # A test task of the run merged tests/test_extra.py; a later batch may not drop it.
    first = await seeded.add_worktree(wt_root, "tests-task")
    (first / "tests" / "test_extra.py").write_text(
        "from calc import add\n\n\ndef test_extra():\n    assert add(2, 2) == 4\n")
    assert (await seeded.commit_and_merge(first, "tests")).merged
    later = await seeded.add_worktree(wt_root, "later")
    (later / "tests" / "test_extra.py").write_text("def test_extra():\n    assert True\n")
    (later / "calc.py").write_text(CALC + "\nX = 1\n")
    report = await check(later, "calc.py")
    assert any("tests/test_extra.py::test_extra was weakened" in p
               for p in failures(report, "protected"))


async def test_a_task_that_names_the_test_file_may_change_it(wt: Path) -> None:
    (wt / "tests" / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n")
    report = await check(wt, "tests/test_calc.py")
    assert report.passed, report.summary()


async def test_target_hidden_by_gitignore(wt: Path) -> None:
    (wt / ".gitignore").write_text("secret_target.py\n")
    (wt / "secret_target.py").write_text("VALUE = 1\n")
    report = await check(wt, "secret_target.py")
    [problem] = failures(report, "files")
    assert "ignored by git" in problem


async def test_target_that_is_a_symlink(wt: Path) -> None:
    (wt / "target.py").symlink_to("/etc/hostname")
    report = await check(wt, "target.py")
    assert any("symbolic link" in p for p in failures(report, "files"))


async def test_target_holding_one_newline(wt: Path) -> None:
    (wt / "target.py").write_text("\n")
    report = await check(wt, "target.py")
    assert any("holds only whitespace" in p for p in failures(report, "files"))


async def test_claim_of_done_on_an_existing_file(wt: Path) -> None:
    report = await check(wt, "calc.py")
    assert any(p.startswith("no change made") for p in failures(report, "files"))


async def test_stub_bodies(wt: Path) -> None:
    (wt / "geometry.py").write_text(
        '"""Shapes."""\n\n\ndef area(w, h):\n    """The area."""\n    pass\n\n\n'
        "def perimeter(w, h):\n    raise NotImplementedError\n\n\n"
        "class Shape:\n    def draw(self):\n        ...\n\n\n"
        "def fine(w):\n    return w\n")
    report = await check(wt, "geometry.py")
    problems = " ".join(failures(report, "stubs"))
    assert "area is a stub" in problems and "perimeter is a stub" in problems
    assert "Shape.draw is a stub" in problems and "fine" not in problems


async def test_abstract_methods_and_protocols_are_not_stubs(wt: Path) -> None:
    (wt / "iface.py").write_text(
        "import abc\nfrom typing import Protocol\n\n\nclass Store(Protocol):\n"
        "    def get(self) -> int: ...\n\n\nclass Base(abc.ABC):\n    @abc.abstractmethod\n"
        "    def run(self) -> None:\n        raise NotImplementedError\n")
    report = await check(wt, "iface.py")
    assert not failures(report, "stubs"), report.summary()


async def test_todo_placeholders_and_tests_without_asserts(wt: Path) -> None:
    (wt / "feature.py").write_text("def go():\n    # TODO: the real thing\n    return 1\n")
    (wt / "tests" / "test_feature.py").write_text(
        "from feature import go\n\n\ndef test_go():\n    go()\n")
    (wt / "web.js").write_text("function go() {\n  // FIXME later\n"
                               "  throw new Error('not implemented');\n}\n")
    report = await check(wt, "feature.py", "tests/test_feature.py", "web.js")
    problems = " ".join(failures(report, "stubs"))
    assert "feature.py:2: a TODO/FIXME placeholder" in problems
    assert "test test_go asserts nothing" in problems
    assert "web.js:2" in problems and "web.js:3: a not-implemented" in problems


async def test_function_lost_to_a_cut_off_answer(wt: Path) -> None:
    (wt / "app").mkdir()
    (wt / "app" / "__init__.py").write_text("")
    (wt / "app" / "db.py").write_text("def connect():\n    return 1\n")  # get_user was lost
    (wt / "app" / "api.py").write_text(
        "from app.db import connect, get_user\nfrom app import models\n\n\n"
        "def handler():\n    return get_user(connect())\n")
    report = await check(wt, "app/db.py", "app/api.py")
    problems = " ".join(failures(report, "stubs"))
    assert "imports get_user from app.db (app/db.py), which does not define it" in problems
    assert "imports models from app (app/__init__.py), which does not define it" in problems
    (wt / "app" / "api.py").write_text("import app.missing\n")
    report = await check(wt, "app/db.py", "app/api.py")
    assert "imports app.missing, which does not exist" in " ".join(failures(report, "stubs"))


async def test_stubs_can_be_switched_off(wt: Path) -> None:
    (wt / "geometry.py").write_text("def area(w, h):\n    pass\n")
    report = await check(wt, "geometry.py", config=VerifyConfig(stubs="off"))
    assert report.passed, report.summary()
    report = await check(wt, "geometry.py", config=VerifyConfig(stubs="warn"))
    assert report.passed and any("area is a stub" in n for n in notes(report, "stubs"))


async def test_scope_spec_ci_and_other_batches(wt: Path) -> None:
    (wt / "calc.py").write_text(CALC + "\nX = 1\n")
    (wt / "SPEC.md").write_text(SPEC.replace("pytest -q", "true"))
    (wt / ".github" / "workflows").mkdir(parents=True)
    (wt / ".github" / "workflows" / "ci.yml").write_text("on: push\n")
    (wt / "other.py").write_text("OTHER = 1\n")
    (wt / "notes.txt").write_text("a note\n")
    report = await check(wt, "calc.py", spec_path="SPEC.md", other_files={"other.py"})
    problems = " ".join(failures(report, "scope"))
    assert "SPEC.md was changed, but it is the run's spec" in problems
    assert ".github/workflows/ci.yml was changed, but it is CI configuration" in problems
    assert "other.py was changed, but a task of another batch names it" in problems
    assert any("outside the batch's files: notes.txt" in n for n in notes(report, "scope"))
    report = await check(wt, "calc.py", spec_path="SPEC.md", other_files={"other.py"},
                         config=VerifyConfig(scope="warn"))
    assert not failures(report, "scope")
    assert any("it is the run's spec" in n for n in notes(report, "scope"))


async def test_js_test_settings_are_protected(wt: Path) -> None:
    (wt / "package.json").write_text('{"name": "x", "scripts": {"test": "true"}}\n')
    (wt / "jest.config.js").write_text("module.exports = {testMatch: []};\n")
    report = await check(wt, "calc.py")
    problems = " ".join(failures(report, "protected"))
    assert "package.json changes the test settings scripts.test" in problems
    assert "jest.config.js was added" in problems


def test_junit_reports_are_parsed_strictly() -> None:
    report = parse_junit(
        b'<?xml version="1.0"?><testsuites><testsuite><testcase classname="t.a" name="x"/>'
        b'<testcase classname="t.a" name="y[1]"><skipped/></testcase>'
        b'<testcase classname="t.a" name="z"><failure/></testcase></testsuite></testsuites>')
    counts = report.counts()
    assert (counts.total, counts.passed, counts.skipped, counts.failed) == (3, 1, 1, 1)
    with pytest.raises(ReportError, match="DOCTYPE"):
        parse_junit(b'<!DOCTYPE x [<!ENTITY a "b">]><testsuites/>')
    with pytest.raises(ReportError, match="not valid XML"):
        parse_junit(b"<testsuites>")


async def test_a_report_replaced_by_a_fifo_or_symlink_is_missing(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.xml"
    os.mkfifo(fifo)
    link = tmp_path / "link.xml"
    link.symlink_to("/etc/hostname")
    for path in (fifo, link):
        report, why = await read_report(path)  # never blocks, never follows
        assert report is None and why == "missing"


async def test_code_nested_too_deeply_fails_the_check_not_the_daemon(wt: Path) -> None:
    (wt / "calc.py").write_text(CALC + "\n\ndef deep():\n    return " + "+".join(["1"] * 30000)
                                + "\n")
    report = await check(wt, "calc.py")
    assert not report.passed


async def test_files_the_test_run_writes_are_not_committed_unchecked(wt: Path) -> None:
    # A conftest that rewrites the tests during the run would otherwise reach the commit.
    (wt / "calc.py").write_text(CALC + "\nX = 1\n")
    report = await check(wt, "calc.py",
                         test_cmd="echo 'def test_add():\n    assert True' > tests/test_calc.py")
    assert any("the test run changed files that would be committed (tests/test_calc.py)" in p
               for p in failures(report, "tests")), report.summary()


@pytest.mark.parametrize("test_cmd, changed", [
    ("echo \"KEY = 'AKIA\"Z7Q4XK2M9PLW3JHV\"'\" > notes.txt", "notes.txt"),  # a new file
    ("chmod +x calc.py", "calc.py"),  # a mode, nothing else
    ("rm tests/test_calc.py", "tests/test_calc.py"),  # a deletion
])
async def test_what_the_test_run_changes_is_found_without_staging_again(
        wt: Path, test_cmd: str, changed: str) -> None:
    # The scan after the tests stages again only when a status shows something `add -A`
    # would stage: every kind of change the test run can make is still caught.
    (wt / "calc.py").write_text(CALC + "\nX = 1\n")
    report = await check(wt, "calc.py", test_cmd=test_cmd)
    assert any(f"the test run changed files that would be committed ({changed})" in p
               for p in failures(report, "tests")), report.summary()


def test_which_configured_commands_run_pytest() -> None:
    assert mentions_pytest("pytest -q") and mentions_pytest("uv run pytest tests/")
    assert mentions_pytest("/venv/bin/python -m pytest -x") and mentions_pytest("cd a && py.test")
    assert mentions_pytest("/opt/env/bin/pytest")
    assert not mentions_pytest("test -e /tmp/pytest-of-root/gate/ok")
    assert not mentions_pytest("make test") and not mentions_pytest("npm test")
