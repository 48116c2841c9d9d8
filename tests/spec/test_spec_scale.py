"""Large and hostile inputs: a generated 1 MB spec parses completely, and inputs built to
trigger regex backtracking or deep recursion come back as a Spec or a SpecError. The suite's
per-test timeout is the only clock here; docs/spec-format.md records measured figures."""

from __future__ import annotations

import msgspec
import pytest

from buildrunnerd.errors import SpecError
from buildrunnerd.spec import parse_spec


def generate_spec(target_bytes: int) -> tuple[str, int]:
    """A native spec of at least ``target_bytes``: features with dependencies, requirements,
    criteria and files."""
    parts = ["# Big\n\nTest command: `pytest -q`\n\n## Features\n"]
    size = n = 0
    while size < target_bytes:
        dep = f"**Depends on:** Feature {n - 1}, feature-{n // 2}\n" if n else ""
        block = (
            f"\n### Feature {n}\nPriority: high\nDomain: backend\n{dep}\n"
            f"What feature {n} does, in a sentence or two of prose.\n"
            f"#### Requirements\n- Store it in `src/mod{n}.py`\n- Keep it fast\n"
            f"#### Acceptance Criteria\n- [ ] It works\n- [ ] It fails cleanly\n"
        )
        parts.append(block)
        size += len(block)
        n += 1
    return "".join(parts), n


def test_one_megabyte_spec_parses_completely() -> None:
    text, count = generate_spec(1_000_000)
    assert len(text) >= 1_000_000
    spec = parse_spec(text)
    assert len(spec.features) == count
    last = spec.features[-1]
    assert last.depends_on == [f"feature-{count - 2}", f"feature-{(count - 1) // 2}"]
    assert last.files == [f"src/mod{count - 1}.py"]
    assert spec.test_command == "pytest -q"
    # The result crosses the wire as JSON (plan --json, RPC).
    decoded = msgspec.json.decode(msgspec.json.encode(spec))
    assert decoded["features"][0]["id"] == "feature-0"


HOSTILE = [
    "(" + " " * 200_000 + "x",
    "[" * 300_000,
    "`" * 300_000,
    "#" * 300_000,
    "<" + "a" * 300_000 + ">",
    "a/" * 150_000 + ".py",
    "`" + "a/" * 150_000 + "`",
    "## Features\n### A\nDepends on: " + ", ".join(["A"] * 50_000),
    "## Features\n#### Task A.1: " + "(9 min " * 50_000,
    "\n".join("  " * i + "- x" for i in range(2_000)),
    "## Features\n" + "".join(f"### F{i}\nDepends on: F{i + 1}\n" for i in range(10_000))
    + "### F10000\nDepends on: F0\n",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_is_handled(text: str) -> None:
    try:
        parse_spec(text)
    except SpecError as err:
        assert "internal parser error" not in str(err)


def test_long_dependency_cycle_is_reported_in_full() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(HOSTILE[-1])
    (problem,) = info.value.problems
    assert problem.message.startswith("dependency cycle between features: f0 -> f1 -> f2")
    assert "f10000 -> f0;" in problem.message
