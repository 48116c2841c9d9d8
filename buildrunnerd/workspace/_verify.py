"""The verification engine: what a batch must pass before it is merged.

The checks, in order (see docs/verification.md): ``files`` (every file the tasks name is a
regular, non-blank file in the tree that will be committed, and the batch changed something),
``compile`` (changed Python files compile), ``protected`` (accepted tests and test
configuration not deleted, weakened or skipped), ``stubs`` (no placeholder code), ``scope``
(no changes to the spec, CI, protected tests or other batches' files), ``import`` when
configured, ``tests`` (the test command passes and its report holds up) and ``secrets`` (no
credentials in the added lines). Every check runs even when an earlier one failed, so one
fix-up round can address everything.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path, PurePosixPath

import anyio
import msgspec
import structlog

from buildrunnerd.config import Config, VerifyConfig
from buildrunnerd.credentials import redact_secrets
from buildrunnerd.errors import SandboxError, WorkspaceError
from buildrunnerd.plan._model import Task
from buildrunnerd.protocol import CheckResult, VerificationReport
from buildrunnerd.sandbox import (
    Confinement,
    WorktreePathError,
    lstat_in,
    read_bytes_in,
    run_confined,
)
from buildrunnerd.workspace._git import git
from buildrunnerd.workspace._pertree import PerTree, is_object_id, tree_changes
from buildrunnerd.workspace._protect import (
    Finding,
    ProtectedTest,
    ProtectedTestFiles,
    check_protected,
    is_protected_path,
)
from buildrunnerd.workspace._repo import stage_all
from buildrunnerd.workspace._report import (
    REPORT_FILENAME,
    TestCommand,
    interpreter_paths,
    judge_report,
    mentions_pytest,
    pytest_env,
    read_report,
)
from buildrunnerd.workspace._report import detect_test_command as _detect_command
from buildrunnerd.workspace._scope import check_scope
from buildrunnerd.workspace._staged import scan_staged
from buildrunnerd.workspace._staging import stage_change
from buildrunnerd.workspace._stubs import (
    ProjectModules,
    added_lines,
    changed_sources,
    check_stubs,
    import_targets,
)
from buildrunnerd.workspace._touched import CleanPoint, restore_touched
from buildrunnerd.workspace._tree import (
    Blobs,
    Entry,
    Tree,
    commit_tree,
    known_tree_id,
    read_blobs,
    remember_index_listing,
    staged_tree,
    write_tree,
    written_tree,
)
from buildrunnerd.workspace._worktree import worktree_git

_log = structlog.get_logger("buildrunnerd.workspace")

__all__ = ["CheckResult", "VerificationReport", "verify", "detect_test_command",
           "OUTPUT_TAIL_BYTES"]

OUTPUT_TAIL_BYTES = 4096
# A Python file larger than this is not compile-checked (a model-made huge file must not be
# read into the daemon's memory); the check fails and says so.
_MAX_COMPILE_BYTES = 16 * 1024 * 1024

# Folders never searched for tests or Python files: not the project's own code.
_SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".tox",
                        ".mypy_cache", ".pytest_cache", "site-packages", "build", "dist"})


def _tail(data: bytes, limit: int = OUTPUT_TAIL_BYTES) -> str:
    text = data[-limit:].decode("utf-8", "replace")
    return ("…" + text) if len(data) > limit else text


def _safe_relpath(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        found += [Path(dirpath) / f for f in filenames]
    return found


async def detect_test_command(
    worktree: Path, *, project_root: Path | None = None, timeout_s: float = 60.0,
) -> str | None:
    """The test command auto-detection would run for ``worktree`` (None: none found), from
    the project's own environment in ``project_root`` (default: the repository the worktree
    belongs to). See :func:`buildrunnerd.workspace._report.detect_test_command`."""
    worktree = Path(worktree)
    if project_root is None:
        project_root = await _project_root(worktree, timeout_s)
    opts = await worktree_git(worktree, timeout_s=timeout_s)
    await stage_all(worktree, opts, timeout_s=timeout_s, what="staging changes for verification")
    tree = await staged_tree(worktree, opts, timeout_s=timeout_s)
    package = tree.get("package.json")
    blobs = await read_blobs(worktree, [package] if package else [], opts, timeout_s=timeout_s)
    found, _ = await _detect_command(project_root, tree, Path(tempfile.gettempdir())
                                     / REPORT_FILENAME, package_json=blobs.text(package))
    return found.display if found is not None else None


async def _project_root(worktree: Path, timeout_s: float) -> Path | None:
    """The user's checkout of the repository ``worktree`` belongs to (where its untracked
    ``.venv`` lives), or None."""
    opts = await worktree_git(worktree, timeout_s=timeout_s)
    res = await git([*opts, "rev-parse", "--path-format=absolute", "--git-common-dir"],
                    cwd=worktree, timeout_s=timeout_s, check=False)
    common = Path(res.stdout.strip()) if res.ok else None
    if common is None or common.name != ".git":
        return None
    return common.parent


def _compile_all(worktree: Path, files: list[str]) -> list[CheckResult]:
    # compile() rather than py_compile: the same syntax check without writing .pyc files
    # into the worktree (they would land in the batch's commit).
    problems: list[CheckResult] = []
    for name in files:
        # Read race-free: a .py symlink (to a file outside, a FIFO, /dev/zero) is not
        # followed, so it is not compiled (git commits it as a link); nor is a huge file read.
        try:
            source = read_bytes_in(worktree, name, max_bytes=_MAX_COMPILE_BYTES)
        except WorktreePathError as exc:
            if exc.problem not in ("missing", "symlink", "is_directory"):
                problems.append(CheckResult("compile", False, exc.message, file=name))
            continue
        try:
            compile(source, name, "exec", dont_inherit=True)
        except SyntaxError as exc:
            where = f"{name}:{exc.lineno}" if exc.lineno else name
            problems.append(CheckResult(
                "compile", False, f"{where}: {exc.msg}" + (
                    f"\n    {exc.text.rstrip()}" if exc.text else ""),
                file=name, line=exc.lineno))
        except (ValueError, OSError) as exc:  # null bytes, unreadable file
            problems.append(CheckResult("compile", False, f"{name}: {exc}", file=name))
        except (RecursionError, MemoryError):
            problems.append(CheckResult("compile", False, f"{name}: nested too deeply to "
                                        "compile; flatten it", file=name))
    return problems or [CheckResult("compile", True, f"{len(files)} Python file(s) compile")]


class _Change:
    """A batch's staged change against the commit it started from: the ``-U0`` patch, the
    paths where the index differs from the start (sorted), both listings, whether the
    worktree held exactly the index after staging (see :class:`._staging.Staged`), and the
    changed paths whose names are not UTF-8 (their bytes escaped)."""

    __slots__ = ("after", "before", "changed", "diff", "exact", "undecodable")

    def __init__(self, diff: str, changed: list[str], before: Tree, after: Tree,
                 exact: bool | None, undecodable: list[str]) -> None:
        self.diff = diff
        self.changed = changed
        self.before = before
        self.after = after
        self.exact = exact
        self.undecodable = undecodable


def _undecodable_paths(out: bytes) -> list[str]:
    """The paths of the raw records that open ``diff --raw -z`` output ``out`` whose bytes
    are not UTF-8, shown escaped (``caf\\xe9.py``). git's output is read as UTF-8 with
    undecodable bytes replaced, so two such names (``a\\xfe``, ``a\\xff``) read as one path:
    the checks and the secret scan would see one file of the two."""
    found: list[str] = []
    pos = 0
    while out.startswith(b":", pos):
        header_end = out.find(b"\0", pos)
        path_end = out.find(b"\0", header_end + 1) if header_end >= 0 else -1
        if path_end < 0:
            break
        name = out[header_end + 1:path_end]
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            found.append(name.decode("utf-8", "backslashreplace"))
        pos = path_end + 1
    return found


def _split_raw(out: str) -> tuple[list[tuple[list[str], str]], str] | None:
    """``diff --raw -p -z`` output split into its raw records (``[old mode, new mode, old
    sha, new sha, status]``, path) and the patch; None when it is not in that form."""
    records: list[tuple[list[str], str]] = []
    pos = 0
    while out.startswith(":", pos):
        header_end = out.find("\0", pos)
        path_end = out.find("\0", header_end + 1) if header_end >= 0 else -1
        if path_end < 0:
            return None
        fields = out[pos + 1:header_end].split(" ")
        if len(fields) != 5:
            return None
        records.append((fields, out[header_end + 1:path_end]))
        pos = path_end + 1
    if out.startswith("\0", pos):
        pos += 1
    return records, out[pos:]


async def _stage_and_diff(worktree: Path, base_commit: str, timeout_s: float) -> _Change:
    """Stage everything (as the commit will, see :mod:`._staging`) and read what the index
    now holds against ``base_commit``: one diff gives the patch and, in its raw part, every
    path where the two differ with its new mode and blob, so the index's listing is the start
    commit's listing changed there (no listing of the whole index)."""
    opts = await worktree_git(worktree, timeout_s=timeout_s)
    staged = await stage_change(worktree, opts, timeout_s=timeout_s,
                                what="staging changes for verification")
    opts = await worktree_git(worktree, timeout_s=timeout_s)  # again: staging ran git on it
    before = await commit_tree(worktree, base_commit, opts, timeout_s=timeout_s)
    res = await git(
        ["-c", "core.quotePath=false", *opts, "diff", "--cached", "--raw", "-p", "-z",
         "--no-abbrev", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames",
         "-U0", base_commit, "--"],
        cwd=worktree, timeout_s=timeout_s, what="diffing the batch's changes",
    )
    split = _split_raw(res.stdout)
    after: Tree | None = dict(before) if split is not None else None
    for fields, path in split[0] if split is not None else ():
        _old_mode, new_mode, _old_sha, new_sha, status = fields
        if after is None:
            break
        if status.startswith("D"):
            after.pop(path, None)
        elif status[:1] in ("A", "M", "T") and new_sha.strip("0"):
            after[path] = Entry(new_mode, new_sha)
        else:
            after = None  # unmerged, or a form not expected: list the index instead
    if split is None or after is None:
        after = await staged_tree(worktree, opts, timeout_s=timeout_s)
        changed = tree_changes(before, after)
        diff = split[1] if split is not None else res.stdout
    else:
        # The index's listing, shared with the checks, the secret scan and the next reset
        # (until the index changes).
        remember_index_listing(opts, after)
        changed = sorted({path for _fields, path in split[0]})
        diff = split[1]
    return _Change(diff, changed, before, after, staged.exact,
                   _undecodable_paths(res.stdout_bytes))


