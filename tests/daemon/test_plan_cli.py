"""``buildrunnerd plan`` end to end: a real subprocess on real specs from the wild."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from buildrunnerd.daemon._plan_cli import plan_command
from tests.spec.test_spec_corpus import NO_FEATURES

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "buildrunnerd"
# Copies of ../shared/specs/realworld and ../shared/seeds (attribution in tests/data/README.md),
# so the suite runs from any clone, wherever shared/ is.
DATA = ROOT / "tests" / "data"
REALWORLD = DATA / "realworld"
SEEDS = DATA / "seeds"


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN), "plan", *map(str, args)], capture_output=True, text=True, timeout=60,
        cwd=cwd, check=False,
    )
    assert "Traceback" not in result.stderr + result.stdout
    return result


def _plan(path: Path) -> dict[str, Any]:
    result = _run("--json", path)
    assert result.returncode == 0, result.stdout + result.stderr
    plan: dict[str, Any] = json.loads(result.stdout)
    _check_shape(plan)
    return plan


def _check_shape(plan: dict[str, Any]) -> None:
    """The contract's ``plan --json`` shape, and a plan that hangs together."""
    assert set(plan) >= {"spec", "features", "tasks", "batches", "levels", "critical_path",
                         "warnings"}
    feature_ids = {f["id"] for f in plan["features"]}
    task_ids = [t["id"] for t in plan["tasks"]]
    # A task list whose every task is ticked done has nothing left to plan, and says so.
    all_done = any("tasks are marked done" in w["message"] and "are not planned" in w["message"]
                   for w in plan["warnings"])
    assert (plan["tasks"] or all_done) and len(set(task_ids)) == len(task_ids)
    for task in plan["tasks"]:
        assert task["domain"] in {"database", "backend", "frontend", "tests", "docs", "infra"}
        assert task["complexity"] in {"simple", "medium", "complex", "critical"}
        assert task["estimate_minutes"] > 0 and task["acceptance_criteria"]
        assert set(task["depends_on"]) <= set(task_ids)
        assert task["feature"] in feature_ids or task["feature"] == ""
    assert sorted(t for b in plan["batches"] for t in b["task_ids"]) == sorted(task_ids)
    assert all(b["prompt_tokens"] > 0 for b in plan["batches"])
    assert sorted(t for level in plan["levels"] for t in level) == sorted(task_ids)
    assert plan["critical_path"]["minutes"] > 0 or not plan["tasks"]


def test_commit_analyzer_spec() -> None:
    plan = _plan(REALWORLD / "commit-analyzer-PROJECT_SPEC.md")
    assert plan["spec"]["title"].startswith("GitHub Commit Analyzer")
    assert [f["name"] for f in plan["features"]] == [
        "Commit Analysis", "Fork Comparison", "Repository Validation"
    ]
    # A Next.js project: the guessed paths are TypeScript (and only suggested: the spec names
    # no file), the API work is backend work.
    tasks = plan["tasks"]
    assert plan["spec"]["language"] == "typescript"
    assert all(t["files"] == [] for t in tasks)
    assert all(f.endswith((".ts", ".tsx", ".md")) for t in tasks for f in t["suggested_files"])
    title = "Commit Analysis: endpoint `POST /api/commits/analyze`"
    api = [t for t in tasks if t["title"] == title]
    assert api and api[0]["domain"] == "backend"
    assert "Endpoint: `POST /api/commits/analyze`" in api[0]["acceptance_criteria"]


def test_feature_dependencies_become_task_edges() -> None:
    plan = _plan(REALWORLD / "taskmaster-prd.txt")
    features = {f["id"]: f for f in plan["features"]}
    assert features["prd-parsing-system"]["depends_on"] == [
        "claude-api-integration", "task-data-structure"
    ]
    tasks = {t["id"]: t for t in plan["tasks"]}
    first = next(t for t in plan["tasks"] if t["feature"] == "prd-parsing-system")
    upstream = {tasks[d]["feature"] for d in first["depends_on"]}
    assert upstream == {"claude-api-integration", "task-data-structure"}
    # Batches never run before what they wait for.
    position = {b["id"]: n for n, b in enumerate(plan["batches"])}
    for batch in plan["batches"]:
        assert all(position[d] < position[batch["id"]] for d in batch["depends_on"])


