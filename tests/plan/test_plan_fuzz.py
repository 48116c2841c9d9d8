"""Arbitrary text through the whole planning path: a plan or a clean error, never a crash."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from buildrunnerd.errors import SpecError
from buildrunnerd.plan import build_plan
from buildrunnerd.spec import parse_spec

FRAGMENTS = [
    "# Title\n", "## Features\n", "### Login\n", "### Search\n", "### Reports\n",
    "#### Requirements\n", "#### Acceptance Criteria\n", "- [ ] users can log in\n",
    "- store rows in the database\n", "- GET /api/items returns JSON\n", "**Depends on:** Login\n",
    "**Depends on:** Search\n", "Dependencies: reports\n", "Domain: frontend\n",
    "- [ ] T001 Build `src/app.py` (90 min)\n", "- [ ] T002 Test it (depends on T001)\n",
    "- [x] 1.1 Done already\n", "```\n## not a heading\n```\n", "Test command: `pytest`\n",
    "\n", "Some prose about the product.\n", "<PRD>\n", "</PRD>\n", "[Name]\n",
]


def _plan_or_clean_error(text: str | bytes) -> None:
    try:
        spec = parse_spec(text, path="fuzz.md")
        plan = build_plan(spec)
    except SpecError as err:  # PlanError included
        assert err.message and all(p.message for p in err.problems)
        # parse_spec turns its own crashes into a SpecError: that one is a bug, not clean.
        assert "internal parser error" not in str(err), str(err)
        return
    ids = {t.id for t in plan.tasks}
    assert {t for b in plan.batches for t in b.task_ids} == ids
    assert all(set(t.depends_on) <= ids for t in plan.tasks)


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
@settings(max_examples=150, deadline=None)
def test_markdownish_text_plans_or_fails_cleanly(parts: list[str]) -> None:
    _plan_or_clean_error("".join(parts))


@given(st.text(max_size=400))
@settings(max_examples=100, deadline=None)
def test_arbitrary_text_plans_or_fails_cleanly(text: str) -> None:
    _plan_or_clean_error(text)


@given(st.binary(max_size=300))
@settings(max_examples=60, deadline=None)
def test_arbitrary_bytes_plan_or_fail_cleanly(data: bytes) -> None:
    _plan_or_clean_error(data)
