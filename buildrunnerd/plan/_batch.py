"""The batcher: groups tasks that one agent can do in one sitting.

Rules, from the product brief:

- one domain per batch (one agent, one kind of work, one set of files);
- at most 3 simple, 2 medium or 1 complex/critical task, and at most ``max_batch_minutes`` of
  estimated work (a single longer task still gets its own batch);
- a batch is either tasks of one execution level (none depends on another), or a short
  ordered chain of same-domain tasks that one agent does in order: ``B`` joins ``A``'s batch
  when ``A`` is all ``B`` waits for and ``B`` is all that waits for ``A`` (the seeds' "User
  model" then "Password hashing"), at most ``_MAX_CHAIN`` tasks.

Other tasks are batched within their execution level: tasks of one level never depend on each
other. A batch's dependencies always start in a lower level than the batch itself (a chain is
entered only through its first task, and nothing outside waits for its inner tasks), so the
batch graph is acyclic by construction. Inside a (level, domain) group tasks are packed
first-fit in critical-path order.
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
# "A short chain": one agent keeps the context of the previous task for the next one.
_MAX_CHAIN = 3


def _chains(tasks: Sequence[Task], deps: Deps, max_batch_minutes: int) -> list[list[Task]]:
    """Chains of two or more tasks to batch together, in order (see the module docstring)."""
    by_id = {t.id: t for t in tasks}
    dependents: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for d in deps[t.id]:
            dependents[d].append(t.id)

    def successor(task: Task) -> Task | None:
        after = dependents[task.id]
        if len(after) != 1:
            return None
        nxt = by_id[after[0]]
        if len(deps[nxt.id]) != 1 or nxt.domain != task.domain or nxt.optional != task.optional:
            return None
        return nxt

    chained: set[str] = set()
    out: list[list[Task]] = []
    for task in tasks:
        if task.id in chained:
            continue
        # Start only at the head of a chain: a task that is its predecessor's only successor
        # is reached from there.
        before = deps[task.id]
        if len(before) == 1 and successor(by_id[before[0]]) is task:
            continue
        chain = [task]
        weight = COMPLEXITY_WEIGHT.get(task.complexity, BATCH_CAPACITY)
        minutes = task.estimate_minutes
        nxt = successor(task)
        while nxt is not None and len(chain) < _MAX_CHAIN:
            w = COMPLEXITY_WEIGHT.get(nxt.complexity, BATCH_CAPACITY)
            if weight + w > BATCH_CAPACITY or minutes + nxt.estimate_minutes > max_batch_minutes:
                break
            chain.append(nxt)
            weight += w
            minutes += nxt.estimate_minutes
            nxt = successor(nxt)
        if len(chain) > 1:
            chained.update(t.id for t in chain)
            out.append(chain)
    return out


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
    index = {t.id: i for i, t in enumerate(tasks)}
    tails = longest_tails(deps, {t.id: t.estimate_minutes for t in tasks}, order=order)

    level_of: dict[str, int] = {}
    groups: dict[tuple[int, str], list[Task]] = {}
    for level_no, level in enumerate(levels(deps, order=order)):
        for task_id in level:
            level_of[task_id] = level_no
    packed: list[_Open] = []
    in_chain: set[str] = set()
    for chain in _chains(tasks, deps, max_batch_minutes):
        unit = _Open(level_of[chain[0].id], chain[0].domain, index[chain[0].id])
        for task in chain:
            unit.tasks.append(task)
            unit.weight += COMPLEXITY_WEIGHT.get(task.complexity, BATCH_CAPACITY)
            unit.minutes += task.estimate_minutes
            in_chain.add(task.id)
        packed.append(unit)
    for task in tasks:
        if task.id not in in_chain:
            groups.setdefault((level_of[task.id], task.domain), []).append(task)

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
        wanted.pop(n, None)  # a chain's own links are not waits on another batch
        batch_deps.append(list(wanted))

    # Priority: the heaviest chain of batch estimates from this batch to the end. Dependencies
    # start in strictly lower levels, so walking levels downwards visits dependents first.
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
