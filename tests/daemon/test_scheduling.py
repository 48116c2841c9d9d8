"""The scheduler through the run manager on a real store: dispatch order, limits, failure,
retry, pause/resume/cancel, two runs at once."""

from __future__ import annotations

from typing import Any

import pytest

from buildrunnerd.errors import InvalidStateError, NotFoundError

from .conftest import GatedExecutor, make_plan


async def states_of(h: Any, run_id: str) -> dict[str, str]:
    return {t.plan_id: t.state for t in await h.store.list_tasks(run_id)}


async def test_a_batch_starts_when_its_own_dependencies_are_done_not_its_level(
    harness: Any,
) -> None:
    # A is long, B short, C depends only on B: C must start while A still runs.
    plan = make_plan({"A": ([], 100), "B": ([], 20), "C": (["B"], 10)})
    async with harness(workers=2) as h:
        ex: GatedExecutor = h.executor
        run_id = await h.submit(plan, workers=2)
        await ex.wait_started(f"{run_id}:A", f"{run_id}:B")
        ex.release(f"{run_id}:B")
        await ex.wait_started(f"{run_id}:C")
        assert f"{run_id}:A" in ex.running
        assert (await states_of(h, run_id))["TA"] == "running"
        ex.release(f"{run_id}:C")
        ex.release(f"{run_id}:A")
        assert await h.wait_run(run_id) == "succeeded"
        # A and B start together (their order is the tasks' race); C strictly after B.
        assert ex.started[2] == f"{run_id}:C"
        assert set(ex.started) == {f"{run_id}:{b}" for b in ("A", "B", "C")}


async def test_highest_priority_first_on_a_single_worker(harness: Any) -> None:
    plan = make_plan({"X": ([], 5), "Y": ([], 50), "Z": ([], 20), "W": (["Y"], 100)})
    async with harness(workers=1) as h:
        ex: GatedExecutor = h.executor
        run_id = await h.submit(plan, workers=1)
        order = []
        for _ in range(4):
            await ex.wait_for(lambda: len(ex.running) == 1)
            (key,) = ex.running
            order.append(key.split(":")[1])
            ex.release(key)

            def finished(key: str = key) -> bool:
                return key not in ex.running

            await ex.wait_for(finished)
        assert order == ["Y", "W", "Z", "X"]  # W (100) becomes ready after Y and goes next
        assert await h.wait_run(run_id) == "succeeded"


async def test_per_run_and_daemon_wide_worker_limits(harness: Any) -> None:
    roots: dict[str, tuple[list[str], int]] = {f"R{i}": ([], 10) for i in range(5)}
    async with harness(workers=3) as h:
        ex: GatedExecutor = h.executor
        run1 = await h.submit(make_plan(roots), workers=2)
        run2 = await h.submit(make_plan(roots), workers=2)
        await ex.wait_for(lambda: len(ex.running) == 3)
        per_run = {r: sum(1 for k in ex.running if k.startswith(r)) for r in (run1, run2)}
        assert sorted(per_run.values()) == [1, 2]
        released: set[str] = set()
        while len(released) < 10:
            await ex.wait_for(lambda: bool(ex.running - released))
            assert len(ex.running) <= 3
            for r in (run1, run2):
                assert sum(1 for k in ex.running if k.startswith(r)) <= 2
            for key in ex.running - released:
                ex.release(key)
                released.add(key)
        assert ex.max_running == 3
        assert await h.wait_run(run1) == "succeeded"
        assert await h.wait_run(run2) == "succeeded"


async def test_failure_blocks_dependents_transitively_and_retry_unblocks(harness: Any) -> None:
    plan = make_plan({"A": ([], 30), "B": (["A"], 20), "C": (["B"], 10), "D": ([], 5)})
    async with harness(workers=2) as h:
        ex: GatedExecutor = h.executor
        ex.fail.add("A")
        run_id = await h.submit(plan, workers=2)
        await ex.wait_started(f"{run_id}:A", f"{run_id}:D")
        ex.release(f"{run_id}:A")
        ex.release(f"{run_id}:D")
        assert await h.wait_run(run_id) == "failed"
        tasks = {t.plan_id: t for t in await h.store.list_tasks(run_id)}
        assert {k: t.state for k, t in tasks.items()} == {
            "TA": "failed", "TB": "blocked", "TC": "blocked", "TD": "succeeded"}
        assert tasks["TA"].reason == f"{run_id}:A was told to fail"
        assert tasks["TC"].reason == "blocked: depends on failed task TA"
        run = await h.store.get_run(run_id)
        assert "failed" in (run.reason or "")

        with pytest.raises(InvalidStateError):
            await h.runs.retry_task(f"{run_id}:TB")  # blocked, not failed
        with pytest.raises(NotFoundError):
            await h.runs.retry_task(f"{run_id}:nope")

        ex.fail.clear()
        await h.runs.retry_task(f"{run_id}:TA")
        assert (await h.store.get_run(run_id)).state == "running"
        assert (await states_of(h, run_id))["TC"] == "pending"
        for key in ("A", "B", "C"):
            await ex.wait_started(f"{run_id}:{key}")
            ex.release(f"{run_id}:{key}")
        assert await h.wait_run(run_id, ("succeeded",)) == "succeeded"
        assert set((await states_of(h, run_id)).values()) == {"succeeded"}


