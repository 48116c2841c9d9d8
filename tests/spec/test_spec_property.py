"""Property tests: whatever the input, the parser returns a consistent Spec or a SpecError,
never another exception (and never its internal-error safety net)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildrunnerd.errors import SpecError
from buildrunnerd.spec import Spec, parse_spec

FRAGMENTS = [
    "", "#", "# Title", "## Features", "## Core Features", "### Login", "### Search",
    "### 1. Export", "#### Requirements", "#### Acceptance Criteria", "- [ ] it works",
    "- [x] done", "- plain item", "  - nested item", "    - deeper", "1. **Bold name**",
    "2. Second", "**Depends on:** Login", "Dependencies: search, Nowhere", "Depends on: Login",
    "Priority: high", "Domain: backend", "Files: `src/a.py`", "Test command: `pytest -q`",
    "```", "```python", "~~~", "<!--", "-->", "<PRD>", "</PRD>", "<context>", "</context>",
    "<instruction>", "</instruction>", "<dependency-graph>", "</dependency-graph>",
    "- **Login**: Depends on [Search]", "[Placeholder", "text]", "---",
    "### Requirement 1", "**User Story:** As a user, I want x", "1. WHEN a THEN b SHALL c",
    "### User Story 1 - Browse (Priority: P1)", "- **FR-001**: System MUST work",
    "1. **Given** a, **When** b, **Then** c", "## Phase 1: Setup", "## Phase 3: User Story 1",
    "- [ ] T001 [P] [US1] Create src/models/x.py", "- [ ] T002 Do (depends on T001)",
    "- [ ] TXXX Polish", "- [ ] 1. Group", "- [ ] 1.1 Sub task", "- [ ]* 1.2 Optional",
    "  - _Requirements: 1.1, 2.3_", "### Batch A1: Core (3 tasks, 4 hours)",
    "#### Task A.1: Parser (90 min)", "#### A.2: Wire it (2 hours)", "**File:** `core/p.py`",
    "**Files to create:**", "- `core/q.py` (helper)", "- ✅ Task B.1: Done thing (60 min)",
    "## Development Roadmap", "## Logical Dependency Chain", "### Capability: Data",
    "#### Feature: [Name]", "#### Feature: Schema", "## Overview", "**Depends on Tier 1**",
    "#### Tier 1: Core", "#### Tier 2: More", "\t- tabbed", "# C#", "## Title ##",
]


def _check(spec: Spec) -> None:
    ids = [f.id for f in spec.features]
    assert ids and len(set(ids)) == len(ids)
    for feature in spec.features:
        assert feature.line >= 1
        assert all(dep in ids for dep in feature.depends_on)
        assert feature.id not in feature.depends_on
    task_ids = [t.id for t in spec.tasks]
    assert len(set(task_ids)) == len(task_ids)
    for task in spec.tasks:
        assert task.feature in ids
        assert all(dep in task_ids and dep != task.id for dep in task.depends_on)


def _parse(data: str | bytes) -> None:
    try:
        spec = parse_spec(data, path="fuzz.md")
    except SpecError as err:
        assert err.problems
        assert "internal parser error" not in str(err), str(err)
        return
    _check(spec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text(text: str) -> None:
    _parse(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary())
def test_arbitrary_bytes(data: bytes) -> None:
    _parse(data)


markdownish = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=30)), max_size=60
).map("\n".join)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markdownish)
def test_markdownish_text(text: str) -> None:
    _parse(text)
    _parse(text.encode("utf-8"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=40))
def test_feature_lines_point_at_their_headings(fragments: list[str]) -> None:
    text = "## Features\n" + "\n".join(fragments)
    try:
        spec = parse_spec(text)
    except SpecError:
        return
    lines = text.split("\n")
    for feature in spec.features:
        source = lines[feature.line - 1]
        assert feature.name.split()[0].strip("*[]") in source or feature.name in (
            "Tasks", spec.title), (feature, source)