async def _run_confined_check(
    command: str,
    *,
    worktree: Path,
    timeout_s: float,
    name: str,
    confinement: Confinement,
    ok_codes: frozenset[int] = frozenset({0}),
    env: dict[str, str] | None = None,
    writable: Sequence[str] = (),
    readonly: Sequence[str] = (),
) -> CheckResult:
    """Run ``command`` with ``sh -c`` in the sandbox, output merged and its tail kept. The
    command's own interpreter (a virtualenv) is visible read-only; nothing else of the host
    is. When it ends, or on timeout, every process it started is killed."""
    try:
        sandbox = confinement.require()
        result = await run_confined(
            sandbox, ["/bin/sh", "-c", command],
            confinement.policy(worktree, command=command, env=env, writable=writable,
                               readonly=readonly),
            timeout_s=timeout_s,
            max_output_bytes=OUTPUT_TAIL_BYTES)
    except SandboxError as exc:
        return CheckResult(name, False, f"cannot run `{command}` confined: {exc}")
    tail = _tail(result.output, limit=OUTPUT_TAIL_BYTES)
    if result.output_bytes > len(result.output):
        tail = "…" + tail.lstrip("…")
    if result.timed_out:
        return CheckResult(name, False, f"`{command}` did not finish within {timeout_s:g} s "
                           "(killed); make it faster or raise verify.test_timeout_s",
                           output_tail=tail)
    if result.returncode not in ok_codes:
        return CheckResult(name, False, f"`{command}` failed (exit {result.returncode}); "
                           "see the output tail", output_tail=tail,
                           exit_code=result.returncode)
    return CheckResult(name, True, f"`{command}` passed", output_tail=tail,
                       exit_code=result.returncode)


