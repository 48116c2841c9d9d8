"""The native PROJECT_SPEC.md format, feature by feature (docs/spec-format.md)."""

from __future__ import annotations

from buildrunnerd.spec import Item, parse_spec, parse_spec_file
from tests.spec._helpers import SPECS


def test_native_sections_with_every_field() -> None:
    spec = parse_spec_file(SPECS / "native_bookshelf.md")
    assert spec.format == "native"
    assert spec.title == "Bookshelf"
    assert spec.test_command == "pytest -q"
    assert spec.overview == (
        "A small web service to keep track of the books a household owns and lends out."
    )
    accounts, catalogue, lending = spec.features
    assert (accounts.id, accounts.name, accounts.line) == ("user-accounts", "User Accounts", 9)
    assert accounts.priority == "high"
    assert accounts.domain == "backend"
    assert accounts.description == "People sign up and log in; every book belongs to an account."
    assert accounts.requirements == [
        Item("Passwords are stored hashed with argon2 in `app/auth.py`", 16),
        Item("Sessions expire after 30 days", 17),
    ]
    assert accounts.acceptance_criteria == [
        Item("A new user can sign up with an email and a password", 20),
        Item("A wrong password is rejected with HTTP 401", 21),
    ]
    assert accounts.files == ["app/auth.py"]
    assert catalogue.depends_on == ["user-accounts"]
    assert catalogue.files == ["app/models/book.py"]
    # Dependencies by id and by name, in the order written.
    assert lending.depends_on == ["book-catalogue", "user-accounts"]
    assert lending.domain == "frontend"
    # "## Features" inside a fenced block under "## Notes" is not a feature section.
    assert len(spec.features) == 3


def test_native_nested_bullets() -> None:
    spec = parse_spec_file(SPECS / "native_nested_bullets.md")
    assert [(f.id, f.line) for f in spec.features] == [
        ("start-timer", 4), ("stop-timer", 7), ("report", 10)
    ]
    start = spec.features[0]
    assert start.acceptance_criteria == [Item("Starting a running timer prints an error", 6)]
    assert spec.features[2].depends_on == ["stop-timer"]


def test_rpg_prd_capabilities_and_dependency_graph() -> None:
    spec = parse_spec_file(SPECS / "rpg_filled_prd.txt")
    assert spec.format == "prd"
    assert [f.name for f in spec.features] == ["Schema Validation", "Business Rules", "CSV Reader"]
    deps = {f.id: f.depends_on for f in spec.features}
    assert deps == {
        "schema-validation": ["csv-reader"],
        "business-rules": ["schema-validation"],
        "csv-reader": [],
    }
    assert spec.features[0].description == "Validate rows against a declared schema"
    # A module of the graph that is not a feature is a warning, not an error.
    assert [w.line for w in spec.warnings] == [43]
    # Nothing from the <instruction> block.
    assert "Not Real" not in str([f.name for f in spec.features])


def test_bytes_with_bom_and_crlf_line_numbers() -> None:
    text = "\ufeff# App\r\n\r\n## Features\r\n\r\n### Login\r\n- [ ] works\r\n"
    spec = parse_spec(text.encode("utf-8"))
    assert spec.title == "App"
    assert spec.features[0].line == 5
    assert spec.features[0].acceptance_criteria == [Item("works", 6)]


def test_feature_ids_are_unique_slugs() -> None:
    spec = parse_spec("## Features\n### C++ Support\n### C Support!\n### Ünïcode naïve\n")
    assert [f.id for f in spec.features] == ["c-support", "c-support-2", "unicode-naive"]


def test_headings_in_tilde_fences_and_html_comments_are_ignored() -> None:
    text = (
        "# App\n## Features\n### Real\n~~~\n### Fake in tilde fence\n~~~\n"
        "<!--\n### Fake in comment\n-->\n````\n```\n### Fake nested fence\n```\n````\n"
    )
    spec = parse_spec(text)
    assert [f.name for f in spec.features] == ["Real"]


def test_dependency_spellings_and_domain_normalisation() -> None:
    text = (
        "# Shop\n## Features\n"
        "### Catalog\nDependencies: None\nDomain: API\n"
        "### Cart\nRequires: catalog\nDomain: UI\n"
        "### Checkout\n#### Dependencies\n- Cart\n- `catalog`\n"
        "### Receipts\n__Depends on__: Checkout & Cart; Catalog\n"
    )
    spec = parse_spec(text)
    deps = {f.id: f.depends_on for f in spec.features}
    assert deps == {
        "catalog": [],
        "cart": ["catalog"],
        "checkout": ["cart", "catalog"],
        "receipts": ["checkout", "cart", "catalog"],
    }
    assert [f.domain for f in spec.features][:2] == ["backend", "frontend"]


