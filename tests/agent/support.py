"""Helpers of the agent tests: the daemon's side of a batch (a small recorder, the outer
edge for these tests), a git worktree, a job, and an executor pointed at the fake API."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from buildrunnerd.agent import AnthropicExecutor
from buildrunnerd.config import AgentConfig, Config
from buildrunnerd.errors import BudgetExceededError
from buildrunnerd.executor import ApiCall, BatchJob, TurnEvent
from buildrunnerd.plan import Task
from buildrunnerd.prompt import BatchPrompt
from tests.fakeapi import API_KEY, FakeAnthropic, FakeRequest
from tests.fakeapi.fixtures import fake_api  # noqa: F401 (a fixture)

SYSTEM = "You are a careful engineer working for BuildRunner. " * 40  # stable, cacheable


class Recorder:
    """An in-memory ExecutionContext: what the daemon would store."""

    def __init__(self, budget_usd: float | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.calls: list[ApiCall] = []
        self.checkpoints: list[bytes] = []
        self.budget_usd = budget_usd
        self.on_checkpoint: Callable[[int], Awaitable[None]] | None = None

    async def emit(self, type: str, data: dict[str, Any], *, task_id: str | None = None) -> None:
        msgspec.json.encode(data)  # events must be storable
        self.events.append((type, data))

    async def record_api_call(self, call: ApiCall) -> None:
        self.calls.append(call)

    async def checkpoint(self, state: bytes) -> None:
        self.checkpoints.append(state)
        if self.on_checkpoint is not None:
            await self.on_checkpoint(len(self.checkpoints))

    async def record_turn(self, *, call: ApiCall | None = None,
                          events: Sequence[TurnEvent] = (),
                          checkpoint: bytes | None = None) -> None:
        """As the daemon's: the call, the events, the checkpoint, in that order."""
        if call is not None:
            await self.record_api_call(call)
        for e in events:
            await self.emit(e.type, e.data, task_id=e.task_id)
        if checkpoint is not None:
            await self.checkpoint(checkpoint)

    async def check_budget(self, estimate_usd: float) -> None:
        if self.budget_usd is None:
            return
        spent = sum(c.cost_usd for c in self.calls)
        if spent + estimate_usd > self.budget_usd:
            raise BudgetExceededError(
                f"run budget ${self.budget_usd} would be exceeded", data={
                    "budget_usd": self.budget_usd, "spent_usd": spent,
                    "estimate_usd": estimate_usd})

    def types(self) -> list[str]:
        return [t for t, _ in self.events]

    def totals(self) -> dict[str, int]:
        keys = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens")
        return {k: sum(getattr(c, k) for c in self.calls) for k in keys}


def make_config(**agent: Any) -> Config:
    base: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05,
                            "request_timeout_s": 10.0, "bash_timeout_s": 20.0}
    base.update(agent)
    return Config(agent=AgentConfig(**base))


def make_worktree(root: Path, name: str = "wt") -> Path:
    wt = root / name
    wt.mkdir()
    subprocess.run(["git", "init", "-q", str(wt)], check=True)
    (wt / "README.md").write_text("# demo\n")
    return wt


def make_job(worktree: Path, *, batch_id: str = "B001", complexity: str = "medium",
             user: str | None = None, **kw: Any) -> BatchJob:
    task = Task(id=f"{batch_id}.1", feature="demo", title="Build the demo", domain="backend",
                complexity=complexity, estimate_minutes=60, files=["app.py"])
    prompt = BatchPrompt(system=SYSTEM, user=user or f"[batch {batch_id}] Build app.py.",
                         tokens=100, context_tokens=10)
    return BatchJob(run_id="R1", batch_id=batch_id, attempt=1, tasks=[task], prompt=prompt,
                    worktree=str(worktree), **kw)


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    return make_worktree(tmp_path)


@pytest.fixture
async def executor(fake_api: FakeAnthropic) -> AsyncIterator[AnthropicExecutor]:  # noqa: F811
    ex = AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake_api.base_url)
    yield ex
    await ex.aclose()


def batch_key(req: FakeRequest) -> str:
    """Which batch a request belongs to: the ``[batch Bxxx]`` tag of its first user text."""
    first = req.first_user_text()
    return first[first.index("[batch ") + 7: first.index("]")]