def _redact_tail(tail: str) -> str:
    # A tail cut mid-line may start inside a key, past the prefix a pattern needs: drop the
    # partial first line.
    if tail.startswith("…"):
        tail = "…" + tail.partition("\n")[2]
    return redact_secrets(tail)


async def _write_tree(worktree: Path, opts: Sequence[str], timeout_s: float) -> str:
    return await write_tree(worktree, opts, timeout_s=timeout_s)


async def _written_by_tests(worktree: Path, before: str, opts: Sequence[str],
                            timeout_s: float) -> list[CheckResult]:
    """The index was staged again after the tests (for the secret scan, as the commit will):
    files the test run wrote or changed would be committed without the checks above having
    seen them. Fail naming them."""
    after = await _write_tree(worktree, opts, timeout_s)
    if after == before:
        return []
    res = await git([*opts, "diff-tree", "-r", "--name-only", "-z", before, after],
                    cwd=worktree, timeout_s=timeout_s, check=False)
    paths = sorted(p for p in res.stdout.split("\0") if p)
    shown = ", ".join(paths[:10]) + (" ..." if len(paths) > 10 else "")
    return [CheckResult("tests", False, f"the test run changed files that would be committed "
                        f"({shown}); tests must not write into the repository: write to a "
                        "temporary folder, or ignore generated files in .gitignore")]


