"""The lifecycle of one dispatched batch, from worktree to merge.

prepare worktree -> start attempt -> watch files -> prompt -> ``executor.run_batch`` -> verify
-> fix-up rounds (up to ``verify.max_fix_attempts``, each one step up the model ladder) ->
commit and merge (a conflict re-runs the batch on the new head, as a new attempt, up to
``verify.max_merge_reruns``) -> remove worktree.

:func:`run_batch_lifecycle` records the batch's progress (``batch.dispatched``, tasks running ->
verifying, ``verify.passed``/``verify.failed``, attempts) and returns a :class:`BatchResult`;
the run manager (:mod:`._runs`) writes the final state (succeeded/failed + dependents ready) in
one transaction, because only it knows the run's graph.

The workspace calls sit behind the small ``_ws_*`` functions below. A run without a git
repository (``spec_text`` submitted with no ``repo``) works in a plain scratch directory:
no worktree, no merge, and verification is reduced to "every named file exists and is
non-empty" (see docs/architecture.md). The benchmarks use that mode to measure the daemon
alone.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import structlog

from buildrunnerd.errors import BudgetExceededError, BuildRunnerError, StoreError, WorkspaceError
from buildrunnerd.executor import ApiCall, BatchJob, ExecutionOutcome, Executor
from buildrunnerd.plan._model import Batch, Plan, Task
from buildrunnerd.prompt._model import BatchPrompt
from buildrunnerd.sandbox import Confinement, WorktreePathError, lstat_in, read_bytes_in
from buildrunnerd.store._records import NewEvent, TaskChange

if TYPE_CHECKING:
    from buildrunnerd.config import Config
    from buildrunnerd.store import Store

__all__ = ["ActiveRun", "BatchContext", "BatchResult", "run_batch_lifecycle"]

_log = structlog.get_logger("buildrunnerd.batch")

_VERIFY_TAIL_CHARS = 4000


@dataclass(slots=True)
class ActiveRun:
    """What the daemon keeps in memory about a run it is executing."""

    id: str
    plan: Plan
    overview: str
    home: Path
    repo: Path | None  # None: a scratch run (no git)
    branch: str | None
    base_commit: str | None
    test_cmd: str | None
    budget_usd: float | None
    run_repo: Any = None  # workspace.RunRepo once opened
    summaries: list[str] = field(default_factory=list)  # "already built", for later prompts
    resume_attempts: dict[str, int] = field(default_factory=dict)  # batch id -> attempt id
    cancelling: bool = False
    attempts: dict[str, int] = field(default_factory=dict)  # batch id -> attempts so far
    scratch_ready: bool = False
    # batch id -> a result the store could not record (a full/locked database): applied,
    # not re-run, when the batch is dispatched again after `brctl resume`.
    unrecorded: dict[str, BatchResult] = field(default_factory=dict)
    tasks_by_plan_id: dict[str, Task] = field(default_factory=dict)
    batches_by_plan_id: dict[str, Batch] = field(default_factory=dict)
    # Merges and the run branch's verification after each one, one batch at a time.
    branch_lock: anyio.Lock = field(default_factory=anyio.Lock)
    verified: dict[str, Any] | None = None  # the last passing branch check (run.verified data)
    baseline_passed: list[str] | None = None  # tests that passed at verified["commit"]
    rolled_back: bool = False  # a merge of this run was rolled back (its head failed tests)

    def __post_init__(self) -> None:
        self.tasks_by_plan_id = {t.id: t for t in self.plan.tasks}
        self.batches_by_plan_id = {b.id: b for b in self.plan.batches}

    def gid(self, plan_id: str) -> str:
        """The global (store) id of a task or batch of this run."""
        return f"{self.id}:{plan_id}"

    @staticmethod
    def plan_id(global_id: str) -> str:
        return global_id.split(":", 1)[1]

    @property
    def scratch_dir(self) -> Path:
        return self.home / "runs" / self.id / "scratch"

    @property
    def worktree_root(self) -> Path:
        return self.home / "worktrees" / self.id


@dataclass(slots=True)
class BatchResult:
    """How a batch's lifecycle ended. ``interrupted``: back to the queue (shutdown, budget)."""

    status: Literal["succeeded", "failed", "interrupted", "cancelled"]
    reason: str | None = None
    model: str | None = None
    summary: str = ""
    commit: str | None = None


