"""Stubs fail: placeholder code is not an implementation.

Python, by AST, over the functions a batch added or changed:

* a body that is only ``pass``, ``...``, a docstring or ``raise NotImplementedError`` (abstract
  methods, ``@overload``, ``Protocol`` members and ``.pyi`` files excepted);
* a test function (in a test file) without an assertion that can fail;
* an import, on an added line, of a project module that does not exist in the commit, or of a
  name that the project module does not define (what an answer cut off mid-file leaves);
* ``TODO``/``FIXME`` in an added comment.

Other languages use a heuristic on added lines only: ``TODO``/``FIXME`` after a comment marker
(``#``, ``//``, ``/*``, ``*``, ``--``, ``<!--``), and the usual "not implemented" idioms
(``throw new Error("not implemented")``, ``todo!()``, ``unimplemented!()``,
``panic("not implemented")``, ``NotImplementedException``, ``UnsupportedOperationException``).
Documentation and data files are not checked. ``verify.stubs = "warn"`` or ``"off"`` relaxes
or disables the check.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Collection, Iterable, Mapping
from pathlib import PurePosixPath

from buildrunnerd.workspace._protect import Finding, analyse_test_function, is_python_test_file
from buildrunnerd.workspace._tree import Blobs, Tree

__all__ = ["CODE_SUFFIXES", "ProjectModules", "added_lines", "changed_sources", "check_stubs",
           "import_targets", "imported_project_modules", "project_top_levels"]

CODE_SUFFIXES = frozenset({".py", ".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".go", ".rs",
                           ".java", ".kt", ".rb", ".c", ".cc", ".cpp", ".h", ".hpp", ".cs",
                           ".swift", ".php", ".scala", ".sh", ".lua"})
_PLACEHOLDER = re.compile(r"\b(TODO|FIXME)\b")
_COMMENT_START = re.compile(r"(#|//|/\*|^\s*\*|--|<!--)")
_NOT_IMPLEMENTED = re.compile(
    r"throw\s+new\s+Error\s*\(\s*[\"'`](not\s+implemented|todo)|\btodo!\s*\(|"
    r"\bunimplemented!\s*\(|panic\s*\(\s*\"(not\s+implemented|todo)|NotImplementedException|"
    r"UnsupportedOperationException\s*\(\s*\"not\s+implemented|raise\s+NotImplementedError",
    re.IGNORECASE)
_EXEMPT_DECORATORS = frozenset({"abstractmethod", "abstractproperty", "abstractclassmethod",
                                "abstractstaticmethod", "overload"})
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")
_SRC_ROOTS = ("", "src/")


class _TooDeep(Exception):
    pass


def _parse(source: str, path: str = "<unknown>") -> ast.Module | None:
    """The module's AST; None when it does not parse (the compile check reports that).
    Raises :class:`_TooDeep` for code nested beyond what the parser can build."""
    try:
        return ast.parse(source, path)
    except (SyntaxError, ValueError):
        return None
    except (RecursionError, MemoryError) as exc:
        raise _TooDeep(path) from exc


_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _patch_path(text: str) -> str:
    """A path as a patch header names it: as is, or, for a name git quotes (one holding a
    quote, a backslash, a tab, a newline or another control character), unquoted from git's
    C-style form (``"b/geo\\"metry.py"``), undecodable bytes replaced as in every git output
    the daemon reads."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    body, out, i = text[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            digits = body[i + 1:i + 4]
            if len(digits) == 3 and all(d in "01234567" for d in digits):
                out.append(int(digits, 8) & 0xFF)
                i += 4
                continue
            if nxt in _C_ESCAPES:
                out.append(_C_ESCAPES[nxt])
                i += 2
                continue
        out += char.encode()
        i += 1
    return out.decode("utf-8", "replace")


def added_lines(diff: str) -> dict[str, dict[int, str]]:
    """Per file of a ``-U0`` diff, the added lines by line number (in the new file). Lines
    are split at newlines only (git's): a form feed or U+2028 in an added line is content,
    not the start of another line (which could read as a ``+++`` header)."""
    out: dict[str, dict[int, str]] = {}
    current: dict[int, str] | None = None
    line_no = 0
    for raw_line in diff.split("\n"):
        line = raw_line.removesuffix("\r")
        if line.startswith("+++ "):
            path = _patch_path(line[4:])
            current = out.setdefault(path[2:], {}) if path.startswith("b/") else None
        elif line.startswith("@@"):
            match = _HUNK.match(line)
            line_no = int(match[1]) if match else 0
        elif current is not None and line.startswith("+"):
            current[line_no] = line[1:]
            line_no += 1
    return out


# --- Python -------------------------------------------------------------------------------
def _functions(tree: ast.Module) -> dict[str, tuple[ast.FunctionDef | ast.AsyncFunctionDef,
                                                    ast.ClassDef | None]]:
    found: dict[str, tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.ClassDef | None]] = {}

    def walk(body: list[ast.stmt], prefix: str, cls: ast.ClassDef | None) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + stmt.name] = (stmt, cls)
                walk(stmt.body, f"{prefix}{stmt.name}.<locals>.", None)
            elif isinstance(stmt, ast.ClassDef):
                walk(stmt.body, f"{prefix}{stmt.name}.", stmt)
            elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
                for sub in ("body", "orelse", "finalbody"):
                    walk(getattr(stmt, sub, []), prefix, cls)

    walk(tree.body, "", None)
    return found