async def _exact_tree(worktree: Path, opts: Sequence[str], staged_tree_id: str,
                      timeout_s: float) -> str | None:
    """``staged_tree_id`` (the index's tree, just written) when the worktree holds nothing
    else (no ignored file, no byte-code or tool cache that a test could read instead of the
    committed source); None otherwise."""
    # Right before the test command (the import check ran model code): nothing untracked or
    # ignored, nothing changed or deleted since staging (the second status column: worktree
    # against index; the first is the batch's staged change). One call for both.
    # --ignore-submodules: never look inside a nested repository (its config is the model's).
    status = await git([*opts, "status", "--porcelain", "-z", "--no-renames", "--ignored",
                        "--untracked-files=all", "--ignore-submodules=all"],
                       cwd=worktree, timeout_s=timeout_s, check=False)
    if not status.ok:
        return None
    for record in status.stdout.split("\0"):
        if record and (record[:2] in ("??", "!!") or record[1:2] != " "):
            return None
    # status does not write the index (GIT_OPTIONAL_LOCKS=0), so its tree is still
    # ``staged_tree_id``.
    return staged_tree_id


async def _as_checked_out(worktree: Path, opts: Sequence[str], staged: Tree, staged_tree_id: str,
                          clean: CleanPoint | None, timeout_s: float) -> str | None:
    """The staged tree's id when the worktree is now as a checkout of it writes it, else None.

    The batch's test run becomes the run branch's check when the merge commits exactly this
    tree, so it must not pass on what only the batch's worktree holds: ``status`` sees the
    contents, not a mode, an mtime, a link, an attribute, an empty folder, a FIFO. What
    changed since the worktree's clean point is put back first (:mod:`._touched`)."""
    if clean is None:
        return None
    try:
        await restore_touched(worktree, opts, root=worktree.parent, clean=clean,
                              tracked=staged, timeout_s=timeout_s)
    except WorkspaceError as exc:
        _log.info("verify.not_restored", worktree=str(worktree), error=str(exc))
        return None
    return staged_tree_id  # checkout-index wrote files and stat data, not the index's tree


async def _nothing_to_stage(worktree: Path, opts: Sequence[str], timeout_s: float) -> bool:
    """Whether ``git add -A`` would leave the index as it is: no tracked file changed,
    deleted or retyped since staging, and no untracked file that is not ignored (the same
    stat and content comparison ``add`` makes; ``status`` does not write the index, so its
    listing and written tree stay valid)."""
    status = await git([*opts, "status", "--porcelain", "-z", "--no-renames",
                        "--untracked-files=all", "--ignore-submodules=all"],
                       cwd=worktree, timeout_s=timeout_s, check=False)
    if not status.ok:
        return False
    return all(not record or (record[:2] != "??" and record[1:2] == " ")
               for record in status.stdout.split("\0"))


def _guarded(name: str, check: Callable[[], list[Finding]]) -> list[Finding]:
    """Run an AST check; code nested too deeply to walk fails it rather than the daemon."""
    try:
        return check()
    except (RecursionError, MemoryError):
        return [Finding("", f"the batch's code is nested too deeply for the {name} check; "
                        "flatten it")]