def test_explicit_task_lists_are_kept_as_written() -> None:
    plan = _plan(SEEDS / "000_45acf5c55f1d9c94.txt")
    tasks = {t["id"]: t for t in plan["tasks"]}
    assert {"A.1", "A.2", "A.3", "B.1", "B.2", "B.3"} <= set(tasks)
    assert [tasks[i]["estimate_minutes"] for i in ("A.1", "A.2", "A.3")] == [90, 90, 60]
    assert tasks["A.2"]["depends_on"] == ["A.1"]
    # A completion report: every task is ticked off, none is planned again.
    report = _plan(SEEDS / "001_f9a81c8227f50e3d.txt")
    assert report["tasks"] == []
    assert any("12 of 12 tasks are marked done" in w["message"] for w in report["warnings"])

    speckit = _plan(REALWORLD / "speckit-tasks-template.md")
    by_id = {t["id"]: t for t in speckit["tasks"]}
    assert [f"T{n:03d}" for n in range(1, 11)] == [t["id"] for t in speckit["tasks"]][:10]
    assert by_id["T010"]["files"] == ["tests/contract/test_[name].py"]

    kiro = _plan(REALWORLD / "kiro-warband-tasks.md")
    assert kiro["tasks"] == [], "every task of this Kiro list is done"


@pytest.mark.parametrize("path", sorted(p for d in (REALWORLD, SEEDS) for p in d.iterdir()
                                         if p.name != "README.md"),
                         ids=lambda p: p.name)
def test_every_shared_spec_plans_or_fails_cleanly(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (the same function the command runs): 16 interpreters would cost ~15 s.
    code = plan_command(path, as_json=True, config_file=None)
    out = json.loads(capsys.readouterr().out)
    if path.name not in NO_FEATURES:
        # Every file that holds features must plan; a refusal here is a regression.
        assert code == 0, out.get("errors")
        _check_shape(out)
        return
    # The unfilled templates (the same list the spec corpus test uses): refused cleanly, with
    # the parser's reason and the line of each problem.
    assert code == 1
    assert out["errors"] and all(e["message"] and e["line"] for e in out["errors"])
    assert any(NO_FEATURES[path.name] in e["message"] for e in out["errors"])


def test_text_output_shows_every_section() -> None:
    result = _run(REALWORLD / "taskmaster-loop-prd.md")
    assert result.returncode == 0, result.stderr
    for heading in ("Features", "Tasks", "Levels", "Critical path", "Batches", "prompt tokens"):
        assert heading in result.stdout
    # Spec text is printed as written, never read as rich markup.
    template = _run(REALWORLD / "speckit-tasks-template.md")
    assert template.returncode == 0, template.stderr
    assert "Tasks: [FEATURE NAME]" in template.stdout and "[language]" in template.stdout


def test_a_feature_cycle_and_an_unknown_feature_are_reported_with_lines(tmp_path: Path) -> None:
    spec = tmp_path / "cycle.md"
    spec.write_text(
        "# Cyclic\n\n## Features\n\n### Alpha\nDoes alpha.\n**Depends on:** Gamma\n\n"
        "### Beta\n**Depends on:** Alpha\n\n### Gamma\n**Depends on:** Beta, Nowhere\n"
    )
    text = _run(spec)
    assert text.returncode == 1 and text.stdout == ""
    lines = text.stderr.splitlines()
    assert any(line.startswith(f"{spec}:13:") and "'Nowhere'" in line for line in lines)
    assert any("alpha -> gamma -> beta -> alpha" in line for line in lines)
    as_json = _run("--json", spec)
    assert as_json.returncode == 1
    errors = json.loads(as_json.stdout)["errors"]
    assert {e["line"] for e in errors} >= {13}


def test_a_task_cycle_names_the_tasks_in_order(tmp_path: Path) -> None:
    spec = tmp_path / "tasks.md"
    spec.write_text(
        "# T\n\n## Tasks\n\n- [ ] T001 Make the parser (60 min)\n"
        "- [ ] T002 Build the CLI (depends on T003)\n- [ ] T003 Wire it (depends on T002)\n"
    )
    result = _run("--json", spec)
    assert result.returncode == 1
    out = json.loads(result.stdout)
    assert out["cycle"] == ["T002", "T003"]
    assert out["errors"][0]["line"] == 6 and "T002 -> T003 -> T002" in out["errors"][0]["message"]
    assert f"{spec}:6: task dependency cycle: T002 -> T003 -> T002" in result.stderr


def test_unreadable_and_binary_input_fail_without_a_traceback(tmp_path: Path) -> None:
    missing = _run(tmp_path / "nope.md")
    assert missing.returncode == 1 and "cannot read the spec" in missing.stderr
    binary = tmp_path / "blob.md"
    binary.write_bytes(bytes(range(256)) * 8)
    result = _run("--json", binary)
    assert result.returncode == 1 and json.loads(result.stdout)["errors"]


def test_the_config_budget_applies(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[planner]\ncontext_budget_tokens = 30\n")
    result = subprocess.run(
        [str(BIN), "--config", str(config), "plan", str(REALWORLD / "taskmaster-test-prd.txt")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "over the context budget of 30" in result.stderr and "Traceback" not in result.stderr
