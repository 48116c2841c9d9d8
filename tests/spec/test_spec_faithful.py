"""Parsing faithfully (issue 11): what the spec says, no more and no less."""

from __future__ import annotations

import pytest

from buildrunnerd.errors import SpecError
from buildrunnerd.spec import parse_spec
from buildrunnerd.spec._text import find_files


def test_a_list_item_wrapped_over_lines_is_one_requirement() -> None:
    spec = parse_spec(
        "# P\n\n## Features\n\n### Storage\n\n#### Requirements\n"
        "- [ ] A `todo_api/models.py` module defines User, TodoList and Todo dataclasses and the\n"
        "  functions that read and write them (create_todo, list_todos).\n"
        "- [ ] Deleting a list deletes its todos.\n"
        "Priority: high\n"
    )
    reqs = [r.text for r in spec.features[0].requirements]
    assert reqs == [
        "A `todo_api/models.py` module defines User, TodoList and Todo dataclasses and the "
        "functions that read and write them (create_todo, list_todos).",
        "Deleting a list deletes its todos.",
    ]
    # A labelled line right after a list is not swallowed by it.
    assert spec.features[0].priority == "high"


@pytest.mark.parametrize(("text", "files"), [
    ("`hashlib.scrypt` and `http.server` and `os.path`", []),
    ("`~/.habits.json`, `/etc/app.conf`, `https://x.test/a.js`, `C:\\x.py`", []),
    ("`Node.js` with `Vue.js`", []),
    ("`todo_api/auth.py`, `README.md`, `config.json`, `./src/a.ts`, `Makefile`",
     ["todo_api/auth.py", "README.md", "config.json", "src/a.ts", "Makefile"]),
    ("`Sources/App/Habit.swift` and `main.rs`", ["Sources/App/Habit.swift", "main.rs"]),
    ("`src/` and `*.py` and `<name>.py` and `user.name`", []),
])
def test_a_backticked_token_is_a_file_only_when_it_looks_like_one(
    text: str, files: list[str]
) -> None:
    assert find_files(text) == files


def test_file_trees_in_fences_are_layout_hints() -> None:
    spec = parse_spec(
        "# Habits\n\n## Project Structure\n\n```\nHabits/\n├── Package.swift\n├── Sources/\n"
        "│   └── Habits/\n│       ├── HabitStore.swift   # persistence\n│       └── Views/\n"
        "│           └── HabitList.swift\n└── Tests/\n    └── HabitsTests/\n"
        "        └── HabitStoreTests.swift\n```\n\n```bash\nswift build\nmkdir -p x/y.py\n```\n\n"
        "## Features\n\n### Habit list\n- Show every habit\n"
    )
    # Files, and the folders the tree shows (ending in "/"); the tree's root is dropped.
    assert [p for p in spec.layout if not p.endswith("/")] == [
        "Package.swift", "Sources/Habits/HabitStore.swift", "Sources/Habits/Views/HabitList.swift",
        "Tests/HabitsTests/HabitStoreTests.swift",
    ]
    assert "Sources/Habits/Views/" in spec.layout and "x/" not in spec.layout
    assert "bash" in spec.code_languages
    assert [f.name for f in spec.features] == ["Habit list"]


def test_done_items_are_skipped_with_a_warning_and_optional_tasks_kept() -> None:
    spec = parse_spec(
        "# Plan\n\n- [x] 1. Set up the project\n- [x] 1.1 Create the package\n"
        "- [ ] 2. Build the store\n- [ ] 2.1 Write the store\n  - _Requirements: 1.1_\n"
        "- [ ]* 2.2 Write property tests for the store\n  - _Requirements: 1.1_\n"
        "- [ ] 2.3 Add the index\n  - _Requirements: 1.2_\n"
    )
    assert [t.id for t in spec.done_tasks] == ["1.1"]
    assert [(t.id, t.optional) for t in spec.tasks] == [
        ("2.1", False), ("2.2", True), ("2.3", False)
    ]
    assert any("1 of 4 tasks are marked done" in w.message for w in spec.warnings)
    # Done work is satisfied: nothing waits for it.
    assert all("1.1" not in t.depends_on for t in spec.tasks)


def test_ticked_requirements_of_a_feature_are_not_planned() -> None:
    spec = parse_spec(
        "# P\n\n## Features\n\n### Search\n\n#### Requirements\n- [x] Index titles\n"
        "- [ ] Rank results\n"
    )
    assert [r.text for r in spec.features[0].requirements] == ["Rank results"]
    assert any("1 requirement or criterion items are ticked done" in w.message
               for w in spec.warnings)


def test_project_sections_are_context_not_features() -> None:
    spec = parse_spec(
        "# Tool\n\n## Project Overview\nA tool.\n\n## Key Technical References\n- RFC 9110\n\n"
        "## Importer\n- Read CSV files\n\n## Exporter\n- Write JSON\n\n## Testing Notes\n"
        "- Use pytest\n\n## Constraints\n- Offline only\n\n## Open Questions\n- Which DB?\n\n"
        "## Appendix\n- Links\n"
    )
    assert [f.name for f in spec.features] == ["Importer", "Exporter"]


def test_a_sub_heading_repeated_under_every_phase_is_structure() -> None:
    spec = parse_spec(
        "# PRD\n\n## Implementation Roadmap\n\n"
        "### Phase 1: Parser\nBuild the parser.\n#### Files to Create\n- `src/parser.ts`\n"
        "#### Verification Checklist\n- [ ] Parses the sample\n\n"
        "### Phase 2: Renderer\nRender the output.\n#### Files to Create\n- `src/render.ts`\n"
        "#### Verification Checklist\n- [ ] Renders the sample\n"
    )
    assert [f.name for f in spec.features] == ["Phase 1: Parser", "Phase 2: Renderer"]
    parser = spec.features[0]
    assert parser.files == ["src/parser.ts"]
    assert [c.text for c in parser.acceptance_criteria] == ["Parses the sample"]


def test_a_design_document_without_features_says_so() -> None:
    with pytest.raises(SpecError, match="no features found"):
        parse_spec("# Design\n\n## Overview\nWhy.\n\n## Architecture\nBoxes.\n\n"
                   "## Open Questions\n- Which queue?\n")


def test_free_text_in_a_dependencies_field_is_a_warning() -> None:
    spec = parse_spec(
        "# Tasks\n\n## Phase 1: Setup\n\n**Dependencies**: Existing infrastructure - no "
        "blocking setup needed\n\n- [ ] T001 Create the project in src/app.ts\n"
        "- [ ] T002 [P] Add lint config in .eslintrc.json\n"
    )
    assert [t.id for t in spec.tasks] == ["T001", "T002"]
    assert any("names no feature" in w.message for w in spec.warnings)


def test_an_unknown_feature_name_is_still_an_error() -> None:
    with pytest.raises(SpecError, match="depends on unknown feature 'Billing'"):
        parse_spec("# P\n\n## Features\n\n### Search\n**Depends on:** Billing\n- Find\n")