def _is_stub_body(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
            isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring
    if not body:
        return True
    for stmt in body:
        if isinstance(stmt, ast.Pass):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and \
                stmt.value.value is Ellipsis:
            continue
        if isinstance(stmt, ast.Raise) and stmt.exc is not None:
            exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                continue
        return False
    return True


def _exempt(fn: ast.FunctionDef | ast.AsyncFunctionDef, cls: ast.ClassDef | None) -> bool:
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else (
            target.id if isinstance(target, ast.Name) else "")
        if name in _EXEMPT_DECORATORS:
            return True
    if cls is not None:
        for base in cls.bases:
            name = base.attr if isinstance(base, ast.Attribute) else (
                base.id if isinstance(base, ast.Name) else "")
            if name in ("Protocol", "ABC") or (isinstance(base, ast.Subscript)
                                               and "Protocol" in ast.dump(base)):
                return True
    return False


def _module_candidates(module: str) -> list[str]:
    rel = module.replace(".", "/")
    return [f"{root}{rel}{tail}" for root in _SRC_ROOTS
            for tail in ("/__init__.py", ".py", ".pyi")]


def _is_package_dir(tree: Collection[str], module: str) -> bool:
    rel = module.replace(".", "/") + "/"
    return any(p.startswith(f"{root}{rel}") and p.endswith(".py")
               for root in _SRC_ROOTS for p in tree)


def _module_names(path: str) -> list[str]:
    """The project module names ``path`` makes importable: a top-level ``x.py``, a folder
    ``x/`` with ``x/__init__.py``, and under ``src/`` a ``x.py`` or any folder ``x/`` holding
    Python files (as :func:`project_top_levels` counts them)."""
    if not path.endswith(".py"):
        return []
    names: list[str] = []
    first, sep, rest = path.partition("/")
    if not sep:
        names.append(first[:-3])
    elif rest == "__init__.py" and first.isidentifier():
        names.append(first)
    if path.startswith("src/"):
        inner, sep, _rest = path[4:].partition("/")
        if not sep:
            names.append(inner[:-3])
        elif inner.isidentifier():
            names.append(inner)
    return names


class ProjectModules:
    """The project's top-level module names of one tree, with how many paths make each one
    importable (so a changed path updates them without a pass over the tree)."""

    __slots__ = ("_support", "names")

    def __init__(self, support: dict[str, int]) -> None:
        self._support = support
        self.names = frozenset(n for n, count in support.items() if count > 0) - {
            "conftest", "setup"}

    @classmethod
    def build(cls, tree: Collection[str]) -> ProjectModules:
        support: dict[str, int] = {}
        for path in tree:
            if path.endswith(".py"):
                for name in _module_names(path):
                    support[name] = support.get(name, 0) + 1
        return cls(support)

    def updated(self, old: Collection[str], new: Collection[str],
                paths: Iterable[str]) -> ProjectModules:
        """The modules of ``new``, from these (of ``old``) and the paths where they differ."""
        support = dict(self._support)
        for path in paths:
            step = (path in new) - (path in old)
            if step:
                for name in _module_names(path):
                    support[name] = support.get(name, 0) + step
        return ProjectModules(support)


def project_top_levels(tree: Collection[str]) -> frozenset[str]:
    """The project's importable top-level modules in ``tree``, computed from scratch."""
    return ProjectModules.build(tree).names


def _resolve(module: str | None, level: int, file: str) -> str | None:
    if level == 0:
        return module
    package = PurePosixPath(file).parent.parts
    if PurePosixPath(file).parts[0] == "src":
        package = package[1:]
    if level - 1 > len(package):
        return None
    base = list(package[: len(package) - (level - 1)])
    if module:
        base += module.split(".")
    return ".".join(base) or None


def imported_project_modules(
    source_tree: ast.Module, file: str, lines: Collection[int], project: Collection[str]
) -> list[tuple[str, list[str], int]]:
    """Imports on ``lines`` of project modules: ``(module, names imported from it, line)``."""
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(source_tree):
        if getattr(node, "lineno", None) not in lines:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in project:
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node.module, node.level, file)
            if module and module.split(".")[0] in project:
                found.append((module, [a.name for a in node.names if a.name != "*"],
                              node.lineno))
    return found