def _checks(name: str, findings: Sequence[Finding], *, passed: bool = False
            ) -> list[CheckResult]:
    return [CheckResult(name, passed, f.message, file=f.file or None, line=f.line)
            for f in findings]


async def _check_files_in_tree(
    worktree: Path, tasks: Sequence[Task], after: Tree, changed: Collection[str], blobs: Blobs,
    opts: Sequence[str], timeout_s: float,
) -> list[CheckResult]:
    """Every file the tasks name, as the commit will hold it: staged (not ignored away), a
    regular file (not a symlink, not a submodule), with non-whitespace content. And a batch
    whose tasks name files must change something."""
    problems: list[CheckResult] = []
    named = 0
    for task in tasks:
        for name in task.files:
            named += 1
            rel = _safe_relpath(name)
            if rel is None:
                problems.append(CheckResult(
                    "files", False, f"task {task.id} names {name!r}, which is outside the "
                    "repository; name files relative to the repository root", file=name))
                continue
            path = rel.as_posix()
            entry = after.get(path)
            what = f"task {task.id} ({task.title})"
            if entry is None:
                if any(p.startswith(path + "/") for p in after):
                    message = f"{path} is a folder; task {task.id} names it as a file"
                elif (await git([*opts, "check-ignore", "-q", "--", path], cwd=worktree,
                                timeout_s=timeout_s, check=False)).ok:
                    message = (f"{path} is ignored by git (.gitignore or info/exclude), so it "
                               f"would never be committed; {what} must create it as a "
                               "committed file: do not ignore it")
                else:
                    message = f"{path} does not exist; {what} must create it"
                    try:  # on disk but not staged: something git cannot commit
                        st = await anyio.to_thread.run_sync(lstat_in, worktree, path)
                        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                            message = (f"{path} is a FIFO, socket or device, not a regular "
                                       f"file; {what} must write the file itself")
                    except WorktreePathError:
                        pass
                problems.append(CheckResult("files", False, message, file=path))
            elif entry.mode == "120000":
                problems.append(CheckResult(
                    "files", False, f"{path} is a symbolic link; {what} must write it as a "
                    "regular file", file=path))
            elif not entry.regular:
                problems.append(CheckResult(
                    "files", False, f"{path} is not a regular file (git mode {entry.mode}); "
                    f"{what} must write it as a file", file=path))
            else:
                content = blobs.raw(entry)
                if content is not None and not content.strip():
                    state = "is empty" if not content else "holds only whitespace"
                    problems.append(CheckResult(
                        "files", False, f"{path} {state}; {what} must write its content",
                        file=path))
    if named and not problems and not changed:
        ids = ", ".join(t.id for t in tasks if t.files)
        problems.append(CheckResult(
            "files", False, f"no change made: the batch's tasks ({ids}) name files but the "
            "batch changed nothing; do the work the tasks describe"))
    return problems or [CheckResult("files", True, f"{named} named file(s) committed")]


# The project's top-level modules and the protected test files of the trees verification
# sees, kept by tree id and derived from one tree to the next by its change (._pertree).
_MODULES: PerTree[ProjectModules] = PerTree(
    ProjectModules.build, lambda value, old, new, paths: value.updated(old, new, paths))
_TEST_FILES: PerTree[ProtectedTestFiles] = PerTree(
    ProtectedTestFiles.build, lambda value, old, new, paths: value.updated(old, new, paths))


def _tree_key(commit: str) -> str | None:
    """What names ``commit``'s tree in the per-tree caches: its tree id when the daemon made
    the commit, else the commit id itself (None for a name that can move)."""
    return known_tree_id(commit) or (commit if is_object_id(commit) else None)


class _Trees:
    """What the checks read: the accepted and the staged tree, the paths where they differ,
    the blobs, and what depends on the whole tree (the staged tree's top-level modules, the
    protected test files of both)."""

    __slots__ = ("after", "before", "blobs", "changed", "modules", "tests_after",
                 "tests_before")

    def __init__(self, before: Tree, after: Tree, changed: list[str], blobs: Blobs,
                 modules: ProjectModules, tests_before: ProtectedTestFiles,
                 tests_after: ProtectedTestFiles) -> None:
        self.before = before
        self.after = after
        self.changed = changed
        self.blobs = blobs
        self.modules = modules
        self.tests_before = tests_before
        self.tests_after = tests_after


