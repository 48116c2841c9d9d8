"""The dependency graph helpers, on hand-made graphs and on random DAGs (hypothesis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildrunnerd.errors import PlanError
from buildrunnerd.plan import critical_path, find_cycle, levels, ready_set, topo_order

Graph = tuple[dict[str, list[str]], dict[str, int]]


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 12) -> Graph:
    """A random DAG: node i may only depend on nodes < i, then the mapping order is shuffled."""
    n = draw(st.integers(min_value=0, max_value=max_nodes))
    names = [f"t{i}" for i in range(n)]
    deps: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        chosen = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=4)) if i else []
        deps[name] = chosen
    order = draw(st.permutations(names))
    weights = {name: draw(st.sampled_from([60, 90, 120])) for name in names}
    return {name: deps[name] for name in order}, weights


def _is_cycle(deps: dict[str, list[str]], cycle: list[str]) -> bool:
    return bool(cycle) and len(set(cycle)) == len(cycle) and all(
        cycle[(i + 1) % len(cycle)] in deps[node] for i, node in enumerate(cycle)
    )


def _all_paths(deps: dict[str, list[str]]) -> list[list[str]]:
    """Every dependency chain, by brute force (small graphs only): the oracle."""
    paths: list[list[str]] = []

    def walk(path: list[str]) -> None:
        paths.append(path)
        for dependent, node_deps in deps.items():
            if path[-1] in node_deps:
                walk([*path, dependent])

    for node in deps:
        walk([node])
    return paths


@given(dags())
def test_topo_order_puts_every_dependency_first(graph: Graph) -> None:
    deps, _ = graph
    order = topo_order(deps)
    assert sorted(order) == sorted(deps)
    position = {node: i for i, node in enumerate(order)}
    for node, node_deps in deps.items():
        assert all(position[d] < position[node] for d in node_deps)


@given(dags())
def test_levels_are_the_longest_dependency_depth(graph: Graph) -> None:
    deps, _ = graph
    result = levels(deps)
    assert sorted(itertools.chain.from_iterable(result)) == sorted(deps)
    level_of = {node: n for n, level in enumerate(result) for node in level}
    for node, node_deps in deps.items():
        expected = 1 + max((level_of[d] for d in node_deps), default=-1)
        assert level_of[node] == expected
    assert all(result), "no empty level"


@given(dags(max_nodes=8))
@settings(max_examples=60)
def test_critical_path_is_the_heaviest_chain(graph: Graph) -> None:
    deps, weights = graph
    path = critical_path(deps, weights)
    if not deps:
        assert path.task_ids == [] and path.minutes == 0
        return
    assert path.minutes == sum(weights[t] for t in path.task_ids)
    for earlier, later in itertools.pairwise(path.task_ids):
        assert earlier in deps[later]
    heaviest = max(sum(weights[t] for t in p) for p in _all_paths(deps))
    assert path.minutes == heaviest


@given(dags(), st.data())
def test_ready_set_is_exactly_the_unblocked_work(
    graph: Graph, data: st.DataObject
) -> None:
    deps, _ = graph
    order = topo_order(deps)
    done = set(order[: data.draw(st.integers(0, len(order)))])  # a prefix: a reachable state
    ready = ready_set(deps, done)
    for node in deps:
        unblocked = node not in done and all(d in done for d in deps[node])
        assert (node in ready) == unblocked
    assert ready == [n for n in deps if n in set(ready)], "keeps the mapping's order"


@given(dags())
def test_acyclic_graphs_have_no_cycle(graph: Graph) -> None:
    assert find_cycle(graph[0]) is None


@given(dags(), st.data())
def test_a_back_edge_makes_a_cycle_that_is_reported_in_order(
    graph: Graph, data: st.DataObject
) -> None:
    deps, _ = graph
    chains = [p for p in _all_paths(deps) if len(p) >= 2] if len(deps) <= 8 else []
    if not chains:
        # No chain to close: close a self-loop instead, the smallest cycle there is.
        if not deps:
            return
        node = data.draw(st.sampled_from(sorted(deps)))
        deps[node] = [*deps[node], node]
    else:
        chain = data.draw(st.sampled_from(chains))
        deps[chain[0]] = [*deps[chain[0]], chain[-1]]  # the chain's first now needs its last
    cycle = find_cycle(deps)
    assert cycle is not None and _is_cycle(deps, cycle)
    with pytest.raises(PlanError) as info:
        topo_order(deps)
    assert _is_cycle(deps, info.value.data["cycle"])
    assert " -> ".join(info.value.data["cycle"]) in info.value.message


def test_cycle_is_named_in_dependency_order() -> None:
    deps = {"a": ["b"], "b": ["c"], "c": ["a"], "d": []}
    assert find_cycle(deps) == ["a", "b", "c"]
    with pytest.raises(PlanError, match="a -> b -> c -> a"):
        levels(deps)


def test_unknown_dependency_is_named() -> None:
    with pytest.raises(PlanError, match="'a' depends on unknown id 'zzz'"):
        topo_order({"a": ["zzz"]})


def test_ties_follow_the_mapping_order() -> None:
    deps = {"c": [], "a": [], "b": ["c"]}
    assert topo_order(deps) == ["c", "a", "b"]
    assert levels(deps) == [["c", "a"], ["b"]]
    # Two chains of equal weight: the one ending first in the mapping wins.
    assert critical_path({"x": [], "y": []}, {"x": 60, "y": 60}).task_ids == ["x"]


def test_long_chain_does_not_hit_the_recursion_limit() -> None:
    n = 20_000
    deps = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(n)}
    deps["t0"] = [f"t{n - 1}"]
    cycle = find_cycle(deps)
    assert cycle is not None and len(cycle) == n
    deps["t0"] = []
    assert critical_path(deps, dict.fromkeys(deps, 60)).minutes == 60 * n
