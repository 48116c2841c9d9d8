"""Dependencies as written (issue 11, part 2)."""

from __future__ import annotations

from buildrunnerd.spec import parse_spec


def _deps(text: str) -> dict[str, list[str]]:
    return {t.id: t.depends_on for t in parse_spec(text).tasks}


def test_task_level_depends_on_replaces_the_listed_order() -> None:
    deps = _deps(
        "# Plan\n\n## Phase 2: API\n\n"
        "### Task 2.1: Models (60 min)\n- Write `src/models.py`\n\n"
        "### Task 2.2: Routes (60 min)\n- Write `src/routes.py`\n\n"
        "### Task 2.3: Wire up (60 min)\n**Depends on:** Task 2.1, Task 2.2\n"
    )
    # 2.2 states nothing, so it waits for nothing: the list order is not a chain.
    assert deps == {"2.1": [], "2.2": [], "2.3": ["2.1", "2.2"]}


def test_plans_without_stated_dependencies_keep_their_order() -> None:
    deps = _deps(
        "# Plan\n\n## Build A\n\n### Task A.1: One (60 min)\n\n### Task A.2: Two (60 min)\n"
    )
    assert deps == {"A.1": [], "A.2": ["A.1"]}


SPECKIT = """# Tasks

## Phase 1: Setup
- [ ] T001 Create the project in src/app.ts

## Phase 2: Foundational
- [ ] T002 Add the store in src/store.ts

## Phase 3: User Story 1 - Browse (Priority: P1)
- [ ] T003 [P] [US1] Model in src/models/item.ts
- [ ] T004 [P] [US1] View in src/views/list.ts

## Phase 4: User Story 2 - Edit (Priority: P2)
- [ ] T005 [US2] Editor in src/views/edit.ts

## Dependencies & Execution Order

- **Setup (Phase 1)**: No dependencies - can start immediately
- **Foundational (Phase 2)**: Depends on Setup completion
- **User Story 1 (P1)**: Can start after Foundational (Phase 2)
- **User Story 2 (P2)**: Depends on User Story 1 - edits what US1 lists
"""


def test_speckit_execution_order_and_parallel_markers() -> None:
    spec = parse_spec(SPECKIT)
    deps = {t.id: t.depends_on for t in spec.tasks}
    assert deps["T002"] == ["T001"]
    # [P] tasks of one story run side by side, both after the foundation.
    assert deps["T003"] == ["T002"] and deps["T004"] == ["T002"]
    # Stated: story 2 waits for story 1 (spec-kit's default would start it after phase 2).
    assert sorted(deps["T005"]) == ["T003", "T004"]
    features = {f.name: f.depends_on for f in spec.features}
    assert features["Phase 4: User Story 2 - Edit"] == ["phase-3-user-story-1-browse"]


def test_kiro_requirement_traces_order_the_work() -> None:
    deps = _deps(
        "# Implementation Plan\n\n- [ ] 1. Store\n- [ ] 1.1 Write the store\n"
        "  - _Requirements: 1.1, 1.2_\n- [ ] 1.2 Write the cache\n  - _Requirements: 2.1_\n"
        "- [ ] 1.3 Use the store in the API\n  - _Requirements: 1.2_\n"
        "- [ ] 2. Checkpoint - Ensure all tests pass\n"
    )
    assert deps["1.1"] == []
    assert deps["1.2"] == ["1.1"], "nothing traced requirement 2 before: the list's order"
    # 1.3 builds on the task that traced requirement 1.2, not on the cache listed between.
    assert deps["1.3"] == ["1.1"]
    assert sorted(deps["2"]) == ["1.2", "1.3"], "a checkpoint waits for all work before it"


def test_sequential_phases_stated_in_prose() -> None:
    spec = parse_spec(
        "# PRD\n\nPhases are sequential: finish one before the next.\n\n## Roadmap\n\n"
        "### Phase 1: Core\n#### Parser\n- Parse\n#### Store\n- Store\n"
        "### Phase 2: Interface\n#### CLI\n- Commands\n"
    )
    deps = {f.name: f.depends_on for f in spec.features}
    assert deps == {"Parser": [], "Store": [], "CLI": ["parser", "store"]}


def test_a_list_in_order_chains_the_features_it_names() -> None:
    spec = parse_spec(
        "# P\n\n## Features\n\n### Accounts\n- Sign up\n\n### Billing\n- Invoices\n\n"
        "### Reports\n- Monthly\n\n## Delivery\n\nBuild them in order:\n\n"
        "1. Accounts first\n2. Then Billing\n3. Reports last\n"
    )
    deps = {f.name: f.depends_on for f in spec.features}
    assert deps == {"Accounts": [], "Billing": ["accounts"], "Reports": ["billing"]}


def test_a_logical_dependency_chain_reads_needs_and_after() -> None:
    spec = parse_spec(
        "# Product Requirements Document\n\n## Core Features\n\n### Task Store\n- Save tasks\n\n"
        "### Claude Client\n- Call the API\n\n### PRD Parser\n- Parse PRDs\n\n"
        "# Logical Dependency Chain\n\n1. **Task Store**\n   - Comes first\n"
        "2. **Claude Client**\n   - Independent, but needs the task store\n"
        "3. **PRD Parser**\n   - Built after the claude client\n"
    )
    deps = {f.name: f.depends_on for f in spec.features}
    assert deps == {"Task Store": [], "Claude Client": ["task-store"],
                    "PRD Parser": ["claude-client"]}


def test_speckit_phase_notes_and_mermaid_graphs_are_stated_order() -> None:
    spec = parse_spec(
        "# Tasks\n\n```mermaid\ngraph TD\n    A[Phase 1: Setup] --> B[Phase 2: Core]\n"
        "    B --> C[Phase 3: US1 - Make]\n    B --> D[Phase 4: US2 - Sell]\n"
        "    C -.-> G[MVP]\n```\n\n"
        "## Phase 1: Setup\n- [ ] T001 Init in src/lib.rs\n\n"
        "## Phase 2: Core\n- [ ] T002 Core in src/core.rs\n\n"
        "## Phase 3: User Story 1 - Make (Priority: P1)\n- [ ] T003 [US1] Make in src/make.rs\n\n"
        "## Phase 4: User Story 2 - Sell (Priority: P2)\n- [ ] T004 [US2] Sell in src/sell.rs\n\n"
        "## Phase 5: User Story 3 - Ship (Priority: P3)\n\n"
        "**Duration**: 2 days | **Dependencies**: Phase 3 + Phase 4 complete\n\n"
        "- [ ] T005 [US3] Ship in src/ship.rs\n"
    )
    deps = {t.id: sorted(t.depends_on) for t in spec.tasks}
    assert deps == {"T001": [], "T002": ["T001"], "T003": ["T002"], "T004": ["T002"],
                    "T005": ["T003", "T004"]}