async def _read_trees(
    worktree: Path, base_commit: str, tasks: Sequence[Task], change: _Change | None,
    opts: Sequence[str], timeout_s: float,
) -> _Trees:
    """The trees, the blobs the checks read and the per-tree answers (``change`` None: the
    run branch's check, nothing staged)."""
    if change is None:
        before = await commit_tree(worktree, base_commit, opts, timeout_s=timeout_s)
        after = await staged_tree(worktree, opts, timeout_s=timeout_s)
        changed, diff = tree_changes(before, after), ""
    else:
        before, after, changed, diff = change.before, change.after, change.changed, change.diff
    key = _tree_key(base_commit)
    tests_before = _TEST_FILES.get(key, before)
    tests_after = _TEST_FILES.derive(tests_before, before, after, changed)
    modules = _MODULES.derive(_MODULES.get(key, before), before, after, changed)
    added = added_lines(diff)
    named = {n for t in tasks for n in t.files}
    sources = changed_sources(after, added)
    protected = {p for p in changed if is_protected_path(p)}
    entries = [before[p] for p in protected | sources if p in before]
    entries += tests_before.unread_entries()
    entries += [after[p] for p in protected | named | sources if p in after]
    if "package.json" in after:  # for the test command's detection
        entries.append(after["package.json"])
    blobs = await read_blobs(worktree, entries, opts, timeout_s=timeout_s)
    targets = import_targets(after, blobs, added, project=modules.names) - sources
    if targets:
        blobs.update(await read_blobs(worktree, [after[p] for p in targets], opts,
                                      timeout_s=timeout_s))
    return _Trees(before, after, changed, blobs, modules, tests_before, tests_after)


async def _run_tests(
    worktree: Path, command: TestCommand, *, config: VerifyConfig, confinement: Confinement,
    report_path: Path, protected: list[ProtectedTest], baseline_passed: Collection[str] | None,
) -> tuple[list[CheckResult], dict[str, int] | None, list[str]]:
    """Run the test command confined (the report's folder its one writable place outside the
    worktree), then judge its JUnit report (when pytest ran)."""
    env = {} if command.junit else pytest_env(report_path)
    readonly = command.readonly or await interpreter_paths(command.command)
    result = await _run_confined_check(
        command.command, worktree=worktree, name="tests", timeout_s=config.test_timeout_s,
        confinement=confinement, env=env, writable=[str(report_path.parent)],
        readonly=readonly)
    # The messages name the command as the user knows it (and stay the same from one round
    # to the next: the report's folder is new every time).
    result = msgspec.structs.replace(
        result, message=result.message.replace(command.command, command.display))
    expect_report = command.junit or mentions_pytest(command.command)
    report, why = await read_report(report_path)
    if report is None and not expect_report:
        if result.passed:
            result = msgspec.structs.replace(
                result, message=f"{result.message} (judged by its exit code only: it is not a "
                "pytest run, so there is no report to read)")
        return [result], None, []
    verdicts, counts = judge_report(report, why_missing=why, returncode=result.exit_code,
                                    protected=protected, baseline_passed=baseline_passed,
                                    command=command.display)
    checks = [result] if not (result.passed and verdicts) else []
    checks += [CheckResult("tests", v.passed, v.message, output_tail=result.output_tail)
               for v in verdicts]
    if result.passed and not verdicts:
        checks = [msgspec.structs.replace(
            result, message=f"`{command.display}` passed: {counts.passed} passed, "
            f"{counts.skipped} skipped, {counts.protected_passed} protected test case(s) "
            "passed")]
    passed_ids = sorted({f"{c.classname}::{c.function}" for c in (report.cases if report
                                                                  else [])
                         if c.outcome == "passed"})
    return checks, msgspec.to_builtins(counts), passed_ids


