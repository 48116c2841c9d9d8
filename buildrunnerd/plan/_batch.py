"""The batcher: groups tasks that one agent can do in one sitting.

Rules, from the product brief:

- one domain per batch (one agent, one kind of work, one set of files);
- at most 3 simple, 2 medium or 1 complex/critical task, and at most ``max_batch_minutes`` of
  estimated work (a single longer task still gets its own batch);
- no task in a batch depends on another in the same batch.

Tasks are batched within their execution level: tasks of one level never depend on each other,
and a batch's dependencies all sit in lower levels, so the batch graph is acyclic by
construction. Inside a (level, domain) group tasks are packed first-fit in critical-path order.
"""

from __future__ import annotations

from collections.abc import Sequence

from buildrunnerd.plan._dag import Deps, levels, longest_tails, topo_order
from buildrunnerd.plan._model import Batch, Task

__all__ = ["make_batches", "BATCH_CAPACITY", "COMPLEXITY_WEIGHT"]

# Capacity in sixths of a batch: 3 simple (2 each), 2 medium (3 each) or 1 complex (6) fill one.
# Mixed batches follow from the same arithmetic (a simple and a medium fit; two simple and a
# medium do not).
BATCH_CAPACITY = 6
COMPLEXITY_WEIGHT: dict[str, int] = {"simple": 2, "medium": 3, "complex": 6, "critical": 6}
# First-fit only looks back this far, so packing stays linear however many batches a group has.
_OPEN_BATCH_WINDOW = 8


class _Open:
    __slots__ = ("tasks", "weight", "minutes", "level", "domain", "first_index")

    def __init__(self, level: int, domain: str, first_index: int) -> None:
        self.tasks: list[Task] = []
        self.weight = 0
        self.minutes = 0
        self.level = level
        self.domain = domain
        self.first_index = first_index


def make_batches(
    tasks: Sequence[Task],
    *,
    max_batch_minutes: int = 240,
    deps: Deps | None = None,
    order: Sequence[str] | None = None,
) -> list[Batch]:
    """Group ``tasks`` into batches, highest ``priority_minutes`` first, ids ``B001``...

    ``deps`` is the task graph and ``order`` its topological order (both computed when not
    given). Deterministic: the same tasks in the same order always give the same batches.
    """
    if deps is None:
        deps = {t.id: t.depends_on for t in tasks}
    if order is None:
        order = topo_order(deps)
    by_id = {t.id: t for t in tasks}
    index = {t.id: i for i, t in enumerate(tasks)}
    tails = longest_tails(deps, {t.id: t.estimate_minutes for t in tasks}, order=order)

    groups: dict[tuple[int, str], list[Task]] = {}
    for level_no, level in enumerate(levels(deps, order=order)):
        for task_id in level:
            task = by_id[task_id]
            groups.setdefault((level_no, task.domain), []).append(task)

    packed: list[_Open] = []
    for (level_no, domain), group in groups.items():
        group.sort(key=lambda t: (-tails[t.id], index[t.id]))
        open_batches: list[_Open] = []
        for task in group:
            weight = COMPLEXITY_WEIGHT.get(task.complexity, BATCH_CAPACITY)
            target = None
            for candidate in open_batches[-_OPEN_BATCH_WINDOW:]:
                if (
                    candidate.weight + weight <= BATCH_CAPACITY
                    and candidate.minutes + task.estimate_minutes <= max_batch_minutes
                ):
                    target = candidate
                    break
            if target is None:
                target = _Open(level_no, domain, index[task.id])
                open_batches.append(target)
                packed.append(target)
            target.tasks.append(task)
            target.weight += weight
            target.minutes += task.estimate_minutes

    # Batch graph: a batch waits for every batch holding one of its tasks' dependencies.
    batch_of = {t.id: n for n, b in enumerate(packed) for t in b.tasks}
    batch_deps: list[list[int]] = []
    for n, b in enumerate(packed):
        wanted = dict.fromkeys(batch_of[d] for t in b.tasks for d in deps[t.id])
        wanted.pop(n, None)  # cannot happen (same level), but never let a batch wait on itself
        batch_deps.append(list(wanted))

    # Priority: the heaviest chain of batch estimates from this batch to the end. Dependencies
    # sit in strictly lower levels, so walking levels downwards visits dependents first.
    priority = [0] * len(packed)
    best_after = [0] * len(packed)
    for n in sorted(range(len(packed)), key=lambda n: -packed[n].level):
        priority[n] = packed[n].minutes + best_after[n]
        for d in batch_deps[n]:
            best_after[d] = max(best_after[d], priority[n])

    # Highest priority first is also a valid dependency order (a batch always has a higher
    # priority than anything waiting for it); level and task order break ties.
    ranked = sorted(
        range(len(packed)), key=lambda n: (-priority[n], packed[n].level, packed[n].first_index)
    )
    width = max(3, len(str(len(packed))))
    batch_id = {n: f"B{pos:0{width}d}" for pos, n in enumerate(ranked, 1)}
    position = {n: pos for pos, n in enumerate(ranked)}
    return [
        Batch(
            id=batch_id[n],
            task_ids=[t.id for t in packed[n].tasks],
            domain=packed[n].domain,
            estimate_minutes=packed[n].minutes,
            priority_minutes=priority[n],
            depends_on=[batch_id[d] for d in sorted(batch_deps[n], key=position.__getitem__)],
        )
        for n in ranked
    ]
