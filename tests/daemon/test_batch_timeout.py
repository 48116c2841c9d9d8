"""``agent.batch_timeout_s`` is one deadline for a batch's attempt: first try AND fix-up rounds."""

from __future__ import annotations

from typing import Any

import anyio

from buildrunnerd.config import AgentConfig, Config, VerifyConfig
from buildrunnerd.executor import BatchJob, ExecutionContext, ExecutionOutcome
from tests.daemon.conftest import make_plan


class LazyExecutor:
    """A model stand-in that never writes the files' content (verification fails, a fix-up
    round follows) and takes ``step_s`` per call: each call alone stays well inside the
    timeout. It leaves the file missing, then empty, in turn: each round's report differs, so
    the loop does not stop early for lack of progress."""

    name = "lazy"

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.rounds: list[int] = []

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        self.rounds.append(job.fix_round)
        await anyio.sleep(self.step_s)
        for task in job.tasks:
            for name in task.files:
                target = anyio.Path(job.worktree) / name
                if job.fix_round % 2:
                    await target.parent.mkdir(parents=True, exist_ok=True)
                    await target.write_text("")
                else:
                    await target.unlink(missing_ok=True)
        return ExecutionOutcome(status="completed", model="lazy", summary="did nothing")

    async def aclose(self) -> None:
        pass


async def test_the_deadline_spans_the_fix_up_rounds(harness: Any) -> None:
    executor = LazyExecutor(step_s=0.25)
    config = Config(agent=AgentConfig(batch_timeout_s=1.0),
                    verify=VerifyConfig(max_fix_attempts=8))
    async with harness(workers=1, executor=executor, config=config) as h:
        run_id = await h.submit(make_plan({"a": ([], 30)}, files=True))
        assert await h.wait_run(run_id) == "failed"
        failed = h.of_type(run_id, "batch.failed")
        task = (await h.store.list_tasks(run_id))[0]
    # Each call fits in the timeout, nine do not: at most four calls (each >= 0.25 s) start
    # before the one deadline, where a per-call timeout would have let all nine rounds run.
    assert 1 <= len(executor.rounds) <= 4
    assert executor.rounds == list(range(len(executor.rounds)))
    assert len(failed) == 1
    assert failed[0].data["reason"].startswith("batch timed out after 1 s")
    assert task.state == "failed"
    assert h.of_type(run_id, "verify.failed")  # the first round was verified, then fixed
