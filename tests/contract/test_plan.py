"""Contract: ``buildrunnerd plan SPEC [--json]`` (offline) and ``brctl plan`` give the same
plan, field by field; a spec that cannot be planned exits 1 with every problem's line."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.contract._support import (
    COMPLEXITIES,
    REPO_ROOT,
    TINY_FEATURE_LINES,
    TINY_SPEC,
    Daemon,
    buildrunnerd,
    clean_env,
    json_out,
)

EXAMPLE_SPEC = REPO_ROOT / "examples" / "todo-api" / "PROJECT_SPEC.md"

# Alpha <-> Beta form a cycle; Gamma depends on a feature that does not exist.
BROKEN_SPEC = """\
# Broken

## Features

### Alpha
**Depends on:** Beta

- [ ] `a.py` holds alpha.

### Beta
**Depends on:** Alpha

- [ ] `b.py` holds beta.

### Gamma
**Depends on:** Billing

- [ ] `c.py` holds gamma.
"""
CYCLE_SPEC = """\
# Cycle only

## Features

### Alpha
**Depends on:** Beta

- [ ] `a.py` holds alpha.

### Beta
**Depends on:** Alpha

- [ ] `b.py` holds beta.
"""
UNKNOWN_SPEC = """\
# Unknown only

## Features

### Profile
**Depends on:** Billing

