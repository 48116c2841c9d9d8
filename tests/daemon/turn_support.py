"""One batch of the real anthropic backend on the daemon's real execution context and store.

Shared by ``test_turn_writes.py`` and run by it as a child process that the test kills
(``python -m tests.daemon.turn_support DB BASE_URL WORKTREE ATTEMPT_ID``): the crash is a real
SIGKILL of a process holding the store open.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from buildrunnerd.agent import AnthropicExecutor
from buildrunnerd.daemon._active import ActiveRun
from buildrunnerd.daemon._context import BatchContext
from buildrunnerd.executor import BatchJob, ExecutionOutcome
from buildrunnerd.plan import Batch, CriticalPath, Plan, PlanFeature, Task
from buildrunnerd.prompt import BatchPrompt
from buildrunnerd.store import NewRun, RunOptions, Store
from buildrunnerd.workspace import ScratchWorkspace
from tests.agent.support import SYSTEM, make_config
from tests.fakeapi import API_KEY

RUN_ID = "r-7e57c0de"
BATCH_ID = f"{RUN_ID}:B001"
TASK = Task(id="T001", feature="core", title="Build app.py", domain="backend",
            complexity="medium", estimate_minutes=30, files=["app.py"])
PLAN = Plan(
    spec_title="Turns", spec_path="/specs/turns.md",
    features=[PlanFeature(id="core", name="Core", line=1)],
    tasks=[TASK],
    batches=[Batch(id="B001", task_ids=["T001"], domain="backend", estimate_minutes=30,
                   priority_minutes=30)],
    levels=[["T001"]], critical_path=CriticalPath(task_ids=["T001"], minutes=30),
)


async def create_run(store: Store) -> None:
    """The one-batch run, as submitted."""
    await store.create_run(
        NewRun(id=RUN_ID, spec_text="# Turns\n", spec_path="/specs/turns.md", repo=None,
               options=RunOptions()),
        PLAN,
    )


def active_run(scratch: Path) -> ActiveRun:
    return ActiveRun(id=RUN_ID, plan=PLAN, overview="", branch=None, test_cmd=None,
                     budget_usd=None, workspace=ScratchWorkspace(scratch))


def batch_job(worktree: Path, *, attempt: int = 1,
              resume_state: bytes | None = None) -> BatchJob:
    prompt = BatchPrompt(system=SYSTEM, user="[batch B001] Build app.py.", tokens=100,
                         context_tokens=10)
    return BatchJob(run_id=RUN_ID, batch_id=BATCH_ID, attempt=attempt, tasks=[TASK],
                    prompt=prompt, worktree=str(worktree), resume_state=resume_state)


async def run_batch(store: Store, base_url: str, worktree: Path, attempt_id: int, *,
                    attempt: int = 1, resume_state: bytes | None = None) -> ExecutionOutcome:
    """The batch through the daemon's BatchContext (what ``daemon/_batch.py`` hands a
    backend), with the real executor, SDK and HTTP."""

    async def on_budget_exceeded(run_id: str, spent_usd: float, budget_usd: float) -> None:
        raise AssertionError("no budget in these tests")

    ctx = BatchContext(store, active_run(worktree.parent / "scratch"), BATCH_ID, attempt_id,
                       on_budget_exceeded)
    executor = AnthropicExecutor(make_config(), api_key=API_KEY, base_url=base_url)
    try:
        return await executor.run_batch(
            batch_job(worktree, attempt=attempt, resume_state=resume_state), ctx)
    finally:
        await executor.aclose()


async def _child(db: Path, base_url: str, worktree: Path, attempt_id: int) -> None:
    store = await Store.open(db)
    try:
        await run_batch(store, base_url, worktree, attempt_id)
    finally:
        await store.close()


if __name__ == "__main__":
    anyio.run(_child, Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
