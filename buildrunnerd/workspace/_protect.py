"""Protected tests: a batch may add tests, never delete, weaken or skip the accepted ones.

The protected files are the tests and the test configuration of the commit the batch started
from (the run's base commit plus every test an earlier batch of the run merged): Python test
files (``test_*.py``, ``*_test.py``, ``.py`` files under ``tests/``), ``conftest.py``, the
pytest sections of ``pytest.ini``/``pyproject.toml``/``setup.cfg``/``tox.ini``, JS/TS test
files, the ``package.json`` test scripts and the jest/vitest configuration. Everything is read
from git objects (the accepted commit and the batch's staged tree), never from the disk.

A protected file may change only when a task of the batch names it. Otherwise the comparison
is by AST for Python (removed test functions, fewer real asserts, trivially true asserts,
swallowed or dead asserts, added skip/xfail marks, ``pytestmark``, module-level
``pytest.skip``), by content for JS/TS, and by the parsed option values for configuration.
A conftest added or changed anywhere may not exit, skip, define pytest hooks or change what is
collected unless a task names it: a conftest runs inside the test process and decides what
the report says.
"""

from __future__ import annotations

import ast
import configparser
import functools
import json
import re
import shlex
import tomllib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import msgspec

from buildrunnerd.workspace._tree import Blobs, Entry, Tree

__all__ = [
    "Finding", "ProtectedTest", "check_protected", "is_python_test_file", "is_js_test_file",
    "is_test_config", "is_protected_path", "protected_tests", "analyse_python_tests",
    "DESELECTING_OPTIONS", "ProtectedTestFiles", "analyse_test_function", "wanted_paths",
]

PYTEST_CONFIG_NAMES = frozenset({"pytest.ini", ".pytest.ini", "pyproject.toml", "setup.cfg",
                                 "tox.ini"})
# Case-insensitive, as jest and vitest find their configuration by name (see _name).
_JS_CONFIG = re.compile(r"(^|/)(jest|vitest)\.(config|workspace|setup)\.[cm]?[jt]sx?(on)?$",
                        re.IGNORECASE)
_JS_TEST = re.compile(r"(^|/)(__tests__/.*\.[cm]?[jt]sx?|[^/]+\.(test|spec)\.[cm]?[jt]sx?)$")
_TEST_DIRS = frozenset({"tests", "test", "testing"})

# pytest options that run fewer tests than the suite holds, or none at all.
DESELECTING_OPTIONS = ("--collect-only", "--co", "-k", "--deselect", "-m", "--ignore",
                       "--ignore-glob", "-p", "--lf", "--last-failed", "--sw", "--stepwise",
                       "-x", "--exitfirst", "--maxfail", "--setup-only", "--setup-plan",
                       "--noconftest", "--confcutdir", "--pyargs", "--runxfail", "--rootdir",
                       "-c", "--config-file", "--override-ini", "-o", "--junitxml",
                       "--junit-xml", "--junit-prefix")
# Options whose change alters which files, classes or functions are collected.
_COLLECTION_KEYS = frozenset({"addopts", "testpaths", "python_files", "python_classes",
                              "python_functions", "norecursedirs", "collect_imported_tests",
                              "pythonpath", "required_plugins", "consider_namespace_packages",
                              "minversion", "xfail_strict", "empty_parameter_set_mark",
                              "usefixtures", "filterwarnings", "timeout"})
# (Not ``markers``: registering a new test's marker is part of adding tests.)

_EXIT_CALLS = frozenset({"os._exit", "sys.exit", "exit", "quit", "pytest.exit", "os.kill",
                         "os.abort", "os.killpg", "signal.raise_signal", "_exit"})
_SKIP_CALLS = frozenset({"pytest.skip", "pytest.xfail", "pytest.importorskip", "skip",
                         "xfail", "importorskip", "unittest.skip", "self.skipTest"})
_SKIP_MARKS = frozenset({"skip", "skipif", "xfail", "skipIf", "skipUnless",
                         "expectedFailure"})
