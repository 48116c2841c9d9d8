"""The verification engine: what a batch must pass before it is merged.

Four checks, in order (see docs/verification.md): ``files`` (every file the tasks name exists
and is non-empty), ``compile`` (changed Python files compile; then ``import`` when configured),
``tests`` (the test command passes) and ``secrets`` (no credentials in what will be committed,
scanned last so files the tests wrote count too: see :mod:`._staged`). Every
check runs even when an earlier one failed, so one fix-up round can address everything.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import msgspec

from buildrunnerd.config import Config, VerifyConfig
from buildrunnerd.credentials import redact_secrets
from buildrunnerd.errors import SandboxError
from buildrunnerd.plan._model import Task
from buildrunnerd.sandbox import (
    Confinement,
    WorktreePathError,
    lstat_in,
    read_bytes_in,
    run_confined,
)
from buildrunnerd.workspace._git import git
from buildrunnerd.workspace._repo import stage_all
from buildrunnerd.workspace._staged import scan_staged
from buildrunnerd.workspace._worktree import worktree_git

__all__ = ["CheckResult", "VerificationReport", "verify", "detect_test_command",
           "OUTPUT_TAIL_BYTES"]

OUTPUT_TAIL_BYTES = 4096
# A Python file larger than this is not compile-checked (a model-made huge file must not be
# read into the daemon's memory); the check fails and says so.
_MAX_COMPILE_BYTES = 16 * 1024 * 1024

# Folders never searched for tests or Python files: not the project's own code.
_SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".tox",
                        ".mypy_cache", ".pytest_cache", "site-packages", "build", "dist"})


class CheckResult(msgspec.Struct, omit_defaults=True):
    """One check's outcome (or one problem it found)."""

    name: str  # files | compile | import | tests | secrets
    passed: bool
    message: str
    file: str | None = None
    line: int | None = None
    output_tail: str | None = None


class VerificationReport(msgspec.Struct):
    """All checks of one verification. ``passed`` iff every check passed."""

    passed: bool
    checks: list[CheckResult]
    test_command: str | None = None

    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the store, events and a fix-up prompt."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    def summary(self) -> str:
        """One line per failure (or "all checks passed"), for task state reasons and logs."""
        if self.passed:
            return "all checks passed"
        return "; ".join(
            f"{c.name}: {c.file + (f':{c.line}' if c.line else '') + ': ' if c.file else ''}"
            f"{c.message.splitlines()[0] if c.message else ''}"
            for c in self.failures()
        )


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


def detect_test_command(worktree: Path) -> str | None:
    """pytest (with the daemon's Python) when the tree has tests: a ``tests/`` folder or
    ``test_*.py`` / ``*_test.py`` files. None when there is nothing to run."""
    has_tests = (worktree / "tests").is_dir() or any(
        p.suffix == ".py" and (p.name.startswith("test_") or p.stem.endswith("_test"))
        for p in _walk(worktree)
    )
    if not has_tests:
        return None
    # No cache folder: it would end up in the batch's commit.
    return f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider"