class BatchContext:
    """The daemon's :class:`~buildrunnerd.executor.ExecutionContext` for one attempt."""

    def __init__(
        self,
        store: Store,
        run: ActiveRun,
        batch_id: str,
        attempt_id: int,
        on_budget_exceeded: Any,
        on_usage_limited: Any = None,
    ) -> None:
        self._store = store
        self.run = run
        self._run = run
        self._batch_id = batch_id
        self.batch_id = batch_id
        self.attempt_id = attempt_id
        self._on_budget_exceeded = on_budget_exceeded
        self.on_usage_limited = on_usage_limited
        self.model: str | None = None  # the model that did the work (last outcome's)
        self.summary = ""  # what was built, for later batches' prompts

    async def emit(
        self, type: str, data: dict[str, Any], *, task_id: str | None = None
    ) -> None:
        """Store and publish an event of this batch."""
        if task_id is not None and ":" not in task_id:
            task_id = self._run.gid(task_id)
        await self._store.append_event(
            self._run.id, type, data, batch_id=self._batch_id, task_id=task_id
        )

    async def record_api_call(self, call: ApiCall) -> None:
        """Store a billed call (row + ``api.call`` event) in one transaction."""
        await self._store.record_api_call(self._run.id, self._batch_id, call)

    async def checkpoint(self, state: bytes) -> None:
        """Persist the conversation so a restart resumes it."""
        await self._store.save_checkpoint(self.attempt_id, state)

    async def check_budget(self, estimate_usd: float) -> None:
        """Raise BudgetExceededError (after a ``budget.exceeded`` event and pausing the run)."""
        budget = self._run.budget_usd
        if budget is None:
            return
        spent = await self._store.run_cost_usd(self._run.id)
        if spent + estimate_usd <= budget:
            return
        data = {"budget_usd": budget, "spent_usd": spent, "estimate_usd": estimate_usd}
        await self._store.append_event(
            self._run.id, "budget.exceeded", data, batch_id=self._batch_id
        )
        await self._on_budget_exceeded(self._run.id, spent, budget)
        raise BudgetExceededError(
            f"run {self._run.id}: the next call (~${estimate_usd:.4f}) would take spend "
            f"${spent:.4f} over the budget ${budget:.2f}; the run is paused — raise the budget "
            "or resume to continue",
            data=data,
        )


# --- workspace glue: the only calls into buildrunnerd.workspace ----------------------------
async def _ws_prepare(run: ActiveRun) -> tuple[Path, str | None]:
    """A clean worktree at the run branch's head (its path and head commit): a reused one
    when the run has one idle, so a batch costs the size of its change."""
    if run.run_repo is None:
        if not run.scratch_ready:
            await anyio.Path(run.scratch_dir).mkdir(parents=True, exist_ok=True)
            run.scratch_ready = True
        return run.scratch_dir, None
    path: Path = await run.run_repo.acquire_worktree(run.worktree_root)
    # The commit the worktree starts from: verification's secret scan looks at lines added
    # since then (read from the worktree, as the branch may move on meanwhile).
    head: str = await run.run_repo.worktree_head(path)
    return path, head


async def _ws_remove(run: ActiveRun, path: Path, *, keep: bool = False,
                     reuse: bool = True) -> None:
    if run.run_repo is None or keep:
        return
    with anyio.move_on_after(60.0, shield=True):
        try:
            await run.run_repo.release_worktree(path, reuse=reuse)
        except Exception as exc:  # a leftover is cleaned at the next start; never fail on it
            _log.warning("worktree.remove_failed", path=str(path), error=str(exc))