_ASSERTING_CALLS = frozenset({"raises", "warns", "deprecated_call", "fail", "approx"})
_SWALLOWING = frozenset({"AssertionError", "Exception", "BaseException"})


class Finding(msgspec.Struct, frozen=True):
    """One problem: where, and what to do."""

    file: str
    message: str
    line: int | None = None


class ProtectedTest(msgspec.Struct, frozen=True):
    """A protected Python test function: its file, ``Class.name`` or ``name``, and whether
    the accepted version may skip it (it has a skip/xfail mark or call of its own)."""

    file: str
    qualname: str
    may_skip: bool = False

    @property
    def classname(self) -> str:
        """The junit ``classname`` pytest gives it (dotted path, then the class)."""
        module = self.file[:-3].replace("/", ".")
        cls, _, _ = self.qualname.rpartition(".")
        return f"{module}.{cls}" if cls else module

    @property
    def name(self) -> str:
        return self.qualname.rpartition(".")[2]


# --- what is a test ---------------------------------------------------------------------
def _name(path: str) -> str:
    """The file name of ``path`` as a case-insensitive file system (macOS's, by default) finds
    it: pytest opens ``conftest.py`` and ``pytest.ini`` by name, which there are also
    ``CONFTEST.PY`` and ``Pytest.ini``, so those names are protected as the lower-case ones."""
    return PurePosixPath(path).name.lower()


def is_python_test_file(path: str) -> bool:
    name = _name(path)
    if not name.endswith(".py"):
        return False
    if name == "conftest.py" or name.startswith("test_") or name.endswith("_test.py"):
        return True
    return any(part in _TEST_DIRS for part in PurePosixPath(path).parts[:-1])


def is_js_test_file(path: str) -> bool:
    return bool(_JS_TEST.search(path)) and "node_modules/" not in path


def is_test_config(path: str) -> bool:
    name = _name(path)
    return name in PYTEST_CONFIG_NAMES or name == "package.json" or bool(_JS_CONFIG.search(path))


@functools.lru_cache(maxsize=1 << 16)
def is_protected_path(path: str) -> bool:
    # Cached: every batch asks it of every path of two whole trees (issue 13: a batch's cost
    # must follow its change, and a 10,000-file tree made this ~0.2 s a batch).
    return is_python_test_file(path) or is_js_test_file(path) or is_test_config(path)


def wanted_paths(*trees: Tree) -> set[str]:
    """Paths whose contents the protection check reads (for :func:`read_blobs`)."""
    return {p for tree in trees for p in tree if is_protected_path(p)}


# --- Python analysis ----------------------------------------------------------------------
def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return ""


def _is_skip_mark(decorator: ast.AST) -> bool:
    name = _dotted(decorator)
    return name.rpartition(".")[2] in _SKIP_MARKS and (
        "mark" in name or "unittest" in name or name in _SKIP_MARKS)


def _trivially_true(test: ast.AST) -> bool:
    """``assert True``, ``assert 1``, ``assert "x"``, ``assert not False``, ``assert x == x``,
    ``assert (x, y)`` (a non-empty tuple is always true)."""
    if isinstance(test, ast.Constant):
        return bool(test.value)
    if isinstance(test, ast.Tuple):
        return bool(test.elts)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return isinstance(test.operand, ast.Constant) and not test.operand.value
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(
            test.ops[0], (ast.Eq, ast.Is, ast.LtE, ast.GtE)):
        return ast.dump(test.left) == ast.dump(test.comparators[0])
    return False


def _constant_false(test: ast.AST) -> bool:
    return isinstance(test, ast.Constant) and not test.value


