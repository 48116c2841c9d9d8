"""In-process daemon parts on a real SQLite store: the run manager, its scheduler, the bus.

The only stand-in is the model (:class:`GatedExecutor`): each batch waits until the test
releases it, so dispatch order and concurrency are observed exactly, without timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from buildrunnerd.config import Config
from buildrunnerd.daemon._events import EventBus
from buildrunnerd.daemon._intake import SubmitRequest
from buildrunnerd.daemon._runs import RunManager
from buildrunnerd.executor import BatchJob, ExecutionContext, ExecutionOutcome, Executor
from buildrunnerd.plan._model import Batch, CriticalPath, Plan, PlanFeature, Task
from buildrunnerd.store import Store


class GatedExecutor:
    """A model stand-in: a batch runs until the test calls :meth:`release` for it."""

    name = "gated"

    def __init__(self) -> None:
        self.started: list[str] = []  # "<run_id>:<batch plan id>" in dispatch order
        self.running: set[str] = set()
        self.max_running = 0
        self.fail: set[str] = set()  # batch plan ids that fail when released
        self._gates: dict[str, anyio.Event] = {}
        self._changed = anyio.Event()

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        key = job.batch_id
        gate = self._gates[key] = anyio.Event()
        self.started.append(key)
        self.running.add(key)
        self.max_running = max(self.max_running, len(self.running))
        self._poke()
        try:
            await gate.wait()
        finally:
            self.running.discard(key)
            self._gates.pop(key, None)
            self._poke()
        for path in {f for t in job.tasks for f in t.files}:
            target = Path(job.worktree) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"# {key}\n")
        if key.split(":", 1)[1] in self.fail:
            return ExecutionOutcome(status="failed", reason=f"{key} was told to fail")
        return ExecutionOutcome(status="completed", model="gated", summary=key)

    async def aclose(self) -> None:
        pass

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def release(self, key: str) -> None:
        self._gates[key].set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (checked on every start/finish of a batch)."""
        with anyio.fail_after(timeout_s):
            while not predicate():
                await self._changed.wait()

    async def wait_started(self, *keys: str) -> None:
        await self.wait_for(lambda: all(k in self.running for k in keys))


def make_plan(batches: dict[str, tuple[list[str], int]], *, files: bool = False) -> Plan:
    """One task per batch: ``{batch_id: (depends_on batch ids, priority_minutes)}``; task ids
    are ``T<batch id>``."""
    tasks = [
        Task(id=f"T{bid}", feature="f", title=f"task of {bid}", domain="backend",
             complexity="simple", estimate_minutes=30,
             depends_on=[f"T{d}" for d in deps],
             files=[f"out/{bid}.py"] if files else [])
        for bid, (deps, _) in batches.items()
    ]
    plan_batches = [
        Batch(id=bid, task_ids=[f"T{bid}"], domain="backend", estimate_minutes=30,
              priority_minutes=prio, depends_on=list(deps))
        for bid, (deps, prio) in batches.items()
    ]
    return Plan(
        spec_title="Gated", spec_path=None,
        features=[PlanFeature(id="f", name="F", line=1)],
        tasks=tasks, batches=plan_batches, levels=[], critical_path=CriticalPath([], 0),
    )


@dataclass
class Harness:
    runs: RunManager
    store: Store
    bus: EventBus
    executor: Any
    events: list[Any]
    changed: anyio.Event

    def record(self, event: Any) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = anyio.Event()

    async def submit(self, plan: Plan, workers: int = 4) -> str:
        record = await self.runs.submit_plan(
            plan, spec_text="# Gated\n", spec_path=None,
            request=SubmitRequest(spec_text="# Gated\n", workers=workers),
        )
        return record.id

    async def wait_run(self, run_id: str, states: tuple[str, ...] = ("succeeded", "failed",
                                                                    "cancelled"),
                       timeout_s: float = 20.0) -> str:
        with anyio.fail_after(timeout_s):
            while True:
                state = (await self.store.get_run(run_id)).state
                if state in states:
                    return state
                await self.next_event()

    async def next_event(self) -> None:
        """Wait for the next stored event."""
        await self.changed.wait()

    def of_type(self, run_id: str, type_: str) -> list[Any]:
        return [e for e in self.events if e.run_id == run_id and e.type == type_]


@asynccontextmanager
async def _harness(
    tmp_path: Path, *, workers: int = 4, executor: Executor | None = None,
    config: Config | None = None, db_name: str = "store.sqlite",
    max_size_bytes: int | None = None,
) -> AsyncIterator[Harness]:
    bus = EventBus()
    store = await Store.open(tmp_path / db_name, on_event=bus.publish,
                             max_size_bytes=max_size_bytes)
    runs = RunManager(store=store, executor=executor or GatedExecutor(),
                      config=config or Config(), home=tmp_path / "home", workers=workers)
    h = Harness(runs, store, bus, runs.executor, [], anyio.Event())
    bus.add_listener(h.record)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(runs.scheduler.run)
            await tg.start(runs.serve)
            yield h
            tg.cancel_scope.cancel()
    finally:
        await store.close()


@pytest.fixture
def harness(tmp_path: Path) -> Callable[..., Any]:
    """``async with harness(workers=2, executor=...) as h:`` — a run manager on a real store."""

    def factory(**kwargs: Any) -> Any:
        return _harness(tmp_path, **kwargs)

    return factory
