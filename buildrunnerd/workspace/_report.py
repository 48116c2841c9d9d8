"""Test results parsed, not believed: which command runs the tests, and what its report says.

**The command.** Auto-detection uses the project's own environment, found in the user's
checkout (never in the worktree, which the model writes, and never the daemon's Python): a
``.venv``/``venv`` folder, else poetry's environment, else ``npm test`` for a package.json
with a test script. pytest is started by the environment's absolute interpreter path with
``-P`` (Python 3.11+; ``-I`` before), so a ``pytest.py`` in the worktree cannot stand in for
the real module, and the worktree is appended (not prepended) to ``sys.path``. A configured
command (``--test-cmd``, the spec's ``Test command:``, ``verify.test_cmd``) runs as written,
with ``PYTHONSAFEPATH=1`` and ``PYTEST_ADDOPTS`` carrying the report option.

**The report.** pytest writes JUnit XML to a folder BuildRunner owns, outside the worktree.
It is read bounded, with no DOCTYPE allowed, and judged: nothing ran, exit code 5, a report
missing (the process died or left early), failures in a report whose process exited 0, fewer
protected tests passing than at the last verified commit, a protected test missing or skipped.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import stat
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from pathlib import Path

import anyio
import msgspec

from buildrunnerd.workspace._protect import ProtectedTest, is_python_test_file
from buildrunnerd.workspace._tree import Tree

__all__ = ["TestCommand", "TestCase", "TestCounts", "JunitReport", "ReportError",
           "detect_test_command", "parse_junit", "judge_report", "REPORT_FILENAME",
           "pytest_env", "mentions_pytest", "MAX_REPORT_BYTES", "npm_test_command",
           "read_report", "Verdict", "has_python_tests", "pytest_command", "interpreter_paths"]

REPORT_FILENAME = "junit.xml"
MAX_REPORT_BYTES = 32 * 1024 * 1024
_PROBE_TIMEOUT_S = 30.0

# Run pytest from the project's interpreter: the worktree goes at the END of sys.path (after
# pytest and its plugins were found in the environment), so project modules import as under
# ``python -m pytest`` but no worktree file can replace an installed module.
_PYTEST_MAIN = ("import os, sys; import pytest; sys.path.append(os.getcwd()); "
                "raise SystemExit(pytest.main(sys.argv[1:]))")
_NPM_DEFAULT_TEST = "no test specified"


class TestCommand(msgspec.Struct, frozen=True):
    """The test command of a verification. ``junit``: BuildRunner asked for the JUnit report
    (``report_path`` is where it goes) and will judge it; ``display`` is for messages."""

    command: str  # a shell command line
    display: str
    junit: bool = False
    source: str = "configured"  # configured | detected
    readonly: tuple[str, ...] = ()  # the environment's folders, shown read-only when confined


class TestCase(msgspec.Struct, frozen=True):
    classname: str
    name: str
    outcome: str  # passed | failed | error | skipped

    @property
    def function(self) -> str:
        return self.name.split("[", 1)[0]  # parametrized ids share the function


class TestCounts(msgspec.Struct, frozen=True):
    """Totals of one report, for the report check and ``run.verified``."""

    total: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    protected: int = 0  # protected test functions found in the tree
    protected_passed: int = 0  # protected test cases that passed


class JunitReport(msgspec.Struct, frozen=True):
    cases: list[TestCase]

    def counts(self) -> TestCounts:
        by = {o: sum(1 for c in self.cases if c.outcome == o)
              for o in ("passed", "failed", "error", "skipped")}
        return TestCounts(total=len(self.cases), passed=by["passed"], failed=by["failed"],
                          errors=by["error"], skipped=by["skipped"])


class ReportError(Exception):
    """The report is not a JUnit report we accept (the message says why)."""


# --- detecting the command --------------------------------------------------------------
@functools.lru_cache(maxsize=1 << 16)
def _is_test_module(path: str) -> bool:
    return is_python_test_file(path) and not path.lower().endswith("conftest.py")


def has_python_tests(tree: Collection[str]) -> bool:
    # Cached per path: asked of the whole tree each batch when no test command is set (and
    # by the branch check), and a project without tests answers only after every path.
    return any(_is_test_module(p) for p in tree if p.endswith(".py"))


def _venv_python(root: Path) -> Path | None:
    for name in (".venv", "venv"):
        # The folder resolved (a symlinked .venv works inside the sandbox too), the
        # interpreter not: its symlink is what makes it the venv's.
        candidate = Path(os.path.realpath(root / name)) / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


async def _poetry_python(root: Path) -> Path | None:
    poetry = shutil.which("poetry")
    if poetry is None:
        return None
    with anyio.move_on_after(_PROBE_TIMEOUT_S):
        res = await anyio.run_process([poetry, "env", "info", "--path"], cwd=root,
                                      check=False)
        if res.returncode == 0:
            candidate = Path(res.stdout.decode().strip()) / "bin" / "python"
            if candidate.is_file():
                return candidate
    return None


# interpreter path -> (its mtime, version, its sys.path folders): a probe costs a start-up.
_PROBED: dict[str, tuple[float, tuple[int, int], tuple[str, ...]]] = {}
_PROBE_CODE = ("import json, sys, pytest; "
               "print(json.dumps({'version': sys.version_info[:2], 'path': sys.path}))")


async def _probe_pytest(python: Path) -> tuple[tuple[int, int] | None, tuple[str, ...], str]:
    """The interpreter's version and ``sys.path`` folders when it can import pytest, else
    None and the reason (a success is remembered until the interpreter changes). The folders
    are what the sandbox must show read-only for the environment to work (``.pth`` entries
    included)."""
    try:
        mtime = (await anyio.Path(python).stat()).st_mtime
    except OSError as exc:
        return None, (), str(exc)
    known = _PROBED.get(str(python))
    if known is not None and known[0] == mtime:
        return known[1], known[2], ""
    version, paths, why = await _probe_pytest_now(python)
    if version is not None:
        _PROBED[str(python)] = (mtime, version, paths)
    return version, paths, why


async def _probe_pytest_now(python: Path
                            ) -> tuple[tuple[int, int] | None, tuple[str, ...], str]:
    with anyio.move_on_after(_PROBE_TIMEOUT_S):
        # -I: the probe runs nothing of the worktree or the environment's variables; cwd / so
        # no folder of a project is on the path.
        res = await anyio.run_process([str(python), "-I", "-c", _PROBE_CODE], cwd="/",
                                      check=False)
        if res.returncode != 0:
            err = res.stderr.decode("utf-8", "replace").strip().splitlines()
            return None, (), err[-1] if err else f"exit {res.returncode}"
        try:
            data = json.loads(res.stdout)
            major, minor = data["version"]
            paths = tuple(p for p in data["path"] if isinstance(p, str) and p)
        except (ValueError, KeyError, TypeError):
            return None, (), "it answered the probe with something else"
        return (int(major), int(minor)), paths, ""
    return None, (), f"it did not answer within {_PROBE_TIMEOUT_S:g} s"


async def interpreter_paths(command: str) -> tuple[str, ...]:
    """For a configured command that starts with a Python interpreter given by absolute
    path (a project's venv), the folders its ``sys.path`` needs visible in the sandbox."""
    try:
        first = shlex.split(command)[0] if command.strip() else ""
    except ValueError:
        return ()
    if not (os.path.isabs(first) and os.path.basename(first).startswith("python")):
        return ()
    _, paths, _ = await _probe_pytest(Path(first))
    return paths


def pytest_command(python: Path, version: tuple[int, int], report_path: Path) -> str:
    """The pytest command line for ``python`` (absolute), writing JUnit XML to
    ``report_path``."""
    # -P (3.11+) keeps the cwd off sys.path; -I does that before 3.11 (and also ignores
    # PYTHON* variables). -B: no byte-code files in the worktree.
    isolation = "-P" if version >= (3, 11) else "-I"
    return shlex.join([str(python), isolation, "-B", "-c", _PYTEST_MAIN, "-q", "-p",
                       "no:cacheprovider", f"--junitxml={report_path}"])


async def detect_test_command(
    project_root: Path | None, tree: Tree, report_path: Path, *,
    package_json: str | None = None,
) -> tuple[TestCommand | None, str]:
    """The project's test command, detected from its own environment, or None and why.

    ``project_root`` is the user's checkout (where an untracked ``.venv`` lives); ``tree`` the
    files of the commit (what kind of project this is); ``package_json`` the root
    ``package.json`` as committed. The reason says what was looked for, so a user can make it
    work (or set ``--test-cmd``)."""
    if has_python_tests(tree):
        python: Path | None = None
        where = ""
        if project_root is not None:
            python = _venv_python(project_root)
            where = f"{python}" if python else ""
            if python is None and "poetry.lock" in tree:
                python = await _poetry_python(project_root)
                where = f"poetry's environment {python}" if python else ""
        if python is None:
            hint = ("run `uv sync` in your checkout (uv.lock found) or " if "uv.lock" in tree
                    else "")
            return None, (
                "the project has Python tests but no environment of its own was found (no "
                f".venv/ or venv/ in {project_root or 'the repository'}, no poetry "
                f"environment); {hint}create one with pytest in it, or set the test command "
                "(--test-cmd, the spec's `Test command:` line, or verify.test_cmd). "
                "BuildRunner never runs project tests with its own Python")
        version, paths, why = await _probe_pytest(python)
        if version is None:
            return None, (f"the project's environment {where} cannot import pytest ({why}); "
                          f"install it (`{python} -m pip install pytest`) or set --test-cmd")
        return TestCommand(pytest_command(python, version, report_path),
                           display=f"{python} -m pytest", junit=True, source="detected",
                           readonly=paths), ""
    if "package.json" in tree:
        return npm_test_command(package_json)
    return None, ("no tests found (no test_*.py, *_test.py or tests/ files, no package.json): "
                  "nothing to run")


def npm_test_command(package_json: str | None) -> tuple[TestCommand | None, str]:
    """``npm test`` when package.json (as committed) has a real test script."""
    try:
        data = json.loads(package_json or "")
    except json.JSONDecodeError:
        return None, "package.json does not parse: no test command detected"
    script = data.get("scripts", {}).get("test") if isinstance(data, dict) else None
    if not isinstance(script, str) or not script.strip() or _NPM_DEFAULT_TEST in script:
        return None, "package.json has no test script: nothing to run"
    npm = shutil.which("npm")
    if npm is None:
        return None, ("package.json has a test script but npm is not on the daemon's PATH; "
                      "install Node.js or set --test-cmd")
    return TestCommand(shlex.join([npm, "test", "--silent"]), display="npm test",
                       source="detected"), ""


def mentions_pytest(command: str) -> bool:
    """Whether a shell command line runs pytest: a word that is ``pytest``/``py.test`` (a
    path to one included) or ``-m pytest``; not a path that merely contains the word."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for i, word in enumerate(words):
        if os.path.basename(word.rstrip(";&|)")) in ("pytest", "py.test"):
            return True
        if word == "-m" and i + 1 < len(words) and words[i + 1] in ("pytest", "py.test"):
            return True
    return False


def pytest_env(report_path: Path) -> dict[str, str]:
    """Extra environment of a configured command: pytest (however it is started) also writes
    the report, and ``python -m`` does not put the worktree first on ``sys.path``."""
    return {"PYTEST_ADDOPTS": f"--junitxml={shlex.quote(str(report_path))}",
            "PYTHONSAFEPATH": "1"}


# --- reading and judging the report --------------------------------------------------------
def parse_junit(data: bytes) -> JunitReport:
    """The test cases of a pytest JUnit XML report. Raises :class:`ReportError`."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"the report is over {MAX_REPORT_BYTES // (1024 * 1024)} MiB")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise ReportError("the report declares a DOCTYPE or entities; pytest never does")
    try:
        root = ET.fromstring(data)  # noqa: S314 (bounded, no DOCTYPE: see above)
    except ET.ParseError as exc:
        raise ReportError(f"the report is not valid XML: {exc}") from exc
    if root.tag not in ("testsuites", "testsuite"):
        raise ReportError(f"the report's root element is <{root.tag}>, not <testsuites>")
    cases: list[TestCase] = []
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = ("failed" if "failure" in kinds else "error" if "error" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        cases.append(TestCase(case.get("classname", ""), case.get("name", ""), outcome))
    return JunitReport(cases)


async def read_report(path: Path) -> tuple[JunitReport | None, str]:
    """The parsed report at ``path`` (None and why when missing or unusable)."""
    def read() -> bytes | None:
        # The folder is writable from the sandbox: the name may be a symlink or a FIFO.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read(MAX_REPORT_BYTES + 1)

    data = await anyio.to_thread.run_sync(read)
    if data is None:
        return None, "missing"
    try:
        return parse_junit(data), ""
    except ReportError as exc:
        return None, str(exc)


class Verdict(msgspec.Struct, frozen=True):
    passed: bool
    message: str


def judge_report(
    report: JunitReport | None, *, why_missing: str, returncode: int | None,
    protected: Sequence[ProtectedTest], baseline_passed: Collection[str] | None = None,
    command: str,
) -> tuple[list[Verdict], TestCounts]:
    """The problems a report shows (empty: it holds up). ``baseline_passed`` are the ids
    (``classname::name``) of the protected tests that passed at the last verified commit."""
    if report is None:
        if why_missing == "missing":
            return [Verdict(False, f"`{command}` wrote no test report (exit {returncode}): "
                            "the test process died or exited before pytest finished; a "
                            "conftest, plugin or imported module that exits or kills the "
                            "process does this")], TestCounts()
        return [Verdict(False, f"the test report of `{command}` is unusable: "
                        f"{why_missing}")], TestCounts()
    counts = report.counts()
    problems: list[Verdict] = []
    if counts.total == 0 or returncode == 5:
        problems.append(Verdict(False, f"no tests ran (`{command}`, exit {returncode}, "
                                f"{counts.total} test(s) in the report); the tests must run"))
    if returncode == 0 and (counts.failed or counts.errors):
        problems.append(Verdict(False, f"the report shows {counts.failed} failed and "
                                f"{counts.errors} error(s) although the command exited 0"))
    by_function: dict[tuple[str, str], list[TestCase]] = {}
    files_seen: set[str] = set()
    for case in report.cases:
        by_function.setdefault((case.classname, case.function), []).append(case)
        files_seen.add(case.classname)
    protected_passed = 0
    for test in protected:
        ran = by_function.get((test.classname, test.name), [])
        ident = f"{test.file}::{test.qualname.replace('.', '::')}"
        key = f"{test.classname}::{test.name}"
        protected_passed += sum(1 for c in ran if c.outcome == "passed")
        if not ran:
            # Without a baseline, a whole file may be outside the project's testpaths; a
            # function missing from a file (or class) that ran was deselected.
            if (key in baseline_passed if baseline_passed is not None
                    else test.classname in files_seen):
                problems.append(Verdict(False, f"protected test {ident} did not run"))
            continue
        if any(c.outcome == "skipped" for c in ran) and not test.may_skip:
            problems.append(Verdict(False, f"protected test {ident} was skipped; protected "
                                    "tests must run"))
        elif baseline_passed is not None and key in baseline_passed and not any(
                c.outcome == "passed" for c in ran):
            problems.append(Verdict(False, f"protected test {ident} passed before and does "
                                    "not pass now"))
    counts = msgspec.structs.replace(counts, protected=len(protected),
                                     protected_passed=protected_passed)
    return problems, counts