- [ ] `profile.py` holds the profile.
"""
NO_FEATURES_SPEC = "# Nothing\n\nJust prose, nothing to build.\n"


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No daemon anywhere: the socket named here does not exist."""
    return clean_env(BUILDRUNNER_HOME=str(tmp_path / "state"),
                     BUILDRUNNER_SOCKET=str(tmp_path / "nowhere" / "none.sock"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_plan_shape(plan: Any) -> None:
    """Every field the contract lists for ``plan --json``, with its type and references."""
    assert isinstance(plan, dict)
    assert {"spec", "features", "tasks", "batches", "levels", "critical_path",
            "warnings"} <= set(plan), sorted(plan)

    spec = plan["spec"]
    assert isinstance(spec["title"], str) and spec["title"]
    assert spec["path"] is None or isinstance(spec["path"], str)

    features = plan["features"]
    assert isinstance(features, list) and features
    feature_ids = [f["id"] for f in features]
    assert len(set(feature_ids)) == len(feature_ids)
    for feature in features:
        assert isinstance(feature["id"], str) and feature["id"]
        assert isinstance(feature["name"], str) and feature["name"]
        assert _is_int(feature["line"]) and feature["line"] >= 1
        assert isinstance(feature["depends_on"], list)
        assert set(feature["depends_on"]) <= set(feature_ids), feature

    tasks = plan["tasks"]
    assert isinstance(tasks, list) and tasks
    task_ids = [t["id"] for t in tasks]
    assert len(set(task_ids)) == len(task_ids)
    for task in tasks:
        assert isinstance(task["id"], str) and task["id"]
        assert task["feature"] in feature_ids, task
        assert isinstance(task["title"], str) and task["title"]
        assert isinstance(task["domain"], str) and task["domain"]
        assert task["complexity"] in COMPLEXITIES, task
        assert _is_int(task["estimate_minutes"]) and task["estimate_minutes"] > 0
        assert isinstance(task["depends_on"], list)
        assert set(task["depends_on"]) <= set(task_ids), task
        assert task["id"] not in task["depends_on"]
        assert isinstance(task["files"], list)
        assert all(isinstance(f, str) for f in task["files"])
        assert isinstance(task["acceptance_criteria"], list)
        assert all(isinstance(c, str) for c in task["acceptance_criteria"])

    batches = plan["batches"]
    assert isinstance(batches, list) and batches
    batched: list[str] = []
    for batch in batches:
        assert isinstance(batch["id"], str) and batch["id"]
        assert isinstance(batch["task_ids"], list) and batch["task_ids"]
        assert isinstance(batch["domain"], str)
        assert _is_int(batch["prompt_tokens"]) and batch["prompt_tokens"] > 0
        batched += batch["task_ids"]
    assert sorted(batched) == sorted(task_ids), "every task is in exactly one batch"

    levels = plan["levels"]
    assert isinstance(levels, list) and all(isinstance(level, list) for level in levels)
    assert sorted(t for level in levels for t in level) == sorted(task_ids)
    level_of = {t: n for n, level in enumerate(levels) for t in level}
    by_id = {t["id"]: t for t in tasks}
    for task in tasks:  # a task runs after everything it depends on
        assert all(level_of[d] < level_of[task["id"]] for d in task["depends_on"]), task

    critical = plan["critical_path"]
    assert isinstance(critical["task_ids"], list) and critical["task_ids"]
    assert set(critical["task_ids"]) <= set(task_ids)
    assert _is_int(critical["minutes"])

    @functools.cache
    def longest(task_id: str) -> int:
        task = by_id[task_id]
        return int(task["estimate_minutes"]) + max(
            (longest(d) for d in task["depends_on"]), default=0)

    # The critical path is the longest chain of dependent tasks, in minutes of estimate.
    assert critical["minutes"] == max(longest(t) for t in task_ids)
    assert critical["minutes"] == sum(by_id[t]["estimate_minutes"] for t in critical["task_ids"])
    path = critical["task_ids"]
    for before, after in zip(path, path[1:], strict=False):
        assert before in by_id[after]["depends_on"], (before, after)

    assert isinstance(plan["warnings"], list)
    for warning in plan["warnings"]:
        assert warning["line"] is None or _is_int(warning["line"])
        assert isinstance(warning["message"], str) and warning["message"]


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("offline")


@pytest.fixture(scope="module")
def tiny_spec(offline_dir: Path) -> Path:
    spec = offline_dir / "PROJECT_SPEC.md"
    spec.write_text(TINY_SPEC, encoding="utf-8")
    return spec


@pytest.fixture(scope="module")
def example_plan(offline_dir: Path) -> Any:
    """``buildrunnerd plan EXAMPLE --json``, run once for the module (no daemon anywhere)."""
    return json_out(buildrunnerd("plan", str(EXAMPLE_SPEC), "--json",
                                 env=_offline_env(offline_dir)))


@pytest.fixture(scope="module")
def tiny_plan(offline_dir: Path, tiny_spec: Path) -> Any:
    return json_out(buildrunnerd("plan", str(tiny_spec), "--json", env=_offline_env(offline_dir)))


def test_buildrunnerd_plan_json_shape_of_the_example(example_plan: Any) -> None:
    plan = example_plan
    _check_plan_shape(plan)
    assert plan["spec"]["title"] == "Todo API"
    assert Path(plan["spec"]["path"]).resolve() == EXAMPLE_SPEC.resolve()


def test_buildrunnerd_plan_json_points_back_into_the_spec(tiny_plan: Any,
                                                          tiny_spec: Path) -> None:
    plan = tiny_plan
    _check_plan_shape(plan)
    assert plan["spec"]["title"] == "Tiny service"
    assert Path(plan["spec"]["path"]).resolve() == tiny_spec.resolve()
    features = {f["id"]: f for f in plan["features"]}
    assert {fid: f["line"] for fid, f in features.items()} == TINY_FEATURE_LINES
    assert features["core"]["name"] == "Core" and features["extra"]["name"] == "Extra"
    assert features["extra"]["depends_on"] == ["core"] and features["core"]["depends_on"] == []
    files = {f for t in plan["tasks"] for f in t["files"]}
    assert {"app/core.py", "app/extra.py"} <= files
    extra_tasks = {t["id"] for t in plan["tasks"] if t["feature"] == "extra"}
    core_tasks = {t["id"] for t in plan["tasks"] if t["feature"] == "core"}
    assert any(set(t["depends_on"]) & core_tasks
               for t in plan["tasks"] if t["id"] in extra_tasks), "extra's tasks wait for core's"


def test_buildrunnerd_plan_text_output(tmp_path: Path, tiny_spec: Path) -> None:
    result = buildrunnerd("plan", str(tiny_spec), env=_offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Core" in result.stdout and "Extra" in result.stdout


def test_plan_warnings_have_a_line_and_a_message(tmp_path: Path) -> None:
    # docs/spec-format.md: an unknown Domain is ignored with a warning.
    spec = tmp_path / "w.md"
    spec.write_text("# W\n\n## Features\n\n### Alpha\nDomain: weird\n\n- [ ] `a.py` alpha.\n",
                    encoding="utf-8")
    plan = json_out(buildrunnerd("plan", str(spec), "--json", env=_offline_env(tmp_path)))
    _check_plan_shape(plan)
    assert plan["warnings"], plan["warnings"]


@pytest.mark.parametrize("which", ["example", "tiny"])
def test_brctl_plan_gives_the_same_plan(daemon: Daemon, tiny_spec: Path, example_plan: Any,
                                        tiny_plan: Any, which: str) -> None:
    spec, offline = (EXAMPLE_SPEC, example_plan) if which == "example" else (tiny_spec, tiny_plan)
    online = json_out(daemon.brctl("--json", "plan", str(spec)))
    _check_plan_shape(online)
    assert online == offline


def test_brctl_plan_text_output(daemon: Daemon, tiny_spec: Path) -> None:
    result = daemon.brctl("plan", str(tiny_spec))
    assert result.returncode == 0, result.stderr
    assert "Core" in result.stdout and "Extra" in result.stdout


def test_spec_plan_method_with_spec_text(daemon: Daemon, tiny_plan: Any) -> None:
    plan = daemon.rpc("spec.plan", spec_text=TINY_SPEC)
    _check_plan_shape(plan)
    assert plan["spec"]["path"] is None
    offline = tiny_plan
    assert plan["features"] == offline["features"]
    assert plan["tasks"] == offline["tasks"]


# --- specs that cannot be planned ------------------------------------------------------------

def _write(tmp_path: Path, text: str) -> Path:
    spec = tmp_path / "bad.md"
    spec.write_text(text, encoding="utf-8")
    return spec


def _check_errors(doc: Any) -> list[dict[str, Any]]:
    assert isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"], doc
    for error in doc["errors"]:
        assert "line" in error and (error["line"] is None or _is_int(error["line"])), error
        assert isinstance(error["message"], str) and error["message"], error
    return list(doc["errors"])


def _check_stderr_lists(stderr: str, errors: list[dict[str, Any]]) -> None:
    """Every problem is on stderr with its line number."""
    lines = stderr.splitlines()
    for error in errors:
        matching = [line for line in lines if error["message"] in line]
        assert matching, (error, stderr)
        if error["line"] is not None:
            assert any(re.search(rf"\b{error['line']}\b", line) for line in matching), (
                error, stderr)


def test_unplannable_spec_exits_1_with_every_problem_and_its_line(tmp_path: Path) -> None:
    spec = _write(tmp_path, BROKEN_SPEC)
    env = _offline_env(tmp_path)
    as_json = buildrunnerd("plan", str(spec), "--json", env=env)
    assert as_json.returncode == 1, as_json
    errors = _check_errors(json.loads(as_json.stdout))
    assert len(errors) >= 2, errors  # the cycle AND the unknown feature: every problem
    assert all(e["line"] is not None for e in errors), errors
    messages = " | ".join(e["message"] for e in errors)
    assert "Billing" in messages
    assert re.search(r"alpha", messages, re.I) and re.search(r"beta", messages, re.I)

    text = buildrunnerd("plan", str(spec), env=env)
    assert text.returncode == 1
    _check_stderr_lists(text.stderr, errors)


def test_cycle_names_the_features_on_it(tmp_path: Path) -> None:
    result = buildrunnerd("plan", str(_write(tmp_path, CYCLE_SPEC)), env=_offline_env(tmp_path))
    assert result.returncode == 1
    assert re.search(r"cycle", result.stderr, re.I), result.stderr
    assert re.search(r"alpha", result.stderr, re.I) and re.search(r"beta", result.stderr, re.I)


def test_unknown_feature_is_named(tmp_path: Path) -> None:
    spec = _write(tmp_path, UNKNOWN_SPEC)
    result = buildrunnerd("plan", str(spec), env=_offline_env(tmp_path))
    assert result.returncode == 1
    assert "Billing" in result.stderr, result.stderr
    assert re.search(r"\b6\b", result.stderr), "the line of the dependency (6)"


def test_spec_without_features_exits_1(tmp_path: Path) -> None:
    spec = _write(tmp_path, NO_FEATURES_SPEC)
    result = buildrunnerd("plan", str(spec), "--json", env=_offline_env(tmp_path))
    assert result.returncode == 1
    _check_errors(json.loads(result.stdout))


def test_brctl_plan_of_a_bad_spec_exits_1(daemon: Daemon, tmp_path: Path) -> None:
    spec = _write(tmp_path, BROKEN_SPEC)
    as_json = daemon.brctl("--json", "plan", str(spec))
    assert as_json.returncode == 1, as_json
    errors = _check_errors(json.loads(as_json.stdout))
    assert len(errors) >= 2
    text = daemon.brctl("plan", str(spec))
    assert text.returncode == 1
    _check_stderr_lists(text.stderr, errors)


def test_spec_plan_error_is_32010_with_usable_data(daemon: Daemon, tmp_path: Path) -> None:
    spec = _write(tmp_path, BROKEN_SPEC)
    with daemon.connect() as conn:
        by_path = conn.request("spec.plan", {"spec_path": str(spec)})
        by_text = conn.request("spec.plan", {"spec_text": BROKEN_SPEC})
    for reply in (by_path, by_text):
        assert "result" not in reply, reply
        error = reply["error"]
        assert error["code"] == -32010, error
        assert isinstance(error["message"], str) and error["message"]
        errors = _check_errors(error["data"])
        assert len(errors) >= 2 and all(e["line"] is not None for e in errors)
        assert "Billing" in " ".join(e["message"] for e in errors)


def test_spec_plan_rejects_neither_or_both_sources(daemon: Daemon, tiny_spec: Path) -> None:
    with daemon.connect() as conn:
        neither = conn.request("spec.plan", {})
        both = conn.request("spec.plan", {"spec_path": str(tiny_spec), "spec_text": TINY_SPEC})
    assert neither["error"]["code"] == -32602, neither
    assert both.get("error", {}).get("code") == -32602, both

