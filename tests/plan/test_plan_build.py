"""``build_plan``: validation, assembly, and properties on random specs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildrunnerd.errors import PlanError, SpecError
from buildrunnerd.plan import Plan, Task, build_plan
from buildrunnerd.spec import parse_spec
from buildrunnerd.spec._model import Feature, Item, Spec

WORDS = ["store", "users", "in", "the", "database", "GET", "/api/items", "display", "a", "page",
         "calculate", "totals", "deploy", "with", "docker", "password", "login", "tests",
         "document", "readme", "search", "click", "button", "fast", "report"]


def _task(tid: str, deps: list[str] | None = None, line: int | None = None) -> Task:
    return Task(id=tid, feature="f", title=f"Task {tid}", domain="backend", complexity="simple",
                estimate_minutes=60, depends_on=deps or [], acceptance_criteria=["works"],
                line=line)


SPEC = Spec(title="P", path="p.md", format="native", features=[Feature(id="f", name="F", line=1)])


def test_duplicate_ids_and_unknown_dependencies_are_all_reported() -> None:
    tasks = [_task("a", line=3), _task("a", line=4), _task("b", ["zzz", "a"], line=5)]
    with pytest.raises(PlanError) as info:
        build_plan(SPEC, tasks)
    err = info.value
    assert isinstance(err, SpecError)  # the CLI and RPC layer report it like a spec error
    messages = [(p.line, p.message) for p in err.problems]
    assert messages[0][0] == 4 and "duplicate task id 'a' (first used on line 3)" in messages[0][1]
    assert messages[1][0] == 5 and "'b' depends on unknown task 'zzz'" in messages[1][1]
    assert "p.md:4: duplicate task id" in err.message


def test_a_cycle_is_named_in_order_with_its_line() -> None:
    tasks = [_task("a", ["c"], line=2), _task("b", ["a"], line=3), _task("c", ["b"], line=4),
             _task("d", line=5)]
    with pytest.raises(PlanError) as info:
        build_plan(SPEC, tasks)
    assert info.value.data["cycle"] == ["a", "c", "b"]
    assert info.value.problems[0].line == 2
    assert "a -> c -> b -> a" in info.value.message


def test_given_tasks_are_planned_as_they_are() -> None:
    tasks = [_task("x"), _task("y", ["x"]), _task("z", ["x"])]
    plan = build_plan(SPEC, tasks)
    assert [t.id for t in plan.tasks] == ["x", "y", "z"]
    assert plan.levels == [["x"], ["y", "z"]]
    assert plan.critical_path.minutes == 120 and plan.critical_path.task_ids[0] == "x"
    assert [b.task_ids for b in plan.batches] == [["x"], ["y", "z"]]
    assert plan.batches[1].depends_on == [plan.batches[0].id]


def test_plan_carries_spec_warnings_and_the_test_command_and_skips_done_tasks() -> None:
    spec = parse_spec(
        "# P\n\nTest command: `pytest -q`\n\n## Tasks\n\n"
        "- [x] Task T1: Write the parser\n- [ ] Task T2: Write the CLI\n  - Depends on: T1\n"
        "- [ ] Task T3: Write the docs\n  - Depends on: T2\n",
        path="p.md",
    )
    plan = build_plan(spec)
    out = plan.to_json_dict()
    assert out["spec"] == {"title": "P", "path": "p.md", "test_command": "pytest -q",
                           "language": "python", "suggested_test_command": None}
    assert any("1 of 3 tasks are marked done" in w["message"] for w in out["warnings"])
    assert plan.test_command == "pytest -q"
    # The done task is not planned, and the task that waited for it is free to start.
    assert [(t["id"], t["depends_on"]) for t in out["tasks"]] == [("T2", []), ("T3", ["T2"])]


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    n = draw(st.integers(1, 8))
    features = []
    line = 1
    for i in range(n):
        def sentence() -> str:
            return " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8)))

        reqs = [Item(sentence(), line + k) for k in range(draw(st.integers(0, 7)))]
        crit = [Item(sentence(), line + 10 + k) for k in range(draw(st.integers(0, 3)))]
        deps = draw(st.lists(st.sampled_from([f"f{j}" for j in range(i)]), unique=True,
                             max_size=2)) if i else []
        files = draw(st.lists(st.sampled_from(["src/a.py", "tests/test_a.py", "docs/a.md",
                                               "web/App.tsx", "Dockerfile", "db/schema.sql"]),
                              unique=True, max_size=3))
        features.append(Feature(id=f"f{i}", name=f"Feature {i}", line=line,
                                description=sentence(), requirements=reqs,
                                acceptance_criteria=crit, depends_on=deps, files=files))
        line += 20
    return Spec(title="Random", path=None, format="native", features=features)


@given(specs())
@settings(max_examples=60, deadline=None)
def test_random_specs_give_consistent_plans(spec: Spec) -> None:
    plan: Plan = build_plan(spec)
    assert plan == build_plan(spec), "deterministic"
    ids = {t.id for t in plan.tasks}
    by_id = {t.id: t for t in plan.tasks}
    for task in plan.tasks:
        assert task.estimate_minutes in (60, 90, 120)
        assert 1 <= len([c for c in task.acceptance_criteria if not c.startswith("A test")]) \
            or task.domain == "tests"
        assert set(task.depends_on) <= ids
    for feature in spec.features:
        mine = [t for t in plan.tasks if t.feature == feature.id]
        assert mine, "every feature gets at least one task"
        # Every requirement and criterion of the spec lands in some task of its feature.
        texts = {c for t in mine for c in t.acceptance_criteria}
        for item in [*feature.requirements, *feature.acceptance_criteria]:
            assert item.text in texts or f"A test checks: {item.text}" in texts
        # Feature dependencies hold at task level: each task of the feature comes after
        # some task of every feature it depends on (transitively).
        for dep in feature.depends_on:
            for task in mine:
                seen, stack = set(), list(task.depends_on)
                while stack:
                    cur = stack.pop()
                    if cur not in seen:
                        seen.add(cur)
                        stack.extend(by_id[cur].depends_on)
                assert any(by_id[s].feature == dep for s in seen)
        named = [f for t in mine for f in t.files if f in feature.files]
        assert sorted(set(named)) == sorted(feature.files), "named files are all used"


def test_planning_leaves_the_garbage_collector_as_it_found_it() -> None:
    import gc

    assert gc.isenabled()
    build_plan(SPEC, [_task("a")])
    assert gc.isenabled()
    with pytest.raises(PlanError):
        build_plan(SPEC, [_task("a", ["a"])])
    assert gc.isenabled(), "re-enabled after an error too"
    gc.disable()
    try:
        build_plan(SPEC, [_task("a")])
        assert not gc.isenabled(), "a caller's choice to disable it is kept"
    finally:
        gc.enable()
