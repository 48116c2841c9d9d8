"""A batch's lifecycle around the backend: budget pauses, shutdown interrupts, restart resumes
from the checkpoint, nothing succeeds twice."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio

from buildrunnerd.config import Config
from buildrunnerd.executor import ApiCall, BatchJob, ExecutionContext, ExecutionOutcome

from .conftest import make_plan


class SpendingExecutor:
    """A model stand-in that bills calls and asks for the budget like the agent does."""

    name = "spending"

    def __init__(self, cost_usd: float) -> None:
        self.cost_usd = cost_usd
        self.calls = 0

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        await ctx.check_budget(self.cost_usd)
        self.calls += 1
        await ctx.record_api_call(ApiCall(model="claude-haiku-5-5", input_tokens=1000,
                                          output_tokens=100, cost_usd=self.cost_usd))
        return ExecutionOutcome(status="completed", model="claude-haiku-5-5", summary="ok")

    async def aclose(self) -> None:
        pass


async def test_budget_exceeded_pauses_the_run_and_requeues_the_batch(harness: Any) -> None:
    plan = make_plan({"A": ([], 30), "B": (["A"], 20), "C": (["B"], 10)})
    config = Config(budget_usd=1.5)
    async with harness(workers=1, executor=SpendingExecutor(1.0), config=config) as h:
        run_id = await h.submit(plan, workers=1)
        assert await h.wait_run(run_id, ("paused",)) == "paused"
        run = await h.store.get_run(run_id)
        assert "budget exceeded" in (run.reason or "")
        (exceeded,) = h.of_type(run_id, "budget.exceeded")
        assert exceeded.data["budget_usd"] == 1.5 and exceeded.data["spent_usd"] == 1.0
        states = {t.plan_id: t.state for t in await h.store.list_tasks(run_id)}
        assert states == {"TA": "succeeded", "TB": "ready", "TC": "pending"}
        assert h.executor.calls == 1
        assert await h.store.run_cost_usd(run_id) == 1.0
        # Raise the spend limit by making calls free, then resume: the run completes.
        h.executor.cost_usd = 0.0
        await h.runs.resume(run_id)
        assert await h.wait_run(run_id) == "succeeded"


class CheckpointingExecutor:
    """Checkpoints after its first "turn", then waits (to be interrupted); a resumed attempt
    records the state it was given and completes."""

    name = "checkpointing"

    def __init__(self) -> None:
        self.resumed_with: list[bytes | None] = []
        self.waiting = anyio.Event()

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        if job.batch_id.endswith(":A") and job.resume_state is None:
            await ctx.checkpoint(b"turn-1")
            self.waiting.set()
            await anyio.sleep_forever()
        self.resumed_with.append(job.resume_state)
        return ExecutionOutcome(status="completed", model="m", summary=job.batch_id)

    async def aclose(self) -> None:
        pass


async def test_shutdown_interrupts_and_a_restart_resumes_from_the_checkpoint(
    harness: Any,
) -> None:
    plan = make_plan({"A": ([], 30), "B": (["A"], 20), "D": ([], 10)})
    first = CheckpointingExecutor()
    async with harness(workers=2, executor=first) as h:
        run_id = await h.submit(plan)
        with anyio.fail_after(10):
            await first.waiting.wait()
        await h.runs.shutdown(grace_period_s=0.05)
        attempts = await h.store.list_attempts(f"{run_id}:A")
        assert [a.outcome for a in attempts] == ["interrupted"]
        assert (await h.store.get_run(run_id)).state == "running"
    second = CheckpointingExecutor()
    async with harness(workers=2, executor=second) as h:
        assert await h.runs.recover() == 1
        assert await h.wait_run(run_id) == "succeeded"
        assert b"turn-1" in second.resumed_with
        attempts = await h.store.list_attempts(f"{run_id}:A")
        assert [a.outcome for a in attempts] == ["interrupted", "succeeded"]
        events = await h.store.list_events(run_id=run_id, limit=10000)
    succeeded = Counter(e.task_id for e in events
                        if e.type == "task.state_changed" and e.data["to"] == "succeeded")
    assert succeeded == {f"{run_id}:TA": 1, f"{run_id}:TB": 1, f"{run_id}:TD": 1}


async def test_tasks_keep_their_prompt_and_report_and_listings_can_skip_them(
    harness: Any,
) -> None:
    from buildrunnerd.executor import SimulatedExecutor

    plan = make_plan({"A": ([], 30), "B": (["A"], 20)}, files=True)
    async with harness(workers=2, executor=SimulatedExecutor()) as h:
        run_id = await h.submit(plan)
        assert await h.wait_run(run_id) == "succeeded"
        full = {t.plan_id: t for t in await h.store.list_tasks(run_id)}
        light = {t.plan_id: t for t in await h.store.list_tasks(run_id, details=False)}
    assert full["TB"].prompt and "task of B" in full["TB"].prompt
    # B's prompt carries A's file (a dependency's output) as context.
    assert "out/A.py" in full["TB"].prompt
    assert full["TB"].verification is not None and full["TB"].verification.passed
    assert light["TB"].prompt is None and light["TB"].verification is None
    assert light["TB"].state == full["TB"].state == "succeeded"