async def _ws_verify(
    run: ActiveRun, path: Path, tasks: list[Task], base: str | None, config: Config,
    confinement: Confinement | None,
) -> dict[str, Any]:
    """The verification report as a dict (``passed``, ``checks``)."""
    if run.run_repo is None:
        return await _scratch_verify(path, tasks)
    from buildrunnerd.workspace import verify

    own = {f for t in tasks for f in t.files}
    other_files = {f for t in run.plan.tasks for f in t.files} - own
    report = await verify(
        path, tasks, base_commit=base or run.base_commit, test_cmd=run.test_cmd,
        config=config.verify, confinement=confinement,
        # The allowlist is the run's, never one an earlier batch of this run merged.
        run_base_commit=run.base_commit or run.run_repo.base_commit,
        project_root=run.repo, other_files=other_files, spec_path=_spec_relpath(run),
        baseline_passed=run.baseline_passed,
    )
    result: dict[str, Any] = report.to_dict()
    return result


def _spec_relpath(run: ActiveRun) -> str | None:
    """The run's spec as a path in the repository (for the scope check), or None."""
    spec = run.plan.spec_path
    if not spec or run.repo is None:
        return None
    path = Path(spec)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(run.repo.resolve()).as_posix()
    except (ValueError, OSError):
        return None


async def ws_verify_branch(run: ActiveRun, commit: str, config: Config,
                           confinement: Confinement | None) -> dict[str, Any] | None:
    """Run the full test command on ``commit`` of the run branch, in a detached worktree of
    its own (the caller holds ``run.branch_lock``). None: nothing to check (a scratch run, or
    ``verify.branch_check = false``). A passing check becomes the run's baseline."""
    if run.run_repo is None or not config.verify.branch_check:
        return None
    from buildrunnerd.workspace import verify
    from buildrunnerd.workspace._report import has_python_tests
    from buildrunnerd.workspace._tree import commit_tree

    if not (run.test_cmd or config.verify.test_cmd):
        # Nothing to detect a test command from: no checkout needed to know it.
        tree = await commit_tree(run.run_repo.repo, commit, timeout_s=config.verify.git_timeout_s)
        if not has_python_tests(tree) and "package.json" not in tree:
            run.verified = {"commit": commit, "test_command": None, "counts": None,
                            "tests": "no tests found: nothing to run"}
            return {"passed": True, "checks": [], "test_command": None}
    # A clean worktree of the run's pool (the caller holds branch_lock, so the head is
    # ``commit``); a fresh one at ``commit`` if the branch was moved from outside.
    path: Path = await run.run_repo.acquire_worktree(run.worktree_root)
    if await run.run_repo.worktree_head(path) != commit:
        await run.run_repo.remove_worktree(path)
        path = await run.run_repo.add_worktree(run.worktree_root, f"branch-{commit[:12]}",
                                               commit)
    try:
        report = await verify(path, [], base_commit=commit, test_cmd=run.test_cmd,
                              config=config.verify, confinement=confinement,
                              project_root=run.repo,
                              baseline_passed=run.baseline_passed, batch_checks=False)
    finally:
        await _ws_remove(run, path)
    data: dict[str, Any] = report.to_dict()
    if report.passed:
        tests = next((c for c in report.checks if c.name == "tests"), None)
        run.verified = {"commit": commit, "test_command": report.test_command,
                        "counts": report.test_counts,
                        "tests": tests.message if tests is not None else None}
        if report.test_counts is not None:
            run.baseline_passed = list(report.passed_tests)
    return data


async def _scratch_verify(path: Path, tasks: list[Task]) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(_scratch_checks, path, tasks)