async def test_pause_stops_new_dispatches_and_resume_continues(harness: Any) -> None:
    plan = make_plan({"A": ([], 30), "B": (["A"], 20)})
    async with harness(workers=2) as h:
        ex: GatedExecutor = h.executor
        run_id = await h.submit(plan)
        await ex.wait_started(f"{run_id}:A")
        await h.runs.pause(run_id)
        ex.release(f"{run_id}:A")  # in-flight work finishes...
        while (await states_of(h, run_id))["TA"] != "succeeded":
            await h.next_event()
        assert (await states_of(h, run_id))["TB"] == "ready"  # ...but nothing new starts
        assert f"{run_id}:B" not in ex.started
        assert (await h.store.get_run(run_id)).state == "paused"
        with pytest.raises(InvalidStateError):
            await h.runs.pause(run_id)
        await h.runs.resume(run_id)
        await ex.wait_started(f"{run_id}:B")
        ex.release(f"{run_id}:B")
        assert await h.wait_run(run_id) == "succeeded"
        types = [e.type for e in h.events if e.run_id == run_id]
        assert types.index("run.paused") < types.index("run.resumed")


async def test_cancel_stops_in_flight_work_and_cancels_the_rest(harness: Any) -> None:
    plan = make_plan({"A": ([], 30), "B": ([], 20), "C": (["A"], 10)})
    async with harness(workers=2) as h:
        ex: GatedExecutor = h.executor
        run_id = await h.submit(plan)
        await ex.wait_started(f"{run_id}:A", f"{run_id}:B")
        await h.runs.cancel(run_id)
        await ex.wait_for(lambda: not ex.running)
        assert (await h.store.get_run(run_id)).state == "cancelled"
        assert set((await states_of(h, run_id)).values()) == {"cancelled"}
        attempts = await h.store.list_attempts(f"{run_id}:A")
        assert [a.outcome for a in attempts] == ["cancelled"]
        with pytest.raises(InvalidStateError):
            await h.runs.resume(run_id)
        assert h.runs.active_runs == 0


async def test_two_concurrent_runs_with_the_simulated_backend(harness: Any) -> None:
    from buildrunnerd.executor import SimulatedExecutor

    plan = make_plan({"A": ([], 30), "B": (["A"], 20), "C": (["A"], 10), "D": (["B", "C"], 5)},
                     files=True)
    async with harness(workers=3, executor=SimulatedExecutor(0.05)) as h:
        first = await h.submit(plan, workers=2)
        second = await h.submit(plan, workers=2)
        assert await h.wait_run(first) == "succeeded"
        assert await h.wait_run(second) == "succeeded"
        for run_id in (first, second):
            assert len(h.of_type(run_id, "batch.succeeded")) == 4
            assert len(h.of_type(run_id, "file.created")) == 4
            scratch = h.runs.home / "runs" / run_id / "scratch" / "out"
            assert sorted(p.name for p in scratch.iterdir()) == ["A.py", "B.py", "C.py", "D.py"]


async def test_a_run_never_gets_more_workers_than_the_per_run_cap(harness: Any) -> None:
    from buildrunnerd.config import Config, DaemonConfig

    config = Config(daemon=DaemonConfig(max_workers_per_run=2))
    roots: dict[str, tuple[list[str], int]] = {f"R{i}": ([], 10) for i in range(4)}
    async with harness(workers=4, config=config) as h:
        ex: GatedExecutor = h.executor
        run_id = await h.submit(make_plan(roots), workers=5)
        assert (await h.store.get_run(run_id)).options.workers == 2
        await ex.wait_for(lambda: len(ex.running) == 2)
        for key in sorted(ex.running):
            ex.release(key)
        await ex.wait_for(lambda: len(ex.started) == 4)
        assert ex.max_running == 2
        for key in sorted(ex.running):
            ex.release(key)
        assert await h.wait_run(run_id) == "succeeded"
