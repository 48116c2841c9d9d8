"""The lifecycle of one dispatched batch, from worktree to merge.

prepare worktree -> start attempt -> watch files -> prompt -> ``executor.run_batch`` -> verify
-> fix-up rounds (up to ``verify.max_fix_attempts``, each one step up the model ladder) ->
commit -> worktree back to the run's pool -> merge (a conflict re-runs the batch on the new
head, as a new attempt in a worktree of the pool, up to ``verify.max_merge_reruns``).

A verified batch gives its worktree and its worker back once its commit is made, before its
merge (merges go one at a time per run, so it may wait): the next ready batch starts meanwhile
in that worktree; a re-run takes a worker again first.

:func:`run_batch_lifecycle` records the batch's progress (``batch.dispatched``, tasks running ->
verifying, ``verify.passed``/``verify.failed``, attempts) and returns a :class:`BatchResult`;
the run manager (:mod:`._runs`) writes the final state (succeeded/failed + dependents ready) in
one transaction, because only it knows the run's graph. The run's in-memory state is
:mod:`._active`, the execution context a backend talks to is :mod:`._context`, the prompt of
an attempt is :mod:`._attempt`. Every workspace call goes through the run's
:class:`~buildrunnerd.workspace.Workspace` (git or scratch), so this module has no branch for
either kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from buildrunnerd.daemon._active import ActiveRun, BatchResult
from buildrunnerd.daemon._attempt import prompt_for_attempt
from buildrunnerd.daemon._context import (
    BatchContext,
    FileEvents,
    OnBudgetExceeded,
    OnUsageLimited,
)
from buildrunnerd.daemon._scheduler import WorkerLease
from buildrunnerd.errors import BudgetExceededError, BuildRunnerError, StoreError
from buildrunnerd.executor import BatchJob, ExecutionOutcome, Executor
from buildrunnerd.plan._model import Task
from buildrunnerd.prompt._model import BatchPrompt
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.sandbox import Confinement
from buildrunnerd.store._records import AttemptEnd, AttemptRecord, NewEvent, TaskChange

if TYPE_CHECKING:
    from buildrunnerd.config import Config
    from buildrunnerd.store import Store

__all__ = ["run_batch_lifecycle"]

_log = structlog.get_logger("buildrunnerd.batch")

_VERIFY_TAIL_CHARS = 4000  # of each check's output, in the fix-up round's report
_FLUSH_TIMEOUT_S = 10.0  # storing a stopped backend's waiting events


async def run_batch_lifecycle(
    *,
    store: Store,
    executor: Executor,
    config: Config,
    run: ActiveRun,
    batch_id: str,
    on_budget_exceeded: OnBudgetExceeded,
    confinement: Confinement | None = None,
    on_usage_limited: OnUsageLimited | None = None,
    worker: WorkerLease | None = None,
) -> BatchResult:
    """Run one dispatched batch to a result. Cancellation (run cancel, shutdown) records the
    attempt as cancelled/interrupted, removes the worktree, and re-raises. ``worker``: the
    batch's worker, given back while the verified batch waits for its merge."""
    plan_batch = run.batches_by_plan_id[run.plan_id(batch_id)]
    tasks = [run.tasks_by_plan_id[t] for t in plan_batch.task_ids]
    task_gids = [run.gid(t.id) for t in tasks]

    max_merge_reruns = config.verify.max_merge_reruns
    resume_attempt = run.resume_attempts.pop(batch_id, None)
    merge_round = 0
    carry_report: VerificationReport | None = None  # the branch check a re-run must fix
    while True:
        if worker is not None:
            await worker.reclaim()  # a re-run after its merge failed: the agent runs again
        attempt_no = run.attempts.get(batch_id, 0) + 1
        run.attempts[batch_id] = attempt_no
        # The worktree and the prompt come first, so that the batch's dispatch, its attempt
        # and its prompt are ONE commit. Until then the store still has the batch waiting: a
        # crash meanwhile leaves a worktree the next start removes (an orphan of the run).
        path, head = await run.workspace.acquire()
        attempt: AttemptRecord | None = None
        keep_worktree = False
        reuse_worktree = True
        released = False  # given back after its commit, before the merge
        try:
            resume_state = None
            if resume_attempt is not None:
                resume_state = await store.load_checkpoint(resume_attempt)
                resume_attempt = None
            # Built per attempt, after the worktree: a re-run after a conflict sees the
            # files as they are on the new head.
            # One worker thread reads the files and counts the tokens (tiktoken is CPU work
            # that would otherwise stall every other batch and client on the loop).
            # The window the prompt shows (at most 50, cache-stable), copied: a copy of the
            # run's whole list would cost a batch more the longer the run.
            from buildrunnerd.prompt import built_window

            built = list(built_window(run.summaries))
            prompt = await anyio.to_thread.run_sync(
                prompt_for_attempt, run, plan_batch, tasks, path, config, built
            )
            attempt = await store.dispatch(
                batch=(batch_id, "running", "batch.dispatched",
                       {"attempt": attempt_no, "task_ids": task_gids}),
                tasks=[TaskChange(gid, "running", attempts_inc=1) for gid in task_gids],
                worktree=str(path), prompt=f"{prompt.system}\n\n{prompt.user}",
            )
            ctx = BatchContext(store, run, batch_id, attempt.id, on_budget_exceeded,
                               on_usage_limited)
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
            made = await run.workspace.commit(path, message, report, head=head)
            # The commit holds the work: the worktree goes back to the pool before the merge
            # (one batch of the run at a time, so it may wait), and the next batch, started
            # on the worker given back here, reuses it: the pool stays at the worker count.
            released = True
            await run.workspace.release(path)
            if worker is not None:
                worker.release()
            done = await run.workspace.merge(
                made, report, head=head, batch_id=plan_batch.id, config=config.verify,
                confinement=confinement)
            merged, commit, branch_report = done.merged, done.commit, done.rolled_back
            if done.stale_start:
                reason = ("the run branch was rolled back below this batch's work: the "
                          "commit it started from, or a merge checked with its own, broke "
                          "the run branch's tests")
            elif branch_report is not None:
                reason = (f"the run branch failed its tests after merging this batch "
                          f"({branch_report.first_failure()}); the merge was rolled back")
                carry_report = branch_report
            else:
                reason = f"merge conflict in {', '.join(done.conflict_files) or 'the run branch'}"
            if merged:
                # The attempt ends with the batch's result, in its transaction (_results).
                return BatchResult("succeeded", model=ctx.model, commit=commit,
                                   summary=ctx.summary, attempt_end=AttemptEnd(
                                       attempt.id, "succeeded", verification=report,
                                       commit=commit))
            await store.finish_attempt(attempt.id, outcome="conflict", reason=reason,
                                       verification=branch_report or report)
            if branch_report is not None:
                await ctx.emit("batch.rolled_back", {
                    "commit": commit, "attempt": attempt_no,
                    "rerun": merge_round < max_merge_reruns,
                    "reason": branch_report.first_failure()})
            else:
                await ctx.emit("batch.conflict", {"files": done.conflict_files,
                                                  "attempt": attempt_no,
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
            if attempt is None:  # stopped before its dispatch: nothing of it was stored
                raise
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
            if not released:
                await run.workspace.release(path, keep=keep_worktree, reuse=reuse_worktree)


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
    carry_report: VerificationReport | None = None,
) -> tuple[BatchResult | None, VerificationReport | None]:
    """Executor + verification + fix-up rounds. ``(None, report)`` means verified, go merge.

    ``agent.batch_timeout_s`` is ONE deadline for the whole attempt: the first try and every
    fix-up round (backend and verification alike). Only the backend and verification waits
    run under it; the store writes between them are never cut in half."""
    # A re-run after a rolled-back merge starts with the branch check's report.
    report = carry_report
    previous_signature: list[tuple[str, str, str, str]] | None = None
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
            fix_report=report.with_tails(_VERIFY_TAIL_CHARS) if report is not None else None,
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
            outcome, file_events, made_report = await _run_executor(executor, job, ctx, path,
                                                                     tasks)
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
        checked = made_report
        if checked is None:
            with anyio.CancelScope(deadline=deadline) as scope:
                checked = await run.workspace.verify(path, tasks, head=head, config=config.verify,
                                                     confinement=confinement)
            if checked is None or scope.cancelled_caught:
                timed_out.model = ctx.model
                return timed_out, report
        report = checked
        if report.passed:
            verdict = NewEvent(run.id, "verify.passed", {
                "fix_round": fix_round, "checks": [c.name for c in report.checks]},
                batch_id=batch_id)
        else:
            verdict = NewEvent(run.id, "verify.failed", {
                "fix_round": fix_round, "reason": report.first_failure(),
                "checks": [{"name": c.name, "passed": c.passed, "message": c.message,
                            "file": c.file, "line": c.line} for c in report.checks],
            }, batch_id=batch_id)
        # The report and its verdict: one transaction.
        await store.set_tasks_details(task_gids, verification=report, events=[verdict])
        if report.passed:
            return None, report
        signature = report.failure_signature()
        if fix_round < max_fix and signature == previous_signature:
            # The fix-up round changed nothing the checks can see: more rounds of the same
            # would only spend money.
            return BatchResult(
                "failed", reason=f"{report.first_failure()} (the same failures after fix-up "
                f"round {fix_round} as before it: stopped early)", model=ctx.model), report
        previous_signature = signature
    assert report is not None
    return BatchResult(
        "failed", reason=f"{report.first_failure()} (after {max_fix} fix-up rounds)"
    ), report


async def _run_executor(
    executor: Executor, job: BatchJob, ctx: BatchContext, path: Path, tasks: list[Task]
) -> tuple[ExecutionOutcome, list[NewEvent], VerificationReport | None]:
    """Run the backend while the workspace watches the files. Also returns the file changes
    the workspace did not report live (for the caller's next transaction) and the
    verification report it made on the way, if it did (a scratch workspace does both).
    Events of the backend still waiting for a write (:class:`BatchContext`) are stored here,
    before anything that follows the backend's work (usually there are none: the last
    turn's write took them)."""
    try:
        async with ctx.run.workspace.watch(path, tasks, FileEvents(ctx)) as watch:
            outcome = await executor.run_batch(job, ctx)
        if outcome.status != "completed":
            return outcome, [], None
        await ctx.flush()
        changes, report = await watch.settle()
        events = [NewEvent(ctx.run.id, f"file.{change.kind}", {"path": change.path},
                           batch_id=ctx.batch_id) for change in changes]
        return outcome, events, report
    except BudgetExceededError as exc:
        return ExecutionOutcome(status="budget_exceeded", reason=str(exc)), [], None
    except (anyio.get_cancelled_exc_class(), StoreError):
        raise  # a failing database pauses the run (see _runs), it does not fail the batch
    except Exception as exc:
        _log.warning("executor.failed", batch=job.batch_id, error=repr(exc))
        return ExecutionOutcome(status="failed", reason=f"{type(exc).__name__}: {exc}"), [], None
    finally:
        if ctx.has_pending:
            # Stopped, failed or cancelled: what happened until then is still reported.
            with anyio.move_on_after(_FLUSH_TIMEOUT_S, shield=True):
                try:
                    await ctx.flush()
                except BuildRunnerError as exc:  # the database failing: the original error
                    _log.warning("events.flush_failed", batch=job.batch_id, error=str(exc))
