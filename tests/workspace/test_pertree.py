"""What verification keeps per tree (the project's top-level modules, the protected test
files) equals the answer computed from scratch, however it was derived; and hostile batches
that try to make a kept answer stale are still caught, on real repositories through the real
GitWorkspace (where the answers are kept and derived from one batch to the next)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildrunnerd.config import VerifyConfig
from buildrunnerd.plan._model import Task
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.workspace import GitWorkspace, prepare_run_repo
from buildrunnerd.workspace._pertree import PerTree, tree_changes
from buildrunnerd.workspace._protect import ProtectedTestFiles, protected_tests
from buildrunnerd.workspace._stubs import ProjectModules, project_top_levels
from buildrunnerd.workspace._tree import Blobs, Entry, Tree
from tests.projectenv import give_project_env

from ._helpers import run_git, task

CONFIG = VerifyConfig()

_PARTS = st.sampled_from(["src", "pkg", "tests", "lib", "setup", "conftest", "a-b", "x"])
_NAMES = st.sampled_from(["__init__.py", "core.py", "test_core.py", "core_test.py",
                          "README.md", "setup.py", "conftest.py", "m.pyi", "util.py"])
_PATHS = st.builds(lambda folders, name: "/".join([*folders, name]),
                   st.lists(_PARTS, max_size=3), _NAMES)
_TREES = st.dictionaries(_PATHS, st.sampled_from(["a" * 40, "b" * 40, "c" * 40]), max_size=30)


def _tree(shas: dict[str, str]) -> Tree:
    return {p: Entry("100644", sha) for p, sha in shas.items()}


@settings(max_examples=300, deadline=None)
@given(_TREES, _TREES)
def test_derived_answers_are_the_from_scratch_answers(old_shas: dict[str, str],
                                                      new_shas: dict[str, str]) -> None:
    old, new = _tree(old_shas), _tree(new_shas)
    paths = tree_changes(old, new)
    modules = ProjectModules.build(old).updated(old, new, paths)
    assert modules.names == project_top_levels(new) == ProjectModules.build(new).names
    tests = ProtectedTestFiles.build(old).updated(old, new, paths)
    assert tests.files == ProtectedTestFiles.build(new).files
    # Kept per tree id, derived from the last one kept: the same answers.
    kept: PerTree[ProjectModules] = PerTree(
        ProjectModules.build, lambda value, o, n, p: value.updated(o, n, p))
    kept.put("old", old, ProjectModules.build(old))
    assert kept.get("new", new).names == project_top_levels(new)
    assert kept.get("new", new).names == project_top_levels(new)  # and kept


def test_the_protected_tests_listed_from_the_test_files_are_protected_tests() -> None:
    source = b"def test_one():\n    assert 1 == 1\n\n\ndef helper():\n    pass\n"
    tree = {"tests/test_a.py": Entry("100644", "d" * 40), "tests/helper.py":
            Entry("100644", "e" * 40), "app.py": Entry("100644", "f" * 40)}
    blobs = Blobs({"d" * 40: source, "e" * 40: source, "f" * 40: source})
    files = ProtectedTestFiles.build(tree)
    assert files.tests(blobs) == protected_tests(tree, blobs)
    assert [t.qualname for t in files.tests(blobs)] == ["test_one"]
    assert files.tests(blobs, named={"tests/test_a.py"}) == []


class _Run:
    """Batches one after the other through a GitWorkspace, each merged as a fast-forward
    (so every batch starts from a tree whose answers verification kept)."""

    def __init__(self, ws: GitWorkspace) -> None:
        self.ws = ws

    async def batch(self, t: Task, write: object, *, merge: bool = True
                    ) -> VerificationReport:
        path, head = await self.ws.acquire()
        assert callable(write)
        write(path)
        report = await self.ws.verify(path, [t], head=head, config=CONFIG, confinement=None)
        if merge and report.passed:
            done = await self.ws.integrate(path, t.id, report, head=head, batch_id=t.id,
                                           config=CONFIG, confinement=None)
            assert done.merged, done
        await self.ws.release(path, reuse=True)
        return report


async def _run(repo: Path, wt_root: Path, tasks: list[Task], test_cmd: str | None = None
               ) -> _Run:
    run_repo = await prepare_run_repo(repo, "r1")
    return _Run(GitWorkspace(run_repo, run_id="r1", worktree_root=wt_root, project_root=repo,
                             base_commit=run_repo.base_commit, test_cmd=test_cmd,
                             plan_tasks=tasks, spec_path=None))


async def _app_tested_then_first_batch(repo: Path, wt_root: Path) -> tuple[_Run, Task]:
    """A repository with a committed ``tests/test_app.py``, a run's first batch (``one.py``)
    merged; the run and its second task (``two.py``)."""
    (repo / "tests").mkdir()
    (repo / "tests" / "test_app.py").write_text(
        "from app import hello\n\n\ndef test_hello():\n    assert hello() == 'hi'\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "tests")
    first, second = task("T1", "one.py"), task("T2", "two.py")
    run = await _run(repo, wt_root, [first, second])
    assert (await run.batch(first, lambda wt: (wt / "one.py").write_text("ONE = 1\n"))).passed
    return run, second


def failures(report: VerificationReport, name: str) -> list[str]:
    return [c.message for c in report.checks if c.name == name and not c.passed]


TEST_FEATURE = ("from app import hello\n\n\n"
                "def test_hello():\n    assert hello() == 'hi'\n\n\n"
                "def test_again():\n    assert hello().startswith('h')\n")


@pytest.mark.parametrize("attack", ["delete", "rename", "weaken"])
async def test_a_test_merged_by_an_earlier_batch_stays_protected(
        repo: Path, wt_root: Path, attack: str) -> None:
    first, second = task("T1", "tests/test_feature.py"), task("T2", "feature.py")
    run = await _run(repo, wt_root, [first, second])

    def add_test(wt: Path) -> None:
        (wt / "tests").mkdir()
        (wt / "tests" / "test_feature.py").write_text(TEST_FEATURE)

    assert (await run.batch(first, add_test)).passed

    def hostile(wt: Path) -> None:
        (wt / "feature.py").write_text("def feature() -> int:\n    return 1\n")
        target = wt / "tests" / "test_feature.py"
        if attack == "delete":
            target.unlink()
        elif attack == "rename":
            target.rename(wt / "tests" / "test_other.py")
        else:
            target.write_text(TEST_FEATURE.replace("assert hello().startswith('h')",
                                                   "assert True"))

    report = await run.batch(second, hostile, merge=False)
    assert not report.passed
    assert any("tests/test_feature.py" in m for m in failures(report, "protected")), report
    await run.ws.close()


async def test_a_new_top_level_package_is_a_project_module_at_once(
        repo: Path, wt_root: Path) -> None:
    first, second = task("T1", "lib/__init__.py", "lib/core.py"), task("T2", "main.py")
    run = await _run(repo, wt_root, [first, second])

    def add_lib(wt: Path) -> None:
        (wt / "lib").mkdir()
        (wt / "lib" / "__init__.py").write_text('"""The library."""\n')
        (wt / "lib" / "core.py").write_text("def run() -> int:\n    return 1\n")

    assert (await run.batch(first, add_lib)).passed

    def hostile(wt: Path) -> None:
        # A new package in this very batch, and imports of what it (and lib) do not hold:
        # what an answer cut off mid-file leaves.
        (wt / "newpkg").mkdir()
        (wt / "newpkg" / "__init__.py").write_text('"""New."""\n')
        (wt / "main.py").write_text("from newpkg.engine import start\nfrom lib.core import "
                                    "stop\n\n\ndef main() -> int:\n    return start() + "
                                    "stop()\n")

    report = await run.batch(second, hostile, merge=False)
    problems = " ".join(failures(report, "stubs"))
    assert "imports newpkg.engine, which does not exist" in problems, report
    assert "imports stop from lib.core" in problems, report
    await run.ws.close()


async def test_an_edit_outside_the_change_with_forged_timestamps_is_seen(
        repo: Path, wt_root: Path) -> None:
    run, second = await _app_tested_then_first_batch(repo, wt_root)

    def hostile(wt: Path) -> None:
        (wt / "two.py").write_text("TWO = 2\n")
        for name, old, new in (("tests/test_app.py", "== 'hi'", "!= 'ho'"),
                               ("README.md", "project", "PROJECT")):
            path = wt / name
            st_before = path.stat()
            path.write_text(path.read_text().replace(old, new))  # same size
            os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))

    report = await run.batch(second, hostile, merge=False)
    # Seen: the protected test is a forbidden change, README.md one outside the batch's files.
    assert any("tests/test_app.py was changed" in m for m in failures(report, "scope")), report
    assert any("README.md" in c.message for c in report.checks if c.name == "scope"), report
    await run.ws.close()


async def test_a_folder_swapped_for_a_symlink_is_seen(repo: Path, wt_root: Path,
                                                      tmp_path: Path) -> None:
    run, second = await _app_tested_then_first_batch(repo, wt_root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "test_app.py").write_text("def test_hello():\n    assert True\n")

    def hostile(wt: Path) -> None:
        (wt / "two.py").write_text("TWO = 2\n")
        shutil.rmtree(wt / "tests")
        (wt / "tests").symlink_to(elsewhere)

    report = await run.batch(second, hostile, merge=False)
    assert any("tests/test_app.py was deleted" in m for m in failures(report, "protected")), (
        report)
    await run.ws.close()


async def test_the_tested_tree_is_claimed_only_for_a_worktree_holding_nothing_else(
        repo: Path, wt_root: Path) -> None:
    (repo / ".gitignore").write_text("*.log\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "ignore logs")
    tasks = [task(f"T{i}", f"f{i}.py") for i in range(3)]
    run = await _run(repo, wt_root, tasks, test_cmd="true")
    clean = await run.batch(tasks[0], lambda wt: (wt / "f0.py").write_text("A = 0\n"))
    assert clean.passed and clean.tree is not None
    # The report's tree is the tree the commit holds (a fast-forward of the verified tree).
    head = run_git(repo, "rev-parse", "refs/heads/buildrunner/r1").strip()
    assert run_git(repo, "rev-parse", f"{head}^{{tree}}").strip() == clean.tree

    def ignored(wt: Path) -> None:
        (wt / "f1.py").write_text("A = 1\n")
        (wt / "debug.log").write_text("what a test could read\n")

    def byte_code(wt: Path) -> None:
        (wt / "f2.py").write_text("A = 2\n")
        (wt / "__pycache__").mkdir()
        (wt / "__pycache__" / "f2.cpython-311.pyc").write_bytes(b"\0" * 16)

    for write, t in ((ignored, tasks[1]), (byte_code, tasks[2])):
        report = await run.batch(t, write, merge=False)
        assert report.passed and report.tree is None, report
    await run.ws.close()


async def test_a_protected_test_a_named_conftest_hides_fails_the_report(
        repo: Path, wt_root: Path, project_env_root: Path) -> None:
    # The report check's protected tests come from the kept answer of the batch's start
    # tree, which an earlier batch of the run changed: a test it added must still be in the
    # report, even when the batch may change the conftest that would hide it.
    python = give_project_env(repo, project_env_root)
    (repo / "conftest.py").write_text("# the project's root\n")
    run_git(repo, "add", "conftest.py")
    run_git(repo, "commit", "-q", "-m", "conftest")
    first, second = task("T1", "tests/test_feature.py"), task("T2", "tests/conftest.py")
    run = await _run(repo, wt_root, [first, second], test_cmd=f"{python} -m pytest -q")

    def add_test(wt: Path) -> None:
        (wt / "tests").mkdir()
        (wt / "tests" / "test_feature.py").write_text(TEST_FEATURE)

    assert (await run.batch(first, add_test)).passed

    def hostile(wt: Path) -> None:
        (wt / "tests" / "conftest.py").write_text('collect_ignore = ["test_feature.py"]\n')

    report = await run.batch(second, hostile, merge=False)
    assert not report.passed
    assert any("test_feature.py" in m for m in failures(report, "tests")), report
    await run.ws.close()


@settings(max_examples=300, deadline=None)
@given(_TREES, _TREES, st.dictionaries(_PATHS, st.sampled_from(["100644", "100755", "120000"]),
                                       max_size=30))
def test_tree_changes_lists_every_path_whose_entry_differs(
        old_shas: dict[str, str], new_shas: dict[str, str], modes: dict[str, str]) -> None:
    # The reference: a path is listed when it is in one listing only, or in both with another
    # blob or another mode (a file made executable or a link is a change).
    old = _tree(old_shas)
    new = {p: Entry(modes.get(p, "100644"), sha) for p, sha in new_shas.items()}
    expected = sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))
    assert tree_changes(old, new) == expected
    assert tree_changes(new, old) == expected
    assert tree_changes(new, dict(new)) == []