def module_path(tree: Collection[str], module: str) -> str | None:
    return next((c for c in _module_candidates(module) if c in tree), None)


def _defined_names(source: str) -> set[str] | None:
    """Top-level names a module defines, or None when it cannot be known (``__getattr__``, a
    star import, a syntax error)."""
    try:
        tree = _parse(source)
    except _TooDeep:
        return None
    if tree is None:
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.arg):
            continue
    if "__getattr__" in names:
        return None
    return names


def _placeholder_lines_py(source: str, lines: Collection[int]) -> list[int]:
    found: list[int] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            # Comments only: a string may well say "TODO" (a to-do list app's data).
            if tok.type == tokenize.COMMENT and _PLACEHOLDER.search(tok.string) and (
                    tok.start[0] in lines):
                found.append(tok.start[0])
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return found


def _check_python(path: str, old: str | None, new: str, added: Mapping[int, str],
                  after: Tree, after_blobs: Blobs, project: Collection[str],
                  findings: list[Finding]) -> None:
    try:
        tree = _parse(new, path)
        old_tree = _parse(old, path) if old is not None else None
    except _TooDeep:
        findings.append(Finding(path, f"{path} is nested too deeply to check; flatten it"))
        return
    if tree is None:
        return  # the compile check reports it
    old_functions = _functions(old_tree) if old_tree is not None else {}
    is_test = is_python_test_file(path)
    stub_exempt = path.endswith(".pyi")
    for qualname, (fn, cls) in _functions(tree).items():
        previous = old_functions.get(qualname)
        if previous is not None and ast.dump(previous[0]) == ast.dump(fn):
            continue  # unchanged
        if is_test and fn.name.startswith("test"):
            info = analyse_test_function(fn)
            if info.asserts == 0 and info.skips == 0:
                findings.append(Finding(path, f"{path}:{fn.lineno}: test {qualname} asserts "
                                        "nothing that can fail; a test must check behaviour",
                                        line=fn.lineno))
        elif not stub_exempt and _is_stub_body(fn) and not _exempt(fn, cls):
            findings.append(Finding(path, f"{path}:{fn.lineno}: {qualname} is a stub (its "
                                    "body is only pass, ... or raise NotImplementedError); "
                                    "implement it", line=fn.lineno))
    for line in _placeholder_lines_py(new, added):
        findings.append(Finding(path, f"{path}:{line}: a TODO/FIXME placeholder; finish the "
                                "work instead of leaving a note", line=line))
    for module, names, line in imported_project_modules(tree, path, added, project):
        target = module_path(after, module)
        if target is None:
            if not _is_package_dir(after, module):
                findings.append(Finding(path, f"{path}:{line}: imports {module}, which does "
                                        "not exist in the project; create it or fix the "
                                        "import", line=line))
            continue
        source = after_blobs.text(after.get(target))
        defined = _defined_names(source) if source is not None else None
        if defined is None:
            continue
        package = target.endswith("__init__.py")
        missing = [n for n in names if n not in defined and not (
            package and module_path(after, f"{module}.{n}") is not None)]
        if missing:
            findings.append(Finding(path, f"{path}:{line}: imports {', '.join(missing)} from "
                                    f"{module} ({target}), which does not define "
                                    f"{'it' if len(missing) == 1 else 'them'}; was the file "
                                    "cut off?", line=line))


