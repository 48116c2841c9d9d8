"""Every real-world spec and seed parses into a sensible spec, or a clear SpecError where the
file truly holds no features (two unfilled templates)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildrunnerd.errors import SpecError
from buildrunnerd.spec import Spec, parse_spec_file
from tests.spec._helpers import REALWORLD, SEEDS, corpus_files

# Templates whose feature slots are still placeholders: nothing to build, so an error is right.
NO_FEATURES = {
    # "# Core Features" holds only a bracketed "[List and describe the main features...]".
    "taskmaster-example_prd.txt": "no features found: the 'Core Features' section",
    # Capability tree with "#### Feature: [Name]" slots.
    "taskmaster-example_prd_rpg.txt": "feature name '[Name]' is an unfilled template placeholder",
}

EXPECTED_FORMAT = {
    "commit-analyzer-PROJECT_SPEC.md": "native",
    "kiro-warband-requirements.md": "kiro",
    "kiro-warband-tasks.md": "kiro",
    "kiro-weirdo-editor-requirements.md": "kiro",
    "speckit-spec-template.md": "speckit",
    "speckit-tasks-template.md": "speckit",
    "taskmaster-loop-prd.md": "prd",
    "taskmaster-prd.txt": "prd",
    "taskmaster-test-prd.txt": "prd",
    "000_45acf5c55f1d9c94.txt": "plan",
    "001_f9a81c8227f50e3d.txt": "tasklist",
    "002_c21f49861dd84c61.txt": "native",
    "003_7182e9b5e13bd452.txt": "markdown",
    "004_89650acb0560051a.txt": "plan",
}


def _names(spec: Spec) -> list[str]:
    return [f.name for f in spec.features]


def _deps(spec: Spec) -> dict[str, list[str]]:
    return {f.id: f.depends_on for f in spec.features}


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_every_corpus_file_parses_or_says_why_not(path: Path) -> None:
    if path.name in NO_FEATURES:
        with pytest.raises(SpecError) as info:
            parse_spec_file(path)
        assert NO_FEATURES[path.name] in str(info.value)
        assert str(path) in str(info.value)
        assert all(p.line is not None for p in info.value.problems)
        return
    spec = parse_spec_file(path)
    assert spec.format == EXPECTED_FORMAT[path.name]
    assert spec.features, path.name
    ids = [f.id for f in spec.features]
    assert len(set(ids)) == len(ids)
    text_lines = path.read_text(encoding="utf-8").splitlines()
    for feature in spec.features:
        # Every feature points at a real line that mentions its name (or its list item).
        assert 1 <= feature.line <= len(text_lines)
        words = feature.name.split()[:2]
        assert any(w.strip("[]()") in text_lines[feature.line - 1] for w in words), (
            feature.name, text_lines[feature.line - 1])
        for dep in feature.depends_on:
            assert dep in ids
        for item in feature.requirements + feature.acceptance_criteria:
            assert 1 <= item.line <= len(text_lines)
    task_ids = {t.id for t in spec.tasks}
    assert len(task_ids) == len(spec.tasks)
    for task in spec.tasks:
        assert task.feature in ids
        assert all(dep in task_ids for dep in task.depends_on)
        assert task.id in text_lines[task.line - 1] or task.id.startswith("TXXX")


def test_commit_analyzer_core_features() -> None:
    spec = parse_spec_file(REALWORLD / "commit-analyzer-PROJECT_SPEC.md")
    assert spec.title == "GitHub Commit Analyzer - Project Specification"
    assert _names(spec) == ["Commit Analysis", "Fork Comparison", "Repository Validation"]
    assert [f.line for f in spec.features] == [99, 109, 118]
    analysis = spec.features[0]
    assert analysis.id == "commit-analysis"
    assert analysis.requirements[0].text == "Endpoint: `POST /api/commits/analyze`"
    assert analysis.requirements[0].line == 100
    # The "### ✅ Vercel-Ready Features" and headings inside ``` blocks are not features.
    assert spec.tasks == []
    assert spec.overview.startswith("A Next.js application")


def test_kiro_requirements_keep_ears_criteria_with_lines() -> None:
    spec = parse_spec_file(REALWORLD / "kiro-warband-requirements.md")
    assert [f.id for f in spec.features] == [f"requirement-{n}" for n in range(1, 8)]
    first = spec.features[0]
    assert first.line == 22
    assert first.description.startswith("**User Story:**") is False
    assert first.description.startswith("As a player, I want to view a list")
    assert len(first.acceptance_criteria) == 9
    assert first.acceptance_criteria[0].line == 28
    assert first.acceptance_criteria[0].text.startswith("WHEN a user navigates")
    assert "SHALL" in first.acceptance_criteria[0].text


def test_kiro_task_list_is_kept_as_written_and_done_tasks_are_not_planned() -> None:
    spec = parse_spec_file(REALWORLD / "kiro-warband-tasks.md")
    # Every task of this list is ticked done: nothing is left to plan, and the parser says so.
    assert spec.tasks == []
    assert [t.id for t in spec.done_tasks][:4] == ["1.1", "1.2", "2.1", "3.1"]
    assert any("14 of 14 tasks are marked done" in w.message for w in spec.warnings)
    first, second = spec.done_tasks[0], spec.done_tasks[1]
    assert first.title == "Create apiClient service"
    assert first.line == 6
    assert first.done is True
    assert first.requirements == ["7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "7.7"]
    assert [d.text for d in first.details][:1] == ["Implement HTTP client wrapper (axios or fetch)"]
    assert first.feature == "set-up-api-client-for-backend-communication"
    # 1.2 traces requirements 7.5 and 7.7, which 1.1 also covers: it builds on 1.1.
    assert second.depends_on == ["1.1"]
    assert len(spec.features) == 11


def test_speckit_user_stories_and_functional_requirements() -> None:
    spec = parse_spec_file(REALWORLD / "speckit-spec-template.md")
    assert [f.priority for f in spec.features] == ["P1", "P2", "P3"]
    assert spec.features[0].name == "User Story 1 - [Brief Title]"
    assert spec.features[0].line == 26
    scenarios = spec.features[0].acceptance_criteria
    assert [c.line for c in scenarios] == [36, 37]
    assert scenarios[0].text.startswith("Given [initial state], When [action], Then")
    assert [r.text.split(":")[0] for r in spec.requirements] == [
        f"FR-00{n}" for n in range(1, 8)
    ]


def test_speckit_task_list_phases_and_parallel_markers() -> None:
    spec = parse_spec_file(REALWORLD / "speckit-tasks-template.md")
    by_id = {t.id: t for t in spec.tasks}
    assert list(by_id)[:3] == ["T001", "T002", "T003"]
    assert by_id["T003"].parallel is True and by_id["T002"].parallel is False
    assert by_id["T002"].depends_on == ["T001"]
    assert by_id["T003"].depends_on == []
    # Phase 2 waits for the end of phase 1 (its sinks: T002 and T003).
    assert by_id["T004"].depends_on == ["T002", "T003"]
    # The explicit "(depends on T012, T013)" is kept, and the note removed from the title.
    assert by_id["T014"].depends_on == ["T012", "T013"]
    assert by_id["T014"].title == "Implement [Service] in src/services/[service].py"
    assert by_id["T012"].files == ["src/models/[entity1].py"]
    assert by_id["T012"].requirements == ["US1"]
    # User-story phases all wait for the foundational phase, not for each other.
    phases = {f.name.split(":")[0]: f for f in spec.features}
    foundational = phases["Phase 2"].id
    assert phases["Phase 3"].depends_on == [foundational]
    assert phases["Phase 4"].depends_on == [foundational]
    assert set(phases["Phase N"].depends_on) >= {phases["Phase 3"].id, phases["Phase 5"].id}
    # The repeated TXXX ids of the template are made unique, with a warning each.
    assert "TXXX-2" in by_id
    assert any("TXXX" in w.message for w in spec.warnings)


def test_taskmaster_prd_roadmap_and_dependency_chain() -> None:
    spec = parse_spec_file(REALWORLD / "taskmaster-prd.txt")
    assert len(spec.features) == 16
    assert spec.features[0].name == "Task Data Structure"
    assert spec.features[0].line == 132
    deps = _deps(spec)
    assert deps["prd-parsing-system"] == ["claude-api-integration", "task-data-structure"]
    assert deps["agent-command-integration"] == ["agent-workflow-guidelines"]
    assert deps["task-data-structure"] == []
    assert spec.features[0].requirements[0].text == "Design and implement the tasks.json structure"


def test_taskmaster_test_prd_numbered_list() -> None:
    spec = parse_spec_file(REALWORLD / "taskmaster-test-prd.txt")
    assert _names(spec) == ["Add new todos", "Mark todos as complete", "Delete todos"]
    assert [f.line for f in spec.features] == [4, 5, 6]


def test_loop_prd_user_stories_ignore_headings_in_code_blocks() -> None:
    spec = parse_spec_file(REALWORLD / "taskmaster-loop-prd.md")
    assert _names(spec) == [
        "US-1: Basic Loop", "US-2: Preset Workflows", "US-3: Custom Prompts",
        "US-4: Progress Persistence", "US-5: Completion Notification",
    ]
    assert not any("Task Master Loop" in n for n in _names(spec))


def test_seed_plan_tasks_with_ids_durations_and_files() -> None:
    spec = parse_spec_file(SEEDS / "000_45acf5c55f1d9c94.txt")
    assert _names(spec) == ["Batch A1: Core Parser", "Batch B1: Core Runtime"]
    got = [(t.id, t.title, t.estimate_minutes, t.line) for t in spec.tasks]
    assert got == [
        ("A.1", "Spec Parser", 90, 67),
        ("A.2", "Task Decomposer", 90, 120),
        ("A.3", "Dependency Graph Builder", 60, 164),
        ("B.1", "Batch Optimizer", 90, 241),
        ("B.2", "Prompt Builder", 90, 291),
        ("B.3", "Context Manager", 60, 339),
    ]
    a1 = spec.tasks[0]
    assert a1.files == ["core/spec_parser.py", "tests/test_spec_parser.py"]
    assert [c.text for c in a1.acceptance_criteria][0] == "Parses markdown PROJECT_SPEC.md"
    assert a1.feature == "batch-a1-core-parser"
    assert spec.tasks[1].depends_on == ["A.1"]
    assert spec.tasks[3].depends_on == []


def test_seed_build_plan_groups_tasks_under_builds() -> None:
    spec = parse_spec_file(SEEDS / "004_89650acb0560051a.txt")
    assert [f.id for f in spec.features] == [
        "build-a-integration-layer", "build-b-persistence-layer",
        "build-c-ai-integration-layer", "build-d-documentation-e2e-tests",
    ]
    by_id = {t.id: t for t in spec.tasks}
    assert len(by_id) == 16
    assert by_id["A.4"].estimate_minutes == 30
    assert by_id["C.1"].files[:2] == ["core/ai/__init__.py", "core/ai/claude_client.py"]
    assert by_id["A.1"].files[0] == "core/orchestrator.py"
    # The group's own success criteria are kept on the feature.
    assert spec.features[0].acceptance_criteria[0].text.startswith("Orchestrator emits telemetry")


def test_seed_tier_groups_give_feature_dependencies() -> None:
    spec = parse_spec_file(SEEDS / "002_c21f49861dd84c61.txt")
    deps = _deps(spec)
    tier1 = ["ai-code-review-system", "refactoring-engine", "environment-intelligence",
             "predictive-intelligence"]
    assert deps["web-ui-dashboard"] == tier1
    assert deps["learning-system"] == ["natural-language-interface", "reporting-suite"]
    assert deps["ai-code-review-system"] == []


def test_seed_completion_report_list_tasks() -> None:
    spec = parse_spec_file(SEEDS / "001_f9a81c8227f50e3d.txt")
    assert _names(spec)[:2] == ["Batch A1: Core Parser", "Batch A2: Task Queue System"]
    # A completion report: every task is ticked off, so none is left to plan.
    assert spec.tasks == []
    first = spec.done_tasks[0]
    assert (first.id, first.estimate_minutes, first.done, first.line) == ("A.1", 90, True, 24)


def test_seed_generic_markdown_numbered_components() -> None:
    spec = parse_spec_file(SEEDS / "003_7182e9b5e13bd452.txt")
    assert _names(spec) == [
        "Task Generation System", "Batch Optimizer", "Prompt Builder", "Execution Engine",
        "Verification System",
    ]
    # The "## Features" inside the ```markdown example is not a features section.
    assert spec.format == "markdown"