async def _check_files(worktree: Path, tasks: Sequence[Task]) -> list[CheckResult]:
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
            # No symlink is followed, and only a regular file counts (sandbox._fs).
            try:
                st = await anyio.to_thread.run_sync(lstat_in, worktree, rel.as_posix())
            except WorktreePathError as exc:
                problems.append(CheckResult(
                    "files", False, f"{name} does not exist; task {task.id} ({task.title}) "
                    "must create it" if exc.problem == "missing" else
                    f"{name} cannot be checked: {exc.message}", file=name))
                continue
            if stat.S_ISDIR(st.st_mode):
                problems.append(CheckResult(
                    "files", False, f"{name} is a folder; task {task.id} names it as a file",
                    file=name))
            elif not stat.S_ISREG(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "a FIFO, socket or device"
                problems.append(CheckResult(
                    "files", False, f"{name} is {what}, not a regular file; task {task.id} "
                    f"({task.title}) must write the file itself", file=name))
            elif st.st_size == 0:
                problems.append(CheckResult(
                    "files", False, f"{name} is empty; task {task.id} ({task.title}) must "
                    "write its content", file=name))
    return problems or [CheckResult("files", True, f"{named} named file(s) present")]


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
    return problems or [CheckResult("compile", True, f"{len(files)} Python file(s) compile")]


async def _changed_files(worktree: Path, base_commit: str, timeout_s: float) -> str:
    """Stage everything (as the commit will) and return the diff against ``base_commit``.

    Staging makes new, untracked files part of the diff. The index is the batch's private one
    (the worktree's), and commit_and_merge stages the same set anyway.
    """
    opts = await worktree_git(worktree, timeout_s=timeout_s)
    await stage_all(worktree, opts, timeout_s=timeout_s,
                    what="staging changes for verification")
    res = await git(
        ["-c", "core.quotePath=false", *opts, "diff", "--cached", "--no-color", "--no-ext-diff",
         "--no-textconv", "--no-renames", "-U0", base_commit, "--"],
        cwd=worktree, timeout_s=timeout_s, what="diffing the batch's changes",
    )
    return res.stdout


def _changed_python_files(diff: str) -> list[str]:
    files: list[str] = []
    for line in diff.splitlines():
        if line.startswith("+++ b/") and line.endswith(".py"):
            files.append(line[6:])
    return files


async def _run_confined_check(
    command: str,
    *,
    worktree: Path,
    timeout_s: float,
    name: str,
    confinement: Confinement,
    ok_codes: frozenset[int] = frozenset({0}),
) -> CheckResult:
    """Run ``command`` with ``sh -c`` in the sandbox, output merged and its tail kept. The
    command's own interpreter (a virtualenv) is visible read-only; nothing else of the host
    is. When it ends, or on timeout, every process it started is killed."""
    try:
        sandbox = confinement.require()
        result = await run_confined(
            sandbox, ["/bin/sh", "-c", command],
            confinement.policy(worktree, command=command), timeout_s=timeout_s,
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
                           "see the output tail", output_tail=tail)
    return CheckResult(name, True, f"`{command}` passed", output_tail=tail)


def _redact_tail(tail: str) -> str:
    # A tail cut mid-line may start inside a key, past the prefix a pattern needs: drop the
    # partial first line.
    if tail.startswith("…"):
        tail = "…" + tail.partition("\n")[2]
    return redact_secrets(tail)


async def verify(
    worktree: Path,
    tasks: Sequence[Task],
    *,
    base_commit: str | None = None,
    run_base_commit: str | None = None,
    test_cmd: str | None = None,
    config: VerifyConfig | None = None,
    confinement: Confinement | None = None,
) -> VerificationReport:
    """Verify a batch's work in ``worktree`` (see the module docstring for the checks).

    ``base_commit`` is the commit the worktree started from (default: its HEAD, which is the
    same while the batch is uncommitted): the secret scan looks at lines added since then.
    ``run_base_commit`` is the commit the *run* started from, where the repository's secret
    allowlist is read (default: ``base_commit``, right only for a run's first batch).
    ``test_cmd`` (per run or from the spec, resolved by the caller) wins over
    ``config.test_cmd``, which wins over auto-detection. Raises :class:`WorkspaceError` only
    for failures outside the batch's work (git failing, an unreadable allowlist).
    """
    config = config or VerifyConfig()
    worktree = Path(worktree)
    t = config.git_timeout_s
    if base_commit is None:
        opts = await worktree_git(worktree, timeout_s=t)
        base_commit = (await git([*opts, "rev-parse", "HEAD"], cwd=worktree, timeout_s=t,
                                 what="reading the worktree's commit")).stdout.strip()
    checks: list[CheckResult] = []
    checks += await _check_files(worktree, tasks)

    diff = await _changed_files(worktree, base_commit, t)
    py_files = _changed_python_files(diff)
    checks += await anyio.to_thread.run_sync(_compile_all, worktree, py_files)

    if confinement is None:
        confinement = await Confinement.create(Config(verify=config))
    if config.import_check:
        checks.append(await _run_confined_check(
            config.import_check, worktree=worktree, name="import",
            timeout_s=config.test_timeout_s, confinement=confinement))

    command = test_cmd or config.test_cmd
    ok_codes = frozenset({0})
    if command is None:
        command = await anyio.to_thread.run_sync(detect_test_command, worktree)
        # pytest's "no tests collected": an empty tests/ folder is not a failure of the batch.
        ok_codes = frozenset({0, 5})
    if command is None:
        checks.append(CheckResult("tests", True, "no test command set and no tests found "
                                  "(no tests/ folder or test_*.py files): nothing to run"))
    else:
        checks.append(await _run_confined_check(
            command, worktree=worktree, name="tests", ok_codes=ok_codes,
            timeout_s=config.test_timeout_s, confinement=confinement))

    # Last, over the staged tree: what the tests wrote is committed too.
    findings = await scan_staged(worktree, base_commit=base_commit, config=config, timeout_s=t,
                                 run_base_commit=run_base_commit or base_commit)
    if findings:
        checks += [CheckResult("secrets", False, f.message(), file=f.file, line=f.line or None)
                   for f in findings]
    else:
        checks.append(CheckResult("secrets", True, "no credentials in what will be committed"))
    for check in checks:  # the report is stored, sent in events and to the model
        check.message = redact_secrets(check.message)
        if check.output_tail:
            check.output_tail = _redact_tail(check.output_tail)
    return VerificationReport(passed=all(c.passed for c in checks), checks=checks,
                              test_command=command)