def test_plan_task_explicit_dependency_and_group_goals() -> None:
    text = (
        "# Plan\n## Build A: Core\n### Goals\n1. Make the core\n### Tasks\n"
        "#### Task A.1: Model (60 min)\n**File:** `core/model.py`\n"
        "#### Task A.2: Store (2 hours)\n**Depends on:** A.1, B.1\n"
        "## Build B: Api\n#### Task B.1: Routes (1.5h)\n**Files to create:**\n- `api/routes.py`\n"
    )
    spec = parse_spec(text)
    assert spec.format == "plan"
    assert [(f.id, f.line) for f in spec.features] == [("build-a-core", 2), ("build-b-api", 10)]
    assert spec.features[0].requirements[0].text == "Make the core"
    tasks = {t.id: t for t in spec.tasks}
    assert [tasks[i].estimate_minutes for i in ("A.1", "A.2", "B.1")] == [60, 120, 90]
    assert tasks["A.2"].depends_on == ["A.1", "B.1"]
    assert tasks["B.1"].files == ["api/routes.py"]
    assert tasks["B.1"].feature == "build-b-api"


def test_kiro_repeated_checkpoint_groups_are_not_duplicates() -> None:
    text = (
        "# Implementation Plan\n\n"
        "- [ ] 1. Build the model\n  - Write `src/model.ts`\n  - _Requirements: 1.1_\n"
        "- [ ] 2. Checkpoint - Ensure all tests pass\n"
        "- [ ] 3. Build the view\n"
        "- [ ]* 3.1 Write view tests\n"
        "- [ ] 4. Checkpoint - Ensure all tests pass\n"
    )
    spec = parse_spec(text)
    assert spec.format == "kiro"
    assert [f.name for f in spec.features] == [
        "Build the model", "Checkpoint - Ensure all tests pass", "Build the view",
        "Checkpoint - Ensure all tests pass (line 9)",
    ]
    tasks = {t.id: t for t in spec.tasks}
    # "3. Build the view" has only an optional sub-task, so the group line is a task too.
    assert list(tasks) == ["1", "2", "3", "3.1", "4"]
    assert tasks["1"].files == ["src/model.ts"] and tasks["1"].requirements == ["1.1"]
    assert tasks["3.1"].optional and not tasks["3"].optional
    assert tasks["3"].depends_on == ["2"] and tasks["3.1"].depends_on == ["3"]
    # The checkpoint waits for the required work, not for the optional tests.
    assert tasks["4"].depends_on == ["3"]


def test_numbered_features_can_be_named_by_number() -> None:
    text = (
        "## Features\n### Feature 1: User Auth\n### Feature 2: Search\nDepends on: Feature 1\n"
        "### 3. Feature-flags\nDepends on: 2, Feature 1: User Auth\n"
    )
    spec = parse_spec(text)
    assert [f.name for f in spec.features] == ["User Auth", "Search", "Feature-flags"]
    assert [f.depends_on for f in spec.features] == [[], ["user-auth"], ["search", "user-auth"]]


def test_unknown_domain_is_a_warning_not_a_guess() -> None:
    spec = parse_spec("## Features\n### Login\nDomain: Task Processing Engine\n")
    assert spec.features[0].domain is None
    assert [(w.line, w.message.split(";")[0]) for w in spec.warnings] == [
        (2, "unknown domain 'task processing engine' ignored")
    ]


def test_speckit_sections_between_phases_do_not_break_the_order() -> None:
    text = (
        "# Tasks\n## Phase 1: Setup\n**Purpose**: Project skeleton\n- [ ] T001 Init repo\n"
        "## Notes\nSome remarks.\n"
        "## Phase 2: User Story 1 - Browse (Priority: P1) 🎯 MVP\n- [ ] T002 [US1] List items\n"
    )
    spec = parse_spec(text)
    setup, story = spec.features
    assert setup.description == "Project skeleton"
    assert (story.name, story.priority) == ("Phase 2: User Story 1 - Browse MVP", "P1")
    assert story.depends_on == [setup.id]
    assert spec.tasks[1].depends_on == ["T001"]


def test_kiro_group_bullets_describe_the_feature() -> None:
    text = (
        "- [ ] 1. Data layer\n  - Everything that touches storage\n"
        "  - [ ] 1.1 Create tables\n    - `db/schema.sql`\n  - [ ] 1.2 Add indexes\n"
    )
    spec = parse_spec(text)
    (feature,) = spec.features
    assert feature.requirements == [Item("Everything that touches storage", 2)]
    assert [(t.id, t.files) for t in spec.tasks] == [("1.1", ["db/schema.sql"]), ("1.2", [])]