def _swallows(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = ([_dotted(e) for e in handler.type.elts] if isinstance(handler.type, ast.Tuple)
             else [_dotted(handler.type)])
    return any(n.rpartition(".")[2] in _SWALLOWING for n in names)


@dataclass
class TestInfo:
    """What a test function checks."""

    line: int
    asserts: int = 0  # real assertions: asserts that can fail, pytest.raises, self.assert*
    trivial: int = 0  # asserts that can never fail
    dead: int = 0  # asserts that never run (dead branch) or whose failure is swallowed
    skips: int = 0  # skip/xfail marks and calls
    early_return: bool = False

    @property
    def may_skip(self) -> bool:
        return self.skips > 0


class _Counter(ast.NodeVisitor):
    def __init__(self, info: TestInfo) -> None:
        self.info = info
        self.dead_depth = 0

    def visit_Assert(self, node: ast.Assert) -> None:  # noqa: N802 (ast's naming)
        if self.dead_depth:
            self.info.dead += 1
        elif _trivially_true(node.test):
            self.info.trivial += 1
        else:
            self.info.asserts += 1
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        name = _dotted(node.func)
        last = name.rpartition(".")[2]
        if name in _SKIP_CALLS or last in ("skip", "xfail", "skipTest"):
            self.info.skips += 1
        elif last.startswith("assert") or last in _ASSERTING_CALLS:
            if self.dead_depth:
                self.info.dead += 1
            else:
                self.info.asserts += 1
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:  # noqa: N802
        self.visit(node.test)
        dead = _constant_false(node.test)
        self.dead_depth += dead
        for stmt in node.body:
            self.visit(stmt)
        self.dead_depth -= dead
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_While(self, node: ast.While) -> None:  # noqa: N802
        self.visit_If(ast.If(test=node.test, body=node.body, orelse=node.orelse))

    def visit_Try(self, node: ast.Try | ast.TryStar) -> None:  # noqa: N802
        swallowed = any(_swallows(h) for h in node.handlers)
        self.dead_depth += swallowed
        for stmt in node.body:
            self.visit(stmt)
        self.dead_depth -= swallowed
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    def visit_TryStar(self, node: ast.TryStar) -> None:  # noqa: N802
        self.visit_Try(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:  # noqa: N802
        pass  # a nested function is not the test's own body

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815


def analyse_test_function(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> TestInfo:
    info = TestInfo(line=fn.lineno)
    info.skips = sum(_is_skip_mark(d) for d in fn.decorator_list)
    counter = _Counter(info)
    for i, stmt in enumerate(fn.body):
        if isinstance(stmt, ast.Return) and i < len(fn.body) - 1:
            info.early_return = True
            counter.dead_depth += 1
        counter.visit(stmt)
    return info


@dataclass
class ModuleTests:
    """The tests of one Python module and the module-level switches that affect them."""

    tests: dict[str, TestInfo] = field(default_factory=dict)
    skips: int = 0  # module/class-level skip calls, pytestmark, skip marks on classes
    uncollect: int = 0  # __test__ = False, test names rebound, collect_ignore
    exits: list[int] = field(default_factory=list)  # lines of exit calls (anywhere)
    hooks: list[tuple[str, int]] = field(default_factory=list)  # pytest_* functions
    skip_calls: list[int] = field(default_factory=list)  # lines of any skip/xfail call


def _collect_module(tree: ast.Module, out: ModuleTests) -> None:
    def scan_body(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if stmt.name.startswith("test"):
                    out.tests[prefix + stmt.name] = analyse_test_function(stmt)
                elif not in_class and stmt.name.startswith("pytest_"):
                    out.hooks.append((stmt.name, stmt.lineno))
            elif isinstance(stmt, ast.ClassDef) and stmt.name.startswith("Test"):
                out.skips += sum(_is_skip_mark(d) for d in stmt.decorator_list)
                scan_body(stmt.body, f"{prefix}{stmt.name}.", True)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    name = _dotted(target)
                    if name == "pytestmark":
                        out.skips += 1
                    elif name in ("__test__", "collect_ignore", "collect_ignore_glob",
                                  "pytest_plugins") or name.startswith(("test", "Test")):
                        out.uncollect += 1
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                if _dotted(stmt.value.func).rpartition(".")[2] in ("skip", "xfail",
                                                                    "importorskip"):
                    out.skips += 1
            elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
                for sub in ("body", "orelse", "finalbody"):
                    scan_body(getattr(stmt, sub, []), prefix, in_class)
                for handler in getattr(stmt, "handlers", []):
                    scan_body(handler.body, prefix, in_class)

    scan_body(tree.body, "", False)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in _EXIT_CALLS:
                out.exits.append(node.lineno)
            elif name in _SKIP_CALLS or name.rpartition(".")[2] in ("skip", "xfail"):
                out.skip_calls.append(node.lineno)
        elif isinstance(node, ast.Raise) and node.exc is not None and _dotted(
                node.exc).rpartition(".")[2] in ("SystemExit", "KeyboardInterrupt"):
            out.exits.append(node.lineno)


def analyse_python_tests(source: str, filename: str = "<test>") -> ModuleTests | None:
    """The tests of a module, or None when it does not parse (the compile check reports
    that)."""
    try:
        tree = ast.parse(source, filename)
        out = ModuleTests()
        _collect_module(tree, out)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # nesting too deep to walk is reported by check_protected's caller
    return out


# --- configuration ------------------------------------------------------------------------
def _pytest_options(path: str, text: str) -> dict[str, Any] | None:
    """The pytest options a config file sets (an empty dict when it has no pytest section),
    or None when it cannot be parsed."""
    name = _name(path)
    if name == "pyproject.toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return None
        tool = data.get("tool", {}) if isinstance(data, dict) else {}
        pytest_table = tool.get("pytest", {}) if isinstance(tool, dict) else {}
        if not isinstance(pytest_table, dict):
            return None
        return dict(pytest_table)
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(text, source=path)
    except configparser.Error:
        return None
    section = {"setup.cfg": "tool:pytest"}.get(name, "pytest")
    found: dict[str, Any] = {}
    for candidate in (section, "tool:pytest") if name == "tox.ini" else (section,):
        if parser.has_section(candidate):
            found.update(dict(parser.items(candidate)))
    return found


def _addopts_tokens(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):  # pytest 9's [tool.pytest] keeps ini_options as a table
        return [t for v in value.values() for t in _addopts_tokens(v)]
    try:
        return shlex.split(str(value))
    except ValueError:
        return str(value).split()


_TAKES_VALUE = frozenset({"-k", "-m", "--deselect", "-p", "--ignore", "--ignore-glob",
                          "--maxfail", "--confcutdir", "--rootdir", "-c", "--config-file",
                          "-o", "--override-ini", "--junitxml", "--junit-xml",
                          "--junit-prefix"})


def deselecting_tokens(options: dict[str, Any]) -> list[str]:
    """The addopts options (with their values) that run fewer tests: see
    :data:`DESELECTING_OPTIONS`."""
    raw = options.get("addopts")
    if raw is None and isinstance(options.get("ini_options"), dict):
        raw = options["ini_options"].get("addopts")
    tokens = _addopts_tokens(raw) if raw is not None else []
    found: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        head = token.split("=", 1)[0]
        glued = len(head) > 2 and head[:2] in ("-k", "-p", "-m") and not head.startswith("--")
        if head in DESELECTING_OPTIONS or glued:
            if head in _TAKES_VALUE and "=" not in token and i + 1 < len(tokens):
                token = f"{token} {tokens[i + 1]}"
                i += 1
            found.append(token)
        i += 1
    return found


def _flatten(options: dict[str, Any]) -> dict[str, Any]:
    flat = dict(options)
    inner = flat.pop("ini_options", None)
    if isinstance(inner, dict):
        flat.update(inner)
    return flat


def _package_test_settings(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    raw = data.get("scripts")
    scripts: dict[str, Any] = raw if isinstance(raw, dict) else {}
    picked = {f"scripts.{k}": v for k, v in scripts.items()
              if re.search(r"(^|:|pre|post)test", k)}
    for key in ("jest", "vitest", "mocha", "ava"):
        if key in data:
            picked[key] = data[key]
    return picked


# --- the check ----------------------------------------------------------------------------
_JS_CASE = re.compile(r"\b(it|test)\s*(\.each\s*\([^)]*\)\s*)?\(")
_JS_EXPECT = re.compile(r"\b(expect|assert)\s*[.(]")
_JS_SKIP = re.compile(r"\b(xit|xtest|xdescribe)\s*\(|\.(skip|only|todo)\s*\(")


def _named_fix(path: str) -> str:
    return (f"tests accepted earlier are protected; restore {path} as it was, or add tests "
            "in a new file")


def _check_python_test(path: str, old: str, new: str | None, findings: list[Finding]) -> None:
    before = analyse_python_tests(old, path)
    if before is None:
        return  # the accepted version does not parse: nothing to compare against
    if new is None:
        findings.append(Finding(path, f"{path} was deleted; {_named_fix(path)}"))
        return
    after = analyse_python_tests(new, path)
    if after is None:
        return  # the compile check reports the syntax error
    for qualname, was in before.tests.items():
        now = after.tests.get(qualname)
        where = f"{path}::{qualname.replace('.', '::')}"
        if now is None:
            findings.append(Finding(path, f"{where} was removed (or renamed); "
                                    f"{_named_fix(path)}", line=was.line))
            continue
        problems = []
        if now.asserts < was.asserts:
            problems.append(f"it has {now.asserts} real assertion(s), {was.asserts} before")
        if now.trivial > was.trivial:
            problems.append("it asserts something that is always true")
        if now.dead > was.dead:
            problems.append("an assertion never runs or its failure is swallowed")
        if now.skips > was.skips:
            problems.append("it is now skipped or marked xfail")
        if now.early_return and not was.early_return:
            problems.append("it returns before its assertions")
        if problems:
            findings.append(Finding(path, f"{where} was weakened: {'; '.join(problems)}; "
                                    f"{_named_fix(path)}", line=now.line))
    if after.skips > before.skips:
        findings.append(Finding(path, f"{path} now skips (or marks xfail) tests at module or "
                                f"class level (pytestmark, pytest.skip); {_named_fix(path)}"))
    if after.uncollect > before.uncollect:
        findings.append(Finding(path, f"{path} now hides tests from collection (__test__, "
                                f"a test name rebound, collect_ignore); {_named_fix(path)}"))


def _check_conftest(path: str, old: str | None, new: str, findings: list[Finding]) -> None:
    after = analyse_python_tests(new, path)
    if after is None:
        return
    before = analyse_python_tests(old, path) if old is not None else None
    before = before or ModuleTests()
    fix = (f"a conftest.py may not end the test run, skip tests or change what is collected "
           f"unless a task names {path}")
    if len(after.exits) > len(before.exits):
        findings.append(Finding(path, f"{path} ends the process (exit/os._exit/SystemExit); "
                                + fix, line=after.exits[0]))
    if len(after.skip_calls) > len(before.skip_calls) or after.skips > before.skips:
        line = after.skip_calls[0] if after.skip_calls else None
        findings.append(Finding(path, f"{path} skips or xfails tests; " + fix, line=line))
    new_hooks = [h for h in after.hooks if h[0] not in {n for n, _ in before.hooks}]
    if new_hooks:
        findings.append(Finding(path, f"{path} defines pytest hook(s) "
                                f"{', '.join(n for n, _ in new_hooks)}; " + fix,
                                line=new_hooks[0][1]))
    if after.uncollect > before.uncollect:
        findings.append(Finding(path, f"{path} changes collection (collect_ignore, "
                                "pytest_plugins, __test__); " + fix))


def _check_pytest_config(path: str, old: str | None, new: str | None,
                         findings: list[Finding]) -> None:
    before = _pytest_options(path, old) if old is not None else {}
    after = _pytest_options(path, new) if new is not None else {}
    if before is None:
        return  # the accepted file does not parse: pytest itself will complain
    if after is None:
        findings.append(Finding(path, f"{path} no longer parses; restore its pytest settings"))
        return
    was, now = _flatten(before), _flatten(after)
    changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k)
                     and (k in _COLLECTION_KEYS or k.startswith("collect")))
    added = [t for t in deselecting_tokens(after) if t not in deselecting_tokens(before)]
    if added:
        findings.append(Finding(path, f"{path} adds pytest options that run fewer tests or "
                                f"none ({' '.join(added)}); remove them"))
    elif changed:
        findings.append(Finding(path, f"{path} changes the pytest settings "
                                f"{', '.join(changed)}; the test configuration is protected: "
                                "restore it, or name the file in a task"))


def _check_package_json(path: str, old: str | None, new: str | None,
                        findings: list[Finding]) -> None:
    before = _package_test_settings(old) if old is not None else {}
    after = _package_test_settings(new) if new is not None else {}
    if before is None:
        return
    if after is None:
        findings.append(Finding(path, f"{path} is no longer valid JSON; restore it"))
        return
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        findings.append(Finding(path, f"{path} changes the test settings {', '.join(changed)}; "
                                "the test scripts and test configuration are protected: "
                                "restore them, or name the file in a task"))


def _check_js_test(path: str, old: str, new: str | None, findings: list[Finding]) -> None:
    if new is None:
        findings.append(Finding(path, f"{path} was deleted; {_named_fix(path)}"))
        return
    problems = []
    if len(_JS_CASE.findall(new)) < len(_JS_CASE.findall(old)):
        problems.append("it has fewer test cases")
    if len(_JS_EXPECT.findall(new)) < len(_JS_EXPECT.findall(old)):
        problems.append("it has fewer expect()/assert calls")
    if len(_JS_SKIP.findall(new)) > len(_JS_SKIP.findall(old)):
        problems.append("it skips tests or focuses on some (.skip/.only/.todo/xit)")
    if problems:
        findings.append(Finding(path, f"{path} was weakened: {'; '.join(problems)}; "
                                f"{_named_fix(path)}"))


def check_protected(
    before: Tree, before_blobs: Blobs, after: Tree, after_blobs: Blobs, *,
    named: Collection[str] = (), changed: Iterable[str] | None = None,
) -> list[Finding]:
    """Compare the accepted tree ``before`` with the staged tree ``after`` (blobs as read by
    :func:`read_blobs` for :func:`wanted_paths`). Files in ``named`` may change freely.
    ``changed``: the paths where the two trees differ, when the caller knows them (default:
    every path of both is compared)."""
    findings: list[Finding] = []
    for path in sorted(set(changed) if changed is not None else set(before) | set(after)):
        if path in named or not is_protected_path(path):
            continue
        old_entry, new_entry = before.get(path), after.get(path)
        if old_entry == new_entry:
            continue
        old = before_blobs.text(old_entry) if old_entry is not None else None
        new = after_blobs.text(new_entry) if new_entry is not None else None
        if new_entry is not None and new is None and (old_entry is not None or
                                                      path.endswith(".py")):
            findings.append(Finding(path, f"{path} is not a readable text file any more "
                                    f"(mode {new_entry.mode}); restore it"))
            continue
        name = _name(path)
        if name == "conftest.py":
            if new is None:
                if old is not None:
                    findings.append(Finding(path, f"{path} was deleted; {_named_fix(path)}"))
            else:
                _check_conftest(path, old, new, findings)
        elif is_python_test_file(path):
            if old is not None:
                _check_python_test(path, old, new, findings)
        elif name in PYTEST_CONFIG_NAMES:
            _check_pytest_config(path, old, new, findings)
        elif name == "package.json":
            _check_package_json(path, old, new, findings)
        elif _JS_CONFIG.search(path):
            verb = "deleted" if new is None else "added" if old is None else "changed"
            findings.append(Finding(path, f"{path} was {verb}; the jest/vitest configuration "
                                    "is protected: restore it, or name the file in a task"))
        elif is_js_test_file(path) and old is not None:
            _check_js_test(path, old, new, findings)
    return findings


def _is_collected_test_file(path: str) -> bool:
    # pytest's default python_files: helpers under tests/ are not collected. A string test
    # first (asked of every path of a tree): only .py files count.
    if not path.endswith(".py"):
        return False
    name = path.rpartition("/")[2]
    return name.startswith("test_") or name.endswith("_test.py")


def _file_tests(path: str, entry: Entry, blobs: Blobs) -> list[tuple[str, bool]] | None:
    """The test functions of one test file (``(qualname, may_skip)``), None when its blob is
    not readable text or does not parse."""
    tests = _known_tests(entry.sha)
    if tests is None:
        source = blobs.text(entry)
        module = analyse_python_tests(source, path) if source is not None else None
        if module is None:
            return None
        tests = [(qualname, info.may_skip or module.skips > 0)
                 for qualname, info in module.tests.items()]
        _remember_tests(entry.sha, tests)
    return tests


def protected_tests(tree: Tree, blobs: Blobs, *, paths: Iterable[str] | None = None
                    ) -> list[ProtectedTest]:
    """The Python test functions of ``tree`` (the accepted commit), for the report check."""
    found: list[ProtectedTest] = []
    for path in sorted(paths if paths is not None else tree):
        entry: Entry | None = tree.get(path)
        if entry is None or not _is_collected_test_file(path):
            continue
        tests = _file_tests(path, entry, blobs)
        if tests is not None:
            found += [ProtectedTest(path, qualname, may_skip=may_skip)
                      for qualname, may_skip in tests]
    return found


class ProtectedTestFiles:
    """The test files of one tree (pytest's default ``python_files``), with the blob each
    is, so the protected tests of the next tree follow from the paths that changed."""

    __slots__ = ("files",)
    __test__ = False  # not a test class, whatever pytest makes of the name

    def __init__(self, files: dict[str, Entry]) -> None:
        self.files = files

    @classmethod
    def build(cls, tree: Tree) -> ProtectedTestFiles:
        return cls({p: e for p, e in tree.items() if _is_collected_test_file(p)})

    def updated(self, old: Tree, new: Tree, paths: Iterable[str]) -> ProtectedTestFiles:
        """The test files of ``new``, from these (of ``old``) and the paths that differ."""
        files = dict(self.files)
        for path in paths:
            if not _is_collected_test_file(path):
                continue
            entry = new.get(path)
            if entry is None:
                files.pop(path, None)
            else:
                files[path] = entry
        return ProtectedTestFiles(files)

    def unread_entries(self) -> list[Entry]:
        """The test files whose tests are not remembered by blob id: the blobs
        :meth:`tests` must be given (for :func:`read_blobs`)."""
        return [e for e in self.files.values() if _known_tests(e.sha) is None]

    def tests(self, blobs: Blobs, *, named: Collection[str] = ()) -> list[ProtectedTest]:
        """The protected tests (:func:`protected_tests` of the tree), but those of the files
        in ``named``."""
        found: list[ProtectedTest] = []
        for path in sorted(self.files):
            if path in named:
                continue
            tests = _file_tests(path, self.files[path], blobs)
            if tests is not None:
                found += [ProtectedTest(path, qualname, may_skip=may_skip)
                          for qualname, may_skip in tests]
        return found


# The tests of a blob, by its id (content-addressed, so never stale): every batch of a run
# lists the protected tests of the whole accepted tree, and without this parsed every test
# file of it again. Two generations of at most this many blobs each.
_MAX_REMEMBERED_BLOBS = 20_000
_TESTS_BY_BLOB: dict[str, list[tuple[str, bool]]] = {}
_TESTS_BY_BLOB_OLD: dict[str, list[tuple[str, bool]]] = {}


def _known_tests(sha: str) -> list[tuple[str, bool]] | None:
    tests = _TESTS_BY_BLOB.get(sha)
    if tests is None:
        tests = _TESTS_BY_BLOB_OLD.get(sha)
        if tests is not None:
            _remember_tests(sha, tests)
    return tests


def _remember_tests(sha: str, tests: list[tuple[str, bool]]) -> None:
    global _TESTS_BY_BLOB, _TESTS_BY_BLOB_OLD
    if len(_TESTS_BY_BLOB) >= _MAX_REMEMBERED_BLOBS:
        _TESTS_BY_BLOB_OLD, _TESTS_BY_BLOB = _TESTS_BY_BLOB, {}
    _TESTS_BY_BLOB[sha] = tests