async def verify(
    worktree: Path,
    tasks: Sequence[Task],
    *,
    base_commit: str | None = None,
    run_base_commit: str | None = None,
    test_cmd: str | None = None,
    config: VerifyConfig | None = None,
    confinement: Confinement | None = None,
    project_root: Path | None = None,
    other_files: Collection[str] = (),
    spec_path: str | None = None,
    baseline_passed: Collection[str] | None = None,
    batch_checks: bool = True,
    clean: CleanPoint | None = None,
) -> VerificationReport:
    """Verify a batch's work in ``worktree`` (see the module docstring for the checks).

    ``base_commit`` is the commit the worktree started from (default: its HEAD, which is the
    same while the batch is uncommitted): the accepted state the batch is compared with.
    ``run_base_commit`` is the commit the *run* started from, where the repository's secret
    allowlist is read (default: ``base_commit``, right only for a run's first batch).
    ``test_cmd`` (per run or from the spec, resolved by the caller) wins over
    ``config.test_cmd``, which wins over auto-detection from the project's environment in
    ``project_root`` (default: the repository the worktree belongs to). ``other_files`` are
    the files other batches' tasks name and ``spec_path`` the run's spec (repository-relative),
    for the scope check. ``baseline_passed``: the protected tests that passed at the last
    verified commit. ``confinement``: the daemon's sandbox (default: the one ``config``
    selects), in which the import check and the test command run. ``batch_checks=False``
    runs only the tests (the run branch's check), in a worktree that is a clean checkout of
    ``base_commit`` (nothing is staged). ``clean``: the worktree's clean point
    (:func:`._touched.clean_point`); without it the batch's test run is never reported as a
    test of the staged tree (``tree``).
    Raises :class:`WorkspaceError` only for failures outside the batch's work (git failing,
    an unreadable allowlist).
    """
    config = config or VerifyConfig()
    worktree = Path(worktree)
    t = config.git_timeout_s
    opts = await worktree_git(worktree, timeout_s=t)
    if base_commit is None:
        base_commit = (await git([*opts, "rev-parse", "HEAD"], cwd=worktree, timeout_s=t,
                                 what="reading the worktree's commit")).stdout.strip()
    if project_root is None:
        project_root = await _project_root(worktree, t)
    checks: list[CheckResult] = []
    # The run branch's check runs in a worktree just reset to ``base_commit`` and found clean
    # (RunRepo.acquire_worktree), where nothing ran since: nothing to stage, no change.
    change = await _stage_and_diff(worktree, base_commit, t) if batch_checks else None
    opts = await worktree_git(worktree, timeout_s=t)  # again: staging ran git on it
    trees = await _read_trees(worktree, base_commit, tasks, change, opts, t)
    before, after, blobs, changed = trees.before, trees.after, trees.blobs, trees.changed
    diff = change.diff if change is not None else ""
    named = {n for task in tasks for n in task.files}

    if batch_checks:
        checks += await _check_files_in_tree(worktree, tasks, after, changed, blobs, opts, t)
        checks += [CheckResult(
            "files", False, f"{name}: the file name is not valid UTF-8, so verification "
            "cannot check this file apart from others (it reads names as UTF-8); rename it "
            "to a UTF-8 name", file=name) for name in (change.undecodable if change else [])]
        # The changed Python files by their exact names (the raw diff's, not the patch's
        # headers, which quote unusual names and hold no `+++` line for a binary file).
        py_files = [p for p in changed if p.endswith(".py") and p in after]
        checks += await anyio.to_thread.run_sync(_compile_all, worktree, py_files)
        protected_findings = await anyio.to_thread.run_sync(
            lambda: _guarded("protected", lambda: check_protected(
                before, blobs, after, blobs, named=named, changed=changed)))
        checks += _checks("protected", protected_findings) or [CheckResult(
            "protected", True, "no protected test or test setting deleted, weakened or "
            "skipped")]
        if config.stubs != "off":
            project = trees.modules.names
            stubs = await anyio.to_thread.run_sync(
                lambda: _guarded("stubs", lambda: check_stubs(
                    before, blobs, after, blobs, added_lines(diff), project=project)))
            checks += _checks("stubs", stubs, passed=config.stubs == "warn") or [
                CheckResult("stubs", True, "no placeholder code")]
        scope = check_scope(before, after, own_files=named, other_files=set(other_files),
                            spec_path=spec_path, globs=config.scope_globs,
                            strict=config.scope == "strict",
                            already_reported={f.file for f in protected_findings},
                            changed=changed)
        checks += _checks("scope", scope.failures)
        checks += _checks("scope", scope.warnings, passed=True)
        if scope.outside:
            shown = ", ".join(scope.outside[:20]) + (" ..." if len(scope.outside) > 20 else "")
            checks.append(CheckResult("scope", True, f"changed outside the batch's files: "
                                      f"{shown}"))
        elif not scope.failures and not scope.warnings:
            checks.append(CheckResult("scope", True, "every change is within the batch's "
                                      "files and tests"))

    if confinement is None:
        confinement = await Confinement.create(Config(verify=config))
    if config.import_check and batch_checks:
        checks.append(await _run_confined_check(
            config.import_check, worktree=worktree, name="import",
            timeout_s=config.test_timeout_s, confinement=confinement,
            readonly=await interpreter_paths(config.import_check)))

    staged_tree_id = await _write_tree(worktree, opts, t)
    if change is not None and written_tree(opts) == staged_tree_id:
        # The staged tree's answers, for the next batch (which starts from this tree when
        # its merge is a fast-forward).
        _MODULES.put(staged_tree_id, after, trees.modules)
        _TEST_FILES.put(staged_tree_id, after, trees.tests_after)
    tested_tree: str | None = None
    if change is not None:
        if change.exact and not config.import_check:
            # Staging's status found the worktree holding exactly the index, and nothing ran
            # since: what the tests will see is the staged tree.
            tested_tree = staged_tree_id
        elif change.exact is None or change.exact:
            tested_tree = await _exact_tree(worktree, opts, staged_tree_id, t)
    if tested_tree is not None:
        tested_tree = await _as_checked_out(worktree, opts, after, tested_tree, clean, t)
    report_dir = Path(await anyio.to_thread.run_sync(
        lambda: tempfile.mkdtemp(prefix="buildrunner-report-")))
    report_path = report_dir / REPORT_FILENAME
    counts: dict[str, int] | None = None
    passed_ids: list[str] = []
    try:
        configured = test_cmd or config.test_cmd
        command: TestCommand | None
        if configured:
            command, why = TestCommand(configured, display=configured), ""
        else:
            command, why = await _detect_command(
                project_root, {**before, **after}, report_path,
                package_json=blobs.text(after.get("package.json")))
        if command is None:
            checks.append(CheckResult("tests", True, f"tests not run: {why}"))
        else:
            protected = trees.tests_before.tests(blobs, named=named)
            found, counts, passed_ids = await _run_tests(
                worktree, command, config=config, confinement=confinement,
                report_path=report_path,
                protected=protected, baseline_passed=baseline_passed)
            checks += found
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(report_dir, ignore_errors=True))

    if batch_checks:
        # Last, over the staged tree: what the tests wrote is committed too. When the test
        # run left nothing `add -A` would stage, the index is already that tree.
        opts = await worktree_git(worktree, timeout_s=t)  # again: the tests ran there
        restage = not await _nothing_to_stage(worktree, opts, t)
        # The index unchanged since the diff listed it (only the daemon's git writes it):
        # the scan reads the changed paths the diff named, not the whole listing.
        unchanged = not restage and written_tree(opts) == staged_tree_id
        findings = await scan_staged(worktree, base_commit=base_commit, config=config,
                                     timeout_s=t, run_base_commit=run_base_commit or base_commit,
                                     git_options=opts, stage=restage,
                                     changed=changed if unchanged else None)
        if findings:
            checks += [CheckResult("secrets", False, f.message(), file=f.file,
                                   line=f.line or None) for f in findings]
        else:
            checks.append(CheckResult("secrets", True, "no credentials in what will be "
                                      "committed"))
        if restage:
            checks += await _written_by_tests(worktree, staged_tree_id, opts, t)
    for check in checks:  # the report is stored, sent in events and to the model
        check.message = redact_secrets(check.message)
        if check.output_tail:
            check.output_tail = _redact_tail(check.output_tail)
    return VerificationReport(passed=all(c.passed for c in checks), checks=checks,
                              test_command=command.display if command else None,
                              test_counts=counts, passed_tests=passed_ids,
                              tree=tested_tree)