def _scratch_checks(path: Path, tasks: list[Task]) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []
    for task in tasks:
        for rel in task.files:
            # Never through a symlink, and a FIFO or device is not a file (sandbox._fs).
            try:
                st = lstat_in(path, rel)
                present = stat.S_ISREG(st.st_mode) and st.st_size > 0
                state = "is empty" if stat.S_ISREG(st.st_mode) else "is not a regular file"
            except WorktreePathError:
                present, state = False, "is missing"
            if not present:
                checks.append({
                    "name": "files", "passed": False, "file": rel, "line": None,
                    "message": f"{rel} (task {task.id}) {state}",
                    "output_tail": "",
                })
    if not checks:
        checks.append({"name": "files", "passed": True, "message": "every named file exists",
                       "file": None, "line": None, "output_tail": ""})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


async def _ws_merge(
    run: ActiveRun, path: Path, message: str
) -> tuple[bool, str | None, list[str], str | None]:
    """Commit the worktree and merge it into the run branch: (merged, commit, conflict files,
    the branch's head before the merge)."""
    if run.run_repo is None:
        return True, None, [], None
    result = await run.run_repo.commit_and_merge(path, message)
    return (bool(result.merged), result.commit, list(result.conflict_files or []),
            result.previous)


async def _ws_tested_tree(run: ActiveRun, commit: str, report: dict[str, Any] | None,
                          config: Config) -> bool:
    """Whether the merge committed exactly the tree the batch's verification tested (a
    fast-forward of a worktree that held nothing but its staged files): then the batch's own
    test run is the branch check, and it becomes the run's baseline."""
    if (run.run_repo is None or not config.verify.branch_check or report is None
            or not report.get("passed") or not report.get("tree")):
        return False
    from buildrunnerd.workspace._git import git

    res = await git(["rev-parse", f"{commit}^{{tree}}"], cwd=run.run_repo.repo,
                    timeout_s=config.verify.git_timeout_s, check=False)
    if not res.ok or res.stdout.strip() != report["tree"]:
        return False
    tests = next((c for c in report.get("checks", []) if c.get("name") == "tests"), None)
    run.verified = {"commit": commit, "test_command": report.get("test_command"),
                    "counts": report.get("test_counts"),
                    "tests": tests.get("message") if tests else None}
    if report.get("test_counts") is not None:
        run.baseline_passed = list(report.get("passed_tests") or [])
    return True


async def _ws_started_on_branch(run: ActiveRun, head: str | None) -> bool:
    """Whether the commit a worktree started from is still on the run branch (a rolled-back
    merge is not: work built on it must run again)."""
    if run.run_repo is None or head is None or not run.rolled_back:
        return True
    branch_head = await run.run_repo.head()
    return bool(await run.run_repo.is_ancestor(head, branch_head))


class _FileEvents:
    """Turns the file monitor's callbacks into ``file.created``/``file.modified`` events."""

    def __init__(self, ctx: BatchContext) -> None:
        self._ctx = ctx

    async def __call__(self, kind: str, relpath: str) -> None:
        await self._ctx.emit(f"file.{kind}", {"path": relpath})


async def _scratch_after(
    ctx: BatchContext, path: Path, tasks: list[Task], before: dict[str, float]
) -> tuple[list[NewEvent], dict[str, Any]]:
    """Scratch mode, after the backend: the file events and the verification report, in one
    thread hop. There is no watcher here (a shared directory, and the benchmark's path):
    comparing the named files' mtimes is exact for what a backend is asked to write."""

    def work() -> tuple[dict[str, float], dict[str, Any]]:
        return _mtimes(path, tasks), _scratch_checks(path, tasks)

    after, report = await anyio.to_thread.run_sync(work)
    events: list[NewEvent] = []
    for rel, mtime in after.items():
        kind = "created" if rel not in before else "modified" if mtime != before[rel] else None
        if kind is not None:
            events.append(NewEvent(ctx.run.id, f"file.{kind}", {"path": rel},
                                   batch_id=ctx.batch_id))
    return events, report


async def _snapshot(path: Path, tasks: list[Task]) -> dict[str, float]:
    return await anyio.to_thread.run_sync(_mtimes, path, tasks)


