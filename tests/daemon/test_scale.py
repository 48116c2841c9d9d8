"""A batch's database work does not grow with the run (issue 13: linear at scale).

A whole scratch run through the daemon's run manager, the simulated backend and a real SQLite
store, for a small and a ten times larger spec of the same shape. The store counts every
statement and every step of SQLite's virtual machine (which grows with the rows a statement
visits) from the submit to the end of the run: per batch, the large run must do what the small
one does. Counts, not times: a per-batch read of every task, batch or event of the run, a
statement per task of the run in a batch's transaction, or a missing index on a per-batch
lookup each make the large run's figure grow with its size, whatever the machine's load.
"""

from __future__ import annotations

from typing import Any

from buildrunnerd.executor import SimulatedExecutor
from buildrunnerd.plan import Plan
from tests.daemon.conftest import make_plan


def chains(batches: int) -> Plan:
    """``batches`` one-task batches in chains of five, each task writing its own file: every
    batch has the same shape whatever the run's size."""
    return make_plan({f"B{i:05d}": ([f"B{i - 1:05d}"] if i % 5 else [], 5 - i % 5)
                      for i in range(batches)}, files=True)


async def _work_per_batch(harness: Any, batches: int) -> tuple[float, float]:
    """(statements, VM steps) per batch of a whole run of ``batches`` batches."""
    async with harness(workers=4, executor=SimulatedExecutor()) as h:
        async with h.store.count_statements() as counts:
            run_id = await h.submit(chains(batches))
            assert await h.wait_run(run_id, timeout_s=60) == "succeeded"
    return counts.statements / batches, counts.vm_steps / batches


async def test_a_batch_costs_the_database_the_same_in_a_large_run(harness: Any) -> None:
    small_statements, small_steps = await _work_per_batch(harness, 25)
    large_statements, large_steps = await _work_per_batch(harness, 250)

    # The per-run work (the plan's rows, the start, the end) is spread over more batches in
    # the large run, so it may only be cheaper per batch; 10% covers the B-tree pages that
    # split more often in a bigger table.
    assert large_statements <= small_statements * 1.10, (small_statements, large_statements)
    assert large_steps <= small_steps * 1.10, (small_steps, large_steps)
    # And the counter counted: a batch is dozens of statements and thousands of steps.
    assert small_statements > 20 and small_steps > 1000
