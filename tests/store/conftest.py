"""Fixtures for the store tests: a real SQLite file under tmp_path, a settable clock, plans."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from buildrunnerd import protocol
from buildrunnerd.plan import Batch, CriticalPath, Plan, PlanFeature, Task
from buildrunnerd.store import NewRun, RunOptions, RunRecord, Store


class Clock:
    """A clock the test moves by hand (the store asks it for ``now``)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Recorder:
    """An ``on_event`` callback that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[protocol.Event] = []

    def __call__(self, event: protocol.Event) -> None:
        self.events.append(event)


def make_plan(n_batches: int = 3, tasks_per_batch: int = 2, *, title: str = "Demo") -> Plan:
    """A chain of batches B001 <- B002 <- ...; inside a batch, each task depends on the previous
    one, and the first task of a batch on the last task of the batch before."""
    tasks: list[Task] = []
    batches: list[Batch] = []
    previous: str | None = None
    for b in range(1, n_batches + 1):
        ids: list[str] = []
        for t in range(1, tasks_per_batch + 1):
            tid = f"T{(b - 1) * tasks_per_batch + t:03d}"
            tasks.append(Task(
                id=tid, feature="core", title=f"task {tid}", domain="backend",
                complexity="simple", estimate_minutes=30,
                depends_on=[previous] if previous else [], files=[f"src/{tid.lower()}.py"],
                acceptance_criteria=[f"{tid} works"], description=f"build {tid}",
            ))
            ids.append(tid)
            previous = tid
        batches.append(Batch(
            id=f"B{b:03d}", task_ids=ids, domain="backend", estimate_minutes=30 * len(ids),
            priority_minutes=30 * len(ids) * (n_batches - b + 1),
            depends_on=[f"B{b - 1:03d}"] if b > 1 else [], prompt_tokens=100 * b,
        ))
    return Plan(
        spec_title=title, spec_path="/specs/demo.md",
        features=[PlanFeature(id="core", name="Core", line=3)],
        tasks=tasks, batches=batches, levels=[[t.id] for t in tasks],
        critical_path=CriticalPath(task_ids=[t.id for t in tasks], minutes=30 * len(tasks)),
    )


async def submit(
    store: Store, run_id: str = "r-00000001", plan: Plan | None = None, **options: Any
) -> RunRecord:
    """Create a run of ``plan`` (default :func:`make_plan`)."""
    return await store.create_run(
        NewRun(
            id=run_id, spec_text="# Demo\n", spec_path="/specs/demo.md", repo="/repo",
            options=RunOptions(**options),
        ),
        plan or make_plan(),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 24, 18, 0, 0, 123000, tzinfo=UTC))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "buildrunner.db"


@pytest.fixture
async def store(db_path: Path, clock: Clock, recorder: Recorder) -> AsyncIterator[Store]:
    opened = await Store.open(db_path, on_event=recorder, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()