def _mtimes(path: Path, tasks: list[Task]) -> dict[str, float]:
    found: dict[str, float] = {}
    for task in tasks:
        for rel in task.files:
            try:
                found[rel] = lstat_in(path, rel).st_mtime_ns / 1e9
            except WorktreePathError:  # missing, or behind a symlink: not followed
                continue
    return found


# --- prompts ----------------------------------------------------------------------------
_MAX_CONTEXT_FILES = 40
_MAX_CONTEXT_FILE_BYTES = 64 * 1024


def _relevant_files(run: ActiveRun, tasks: list[Task], root: Path) -> dict[str, str]:
    """Existing files the batch's tasks or their dependencies name (the prompt builder keeps
    what fits its budget, the batch's own files first)."""
    wanted: list[str] = []
    for task in tasks:
        wanted += task.files
    for task in tasks:
        for dep in task.depends_on:
            dep_task = run.tasks_by_plan_id.get(dep)
            if dep_task is not None:
                wanted += dep_task.files
    found: dict[str, str] = {}
    for rel in dict.fromkeys(wanted):
        if len(found) >= _MAX_CONTEXT_FILES:
            break
        # This text goes to the model API: a model-made symlink to ~/.ssh/id_rsa, a FIFO or a
        # huge file must never be read (sandbox._fs follows no symlink and bounds the read).
        try:
            data = read_bytes_in(root, rel, max_bytes=_MAX_CONTEXT_FILE_BYTES)
            found[rel] = data.decode("utf-8")
        except (WorktreePathError, UnicodeDecodeError):
            continue  # missing, refused, too large or binary: not useful as prompt context
    return found


def _prompt_for_attempt(
    run: ActiveRun, batch: Batch, tasks: list[Task], root: Path, config: Config,
    built: list[str],
) -> BatchPrompt:
    """Runs in a worker thread: relevant files from the worktree, then the prompt."""
    from buildrunnerd.prompt import build_batch_prompt

    prompt: BatchPrompt = build_batch_prompt(
        run.plan, batch, overview=run.overview, built=built,
        files=_relevant_files(run, tasks, root),
        test_command=run.test_cmd, budget_tokens=config.planner.context_budget_tokens,
    )
    return prompt


def _first_failure(report: dict[str, Any]) -> str:
    for check in report.get("checks", []):
        if not check.get("passed", True):
            where = check.get("file") or ""
            if where and check.get("line"):
                where = f"{where}:{check['line']}"
            message = check.get("message") or "failed"
            at = f" at {where}" if where else ""
            return f"{check.get('name', 'check')} failed{at}: {message}"
    return "verification failed"


