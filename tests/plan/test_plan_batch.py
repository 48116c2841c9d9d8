"""The batcher's rules, on hand-made tasks and on random task graphs (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from buildrunnerd.plan import Batch, Task, make_batches

ESTIMATE = {"simple": 60, "medium": 90, "complex": 120, "critical": 120}


def _task(tid: str, domain: str = "backend", complexity: str = "simple",
          deps: list[str] | None = None, minutes: int | None = None) -> Task:
    return Task(id=tid, feature="f", title=tid, domain=domain, complexity=complexity,
                estimate_minutes=minutes or ESTIMATE[complexity], depends_on=deps or [])


@st.composite
def task_graphs(draw: st.DrawFn) -> list[Task]:
    n = draw(st.integers(0, 25))
    tasks = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        complexity = draw(st.sampled_from(list(ESTIMATE)))
        tasks.append(_task(f"t{i}", draw(st.sampled_from(["backend", "frontend", "tests"])),
                           complexity, [f"t{d}" for d in deps]))
    return draw(st.permutations(tasks))


def _check_rules(tasks: list[Task], batches: list[Batch], max_minutes: int = 240) -> None:
    by_id = {t.id: t for t in tasks}
    placed = [tid for b in batches for tid in b.task_ids]
    assert sorted(placed) == sorted(by_id), "every task in exactly one batch"
    batch_of = {tid: b.id for b in batches for tid in b.task_ids}
    seen: set[str] = set()
    priority = {b.id: b.priority_minutes for b in batches}
    for b in batches:
        members = [by_id[t] for t in b.task_ids]
        assert {t.domain for t in members} == {b.domain}
        kinds = [t.complexity for t in members]
        heavy = kinds.count("complex") + kinds.count("critical")
        assert heavy == 0 or len(members) == 1
        assert kinds.count("medium") <= 2 and kinds.count("simple") <= 3
        assert not (kinds.count("medium") == 1 and kinds.count("simple") >= 2)
        assert b.estimate_minutes == sum(t.estimate_minutes for t in members)
        assert b.estimate_minutes <= max_minutes or len(members) == 1
        ids = set(b.task_ids)
        if any(d in ids for t in members for d in t.depends_on):
            # An ordered chain: each task waits only for the one before it, and nothing else
            # waits for the inner tasks.
            assert len(members) <= 3
            for first, then in zip(members, members[1:], strict=False):
                assert then.depends_on == [first.id]
                assert [t.id for t in tasks if first.id in t.depends_on] == [then.id]
        expected = {batch_of[d] for t in members for d in t.depends_on} - {b.id}
        assert set(b.depends_on) == expected
        assert all(d in seen for d in b.depends_on), "listed in dependency order (acyclic)"
        seen.add(b.id)
    for b in batches:
        after = [o.priority_minutes for o in batches if b.id in o.depends_on]
        assert b.priority_minutes == b.estimate_minutes + max(after, default=0)
    assert [priority[b.id] for b in batches] == sorted(priority.values(), reverse=True)


@given(task_graphs())
def test_random_task_graphs_follow_every_rule(tasks: list[Task]) -> None:
    batches = make_batches(tasks)
    _check_rules(tasks, batches)
    assert make_batches(tasks) == batches, "deterministic"


def test_three_simple_two_medium_or_one_complex_per_batch() -> None:
    tasks = [_task(f"s{i}") for i in range(4)] + [_task(f"m{i}", complexity="medium")
                                                  for i in range(3)]
    tasks += [_task("c", complexity="complex"), _task("x", complexity="critical")]
    batches = make_batches(tasks)
    _check_rules(tasks, batches)
    sizes = sorted(len(b.task_ids) for b in batches)
    # 4 simple + 3 medium + 2 heavy: [s,s,s], [m,m], [m,s], [c], [x].
    assert sizes == [1, 1, 2, 2, 3]
    assert [b.id for b in batches] == ["B001", "B002", "B003", "B004", "B005"]


def test_domains_are_never_mixed_and_dependencies_split_batches() -> None:
    tasks = [_task("db", "database"), _task("api", deps=["db"]), _task("api2"),
             _task("ui", "frontend", deps=["api"])]
    batches = make_batches(tasks)
    _check_rules(tasks, batches)
    as_sets = [set(b.task_ids) for b in batches]
    assert {"api", "api2"} not in as_sets  # api waits for db; api2 does not
    ui_batch = next(b for b in batches if b.task_ids == ["ui"])
    api_batch = next(b for b in batches if "api" in b.task_ids)
    assert ui_batch.depends_on == [api_batch.id]
    assert batches[0].task_ids == ["db"], "the critical chain goes first"
    assert batches[0].priority_minutes == 180


def test_minutes_cap_and_long_explicit_tasks() -> None:
    tasks = [_task("a", minutes=200), _task("b", minutes=50), _task("long", minutes=500)]
    batches = make_batches(tasks, max_batch_minutes=240)
    _check_rules(tasks, batches)
    assert sorted(b.task_ids for b in batches) == [["a"], ["b"], ["long"]]
    assert len(make_batches(tasks, max_batch_minutes=1000)) == 1


def test_a_short_chain_of_same_domain_tasks_is_one_batch_done_in_order() -> None:
    tasks = [
        _task("model", "database"),
        _task("hashing", "database", deps=["model"]),
        _task("api", "backend", deps=["hashing"]),
        _task("ui", "frontend", deps=["api"]),
        _task("other", "database"),
    ]
    batches = make_batches(tasks)
    _check_rules(tasks, batches)
    by_tasks = {tuple(b.task_ids): b for b in batches}
    # "User model" then "Password hashing": one agent, in order; the chain's one batch waits
    # for nothing and the API batch waits for it.
    chain = by_tasks[("model", "hashing")]
    assert chain.depends_on == [] and chain.estimate_minutes == 120
    assert by_tasks[("api",)].depends_on == [chain.id]
    assert ("other",) in by_tasks, "a parallel task is not pulled into the chain"


def test_a_task_two_others_wait_for_ends_a_chain() -> None:
    tasks = [_task("a"), _task("b", deps=["a"]), _task("c", deps=["a"])]
    batches = make_batches(tasks)
    _check_rules(tasks, batches)
    assert [b.task_ids for b in batches][0] == ["a"]
    assert sorted(tid for b in batches[1:] for tid in b.task_ids) == ["b", "c"]