def _check_other(path: str, added: Mapping[int, str], findings: list[Finding]) -> None:
    for line, text in sorted(added.items()):
        comment = _COMMENT_START.search(text)
        placeholder = _PLACEHOLDER.search(text)
        if placeholder and comment and comment.start() <= placeholder.start():
            findings.append(Finding(path, f"{path}:{line}: a TODO/FIXME placeholder; finish "
                                    "the work instead of leaving a note", line=line))
        elif _NOT_IMPLEMENTED.search(text):
            findings.append(Finding(path, f"{path}:{line}: a not-implemented placeholder; "
                                    "implement it", line=line))


def changed_sources(after: Tree, diff_added: Mapping[str, Mapping[int, str]]) -> set[str]:
    """The changed Python files: what :func:`check_stubs` parses first."""
    return {p for p in diff_added if p.endswith((".py", ".pyi")) and p in after}


def import_targets(after: Tree, blobs: Blobs, diff_added: Mapping[str, Mapping[int, str]], *,
                   project: Collection[str] | None = None) -> set[str]:
    """The project modules the added import lines of the changed files name (read them too,
    so :func:`check_stubs` can check the imported names). ``project``: the top-level modules
    of ``after`` (default: :func:`project_top_levels`)."""
    if project is None:
        project = project_top_levels(after)
    targets: set[str] = set()
    for path in changed_sources(after, diff_added):
        source = blobs.text(after[path])
        try:
            tree = _parse(source or "", path)
        except _TooDeep:
            continue  # check_stubs reports it
        if tree is None:
            continue
        for module, _, _ in imported_project_modules(tree, path, diff_added[path], project):
            target = module_path(after, module)
            if target is not None:
                targets.add(target)
    return targets


def check_stubs(before: Tree, before_blobs: Blobs, after: Tree, after_blobs: Blobs,
                diff_added: Mapping[str, Mapping[int, str]], *,
                project: Collection[str] | None = None) -> list[Finding]:
    """The placeholders among the batch's added/changed code (see the module docstring).
    ``project``: the top-level modules of ``after`` (default: :func:`project_top_levels`,
    computed once, only when a changed Python file needs it)."""
    findings: list[Finding] = []
    for path, added in sorted(diff_added.items()):
        entry = after.get(path)
        if entry is None or not added:
            continue
        suffix = PurePosixPath(path).suffix
        if suffix not in CODE_SUFFIXES and suffix != ".pyi":
            continue
        if suffix in (".py", ".pyi"):
            new = after_blobs.text(entry)
            if new is None:
                continue
            old = before_blobs.text(before.get(path)) if path in before else None
            if project is None:
                project = project_top_levels(after)
            _check_python(path, old, new, added, after, after_blobs, project, findings)
        else:
            _check_other(path, added, findings)
    return findings