def _failure_signature(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What identifies a report's failures (not the output tails, which hold timings)."""
    return sorted((str(c.get("name")), str(c.get("file")), str(c.get("line")),
                   str(c.get("message")))
                  for c in report.get("checks", []) if not c.get("passed", True))


def _fix_report(report: dict[str, Any]) -> dict[str, Any]:
    checks = []
    for check in report.get("checks", []):
        tail = check.get("output_tail") or ""
        checks.append({**check, "output_tail": tail[-_VERIFY_TAIL_CHARS:]})
    return {**report, "checks": checks}


# --- the lifecycle ----------------------------------------------------------------------
async def run_batch_lifecycle(
    *,
    store: Store,
    executor: Executor,
    config: Config,
    run: ActiveRun,
    batch_id: str,
    on_budget_exceeded: Any,
    confinement: Confinement | None = None,
    on_usage_limited: Any = None,
) -> BatchResult:
    """Run one dispatched batch to a result. Cancellation (run cancel, shutdown) records the
    attempt as cancelled/interrupted, removes the worktree, and re-raises."""
    plan_batch = run.batches_by_plan_id[run.plan_id(batch_id)]
    tasks = [run.tasks_by_plan_id[t] for t in plan_batch.task_ids]
    task_gids = [run.gid(t.id) for t in tasks]

    max_merge_reruns = config.verify.max_merge_reruns
    resume_attempt = run.resume_attempts.pop(batch_id, None)
    merge_round = 0
    carry_report: dict[str, Any] | None = None  # the branch check a re-run must fix
    while True:
        attempt_no = run.attempts.get(batch_id, 0) + 1
        run.attempts[batch_id] = attempt_no
        await store.transition(
            run=None,
            batch=(batch_id, "running", "batch.dispatched",
                   {"attempt": attempt_no, "task_ids": task_gids}),
            tasks=[TaskChange(gid, "running", attempts_inc=1) for gid in task_gids],
            events=[],
        )
        path, head = await _ws_prepare(run)
        attempt = await store.start_attempt(batch_id, worktree=str(path), model=None)
        ctx = BatchContext(store, run, batch_id, attempt.id, on_budget_exceeded,
                           on_usage_limited)
        resume_state = None
        if resume_attempt is not None:
            resume_state = await store.load_checkpoint(resume_attempt)
            resume_attempt = None
        keep_worktree = False
        reuse_worktree = True
        try:
            # Built per attempt, after the worktree: a re-run after a conflict sees the
            # files as they are on the new head.
            # One worker thread reads the files and counts the tokens (tiktoken is CPU work
            # that would otherwise stall every other batch and client on the loop).
            built = list(run.summaries[-50:])
            prompt = await anyio.to_thread.run_sync(
                _prompt_for_attempt, run, plan_batch, tasks, path, config, built
            )
            await store.set_tasks_details(task_gids, prompt=f"{prompt.system}\n\n{prompt.user}")
            result, report = await _execute_and_verify(
                store=store, executor=executor, config=config, run=run, ctx=ctx,
                confinement=confinement,
                batch_id=batch_id, tasks=tasks, task_gids=task_gids, prompt=prompt,
                path=path, head=head, attempt_no=attempt_no, resume_state=resume_state,
                carry_report=carry_report,
            )
            if result is not None:  # failed / budget: no merge
                outcome = "failed" if result.status == "failed" else "interrupted"
                if outcome == "interrupted":
                    # Paused (budget, usage limit): the next dispatch continues this
                    # attempt's conversation from its checkpoint instead of starting over.
                    run.resume_attempts[batch_id] = attempt.id
                await store.finish_attempt(attempt.id, outcome=outcome, reason=result.reason,
                                           verification=report)
                keep_worktree = result.status == "failed" and config.verify.keep_failed_worktrees
                return result
            from buildrunnerd.workspace import batch_commit_message

            message = batch_commit_message(run.id, plan_batch.id, tasks)
            async with run.branch_lock:
                conflicts: list[str] = []
                if not await _ws_started_on_branch(run, head):
                    merged, commit, previous = False, None, None
                    reason = ("the commit this batch started from was rolled back (it broke "
                              "the run branch's tests)")
                else:
                    merged, commit, conflicts, previous = await _ws_merge(run, path, message)
                    reason = f"merge conflict in {', '.join(conflicts) or 'the run branch'}"
                branch_report = None
                if merged and commit is not None and previous is not None and not (
                        await _ws_tested_tree(run, commit, report, config)):
                    branch_report = await ws_verify_branch(run, commit, config, confinement)
                if branch_report is not None and not branch_report.get("passed"):
                    if not await run.run_repo.rollback(commit, previous):
                        raise WorkspaceError(
                            f"run {run.id}: branch {run.branch} moved while its merge of "
                            f"{plan_batch.id} was being verified; is another process writing "
                            "to it? Stop it and retry the task",
                            data={"branch": run.branch, "commit": commit})
                    run.rolled_back = True
                    merged = False
                    reason = (f"the run branch failed its tests after merging this batch "
                              f"({_first_failure(branch_report)}); the merge was rolled back")
                    carry_report = branch_report
            if merged:
                await store.finish_attempt(attempt.id, outcome="succeeded",
                                           verification=report, commit=commit)
                return BatchResult("succeeded", model=ctx.model, commit=commit,
                                   summary=ctx.summary)
            await store.finish_attempt(attempt.id, outcome="conflict", reason=reason,
                                       verification=branch_report or report)
            if branch_report is not None:
                await ctx.emit("batch.rolled_back", {
                    "commit": commit, "attempt": attempt_no,
                    "rerun": merge_round < max_merge_reruns,
                    "reason": _first_failure(branch_report)})
            else:
                await ctx.emit("batch.conflict", {"files": conflicts, "attempt": attempt_no,
                                                  "rerun": merge_round < max_merge_reruns})
            if merge_round >= max_merge_reruns:
                return BatchResult("failed", reason=f"{reason}, after {merge_round} re-runs")
            merge_round += 1
        except BaseException as exc:
            reuse_worktree = False  # cancelled or crashed mid-way: nothing of it is reused
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            if run.cancelling:
                outcome, reason = "cancelled", "run cancelled"
            elif cancelled:
                outcome, reason = "interrupted", "the daemon stopped during the attempt"
            elif isinstance(exc, StoreError):  # the run pauses; the batch runs again
                outcome, reason = "interrupted", f"the database failed: {exc}"
            else:
                outcome, reason = "failed", f"{type(exc).__name__}: {exc}"
            with anyio.move_on_after(10.0, shield=True):
                try:
                    await store.finish_attempt(attempt.id, outcome=outcome, reason=reason)
                except BuildRunnerError as again:
                    # Most likely the same failing database: the original error is the one
                    # to act on (the next start marks the attempt interrupted).
                    _log.error("attempt.finish_failed", attempt_id=attempt.id,
                               error=str(again))
            raise
        finally:
            await _ws_remove(run, path, keep=keep_worktree, reuse=reuse_worktree)


async def _execute_and_verify(
    *,
    store: Store,
    executor: Executor,
    config: Config,
    run: ActiveRun,
    ctx: BatchContext,
    batch_id: str,
    tasks: list[Task],
    task_gids: list[str],
    prompt: BatchPrompt,
    path: Path,
    head: str | None,
    attempt_no: int,
    resume_state: bytes | None,
    confinement: Confinement | None,
    carry_report: dict[str, Any] | None = None,
) -> tuple[BatchResult | None, dict[str, Any] | None]:
    """Executor + verification + fix-up rounds. ``(None, report)`` means verified, go merge.

    ``agent.batch_timeout_s`` is ONE deadline for the whole attempt: the first try and every
    fix-up round (backend and verification alike). Only the backend and verification waits
    run under it; the store writes between them are never cut in half."""
    # A re-run after a rolled-back merge starts with the branch check's report.
    report: dict[str, Any] | None = carry_report
    previous_signature: list[tuple[Any, ...]] | None = None
    max_fix = max(0, config.verify.max_fix_attempts)
    timeout_s = config.agent.batch_timeout_s
    deadline = anyio.current_time() + timeout_s
    timed_out = BatchResult(
        "failed", reason=f"batch timed out after {timeout_s:g} s (agent.batch_timeout_s, "
        "which covers the first try and every fix-up round)")
    for fix_round in range(max_fix + 1):
        if anyio.current_time() >= deadline:
            timed_out.model = ctx.model
            return timed_out, report
        job = BatchJob(
            run_id=run.id, batch_id=batch_id, attempt=attempt_no, tasks=tasks, prompt=prompt,
            worktree=str(path), fix_round=fix_round,
            fix_report=_fix_report(report) if report is not None else None,
            escalation=fix_round, resume_state=resume_state if fix_round == 0 else None,
            test_cmd=run.test_cmd,
        )
        if fix_round:
            await store.transition(
                run=None, batch=(batch_id, "running", None, None),
                tasks=[TaskChange(gid, "running", reason=f"fix-up round {fix_round}")
                       for gid in task_gids],
                events=[],
            )
        with anyio.CancelScope(deadline=deadline) as scope:
            outcome, file_events, scratch_report = await _run_executor(executor, job, ctx,
                                                                        path, tasks)
        if scope.cancelled_caught or anyio.current_time() >= deadline:
            # The backend's own limit may have fired first at the same instant: either way the
            # batch ran out of its time.
            timed_out.model = ctx.model
            return timed_out, report
        if outcome.model:
            ctx.model = outcome.model
        if outcome.status == "budget_exceeded":
            return BatchResult("interrupted", reason=outcome.reason or "budget exceeded"), report
        if outcome.status == "cancelled":
            return BatchResult("interrupted", reason=outcome.reason or "cancelled"), report
        if outcome.status == "usage_limited":
            # Never a failure: the run pauses until the limit resets, then this batch goes on.
            reason = outcome.reason or "usage limit reached"
            if ctx.on_usage_limited is not None:
                await ctx.on_usage_limited(run.id, outcome.resume_at, reason)
            return BatchResult("interrupted", reason=reason, model=outcome.model), report
        if outcome.status == "failed":
            return BatchResult("failed", reason=outcome.reason or "the backend failed",
                               model=outcome.model), report
        ctx.summary = outcome.summary
        await store.transition(
            run=None, batch=(batch_id, "verifying", None, None, outcome.model),
            tasks=[TaskChange(gid, "verifying", model=outcome.model) for gid in task_gids],
            events=file_events,
        )
        checked: dict[str, Any] | None = scratch_report
        if checked is None:
            with anyio.CancelScope(deadline=deadline) as scope:
                checked = await _ws_verify(run, path, tasks, head, config, confinement)
            if checked is None or scope.cancelled_caught:
                timed_out.model = ctx.model
                return timed_out, report
        report = checked
        await store.set_tasks_details(task_gids, verification=report)
        if report.get("passed"):
            await ctx.emit("verify.passed", {"fix_round": fix_round,
                                             "checks": [c.get("name") for c in report["checks"]]})
            return None, report
        await ctx.emit("verify.failed", {
            "fix_round": fix_round, "reason": _first_failure(report),
            "checks": [{k: c.get(k) for k in ("name", "passed", "message", "file", "line")}
                       for c in report.get("checks", [])],
        })
        signature = _failure_signature(report)
        if fix_round < max_fix and signature == previous_signature:
            # The fix-up round changed nothing the checks can see: more rounds of the same
            # would only spend money.
            return BatchResult(
                "failed", reason=f"{_first_failure(report)} (the same failures after fix-up "
                f"round {fix_round} as before it: stopped early)", model=ctx.model), report
        previous_signature = signature
    assert report is not None
    return BatchResult(
        "failed", reason=f"{_first_failure(report)} (after {max_fix} fix-up rounds)"
    ), report


async def _run_executor(
    executor: Executor, job: BatchJob, ctx: BatchContext, path: Path, tasks: list[Task]
) -> tuple[ExecutionOutcome, list[NewEvent], dict[str, Any] | None]:
    """Run the backend while watching the files. The scratch mode also returns its file
    events (for the caller's next transaction) and its verification report."""
    try:
        if ctx.run.run_repo is None:
            before = await _snapshot(path, tasks)
            outcome = await executor.run_batch(job, ctx)
            if outcome.status != "completed":
                return outcome, [], None
            events, report = await _scratch_after(ctx, path, tasks, before)
            return outcome, events, report
        from buildrunnerd.workspace import FileMonitor

        async with FileMonitor(path, _FileEvents(ctx)):
            return await executor.run_batch(job, ctx), [], None
    except BudgetExceededError as exc:
        return ExecutionOutcome(status="budget_exceeded", reason=str(exc)), [], None
    except (anyio.get_cancelled_exc_class(), StoreError):
        raise  # a failing database pauses the run (see _runs), it does not fail the batch
    except Exception as exc:
        _log.warning("executor.failed", batch=job.batch_id, error=repr(exc))
        return ExecutionOutcome(status="failed", reason=f"{type(exc).__name__}: {exc}"), [], None
