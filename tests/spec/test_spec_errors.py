"""Each validation error: line, message naming the problem, a fix hint, all reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildrunnerd import protocol
from buildrunnerd.errors import Problem, SpecError
from buildrunnerd.spec import parse_spec, parse_spec_file


def _problems(text: str | bytes) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, path="spec.md")
    assert info.value.code == protocol.SPEC_INVALID
    assert info.value.data["path"] == "spec.md"
    return info.value.problems


def test_no_features() -> None:
    (problem,) = _problems("# Title\n\nJust some prose and nothing to build.\n")
    assert problem.message.startswith("no features found")
    assert "## Features" in problem.message  # the fix


def test_empty_features_section_names_its_line() -> None:
    (problem,) = _problems("# App\n\n## Features\n\nTBD.\n")
    assert problem.line == 3
    assert "'Features' section holds no feature" in problem.message


def test_binary_bytes() -> None:
    (problem,) = _problems(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert "binary" in problem.message


def test_not_utf8() -> None:
    (problem,) = _problems("## Features\n### Caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in problem.message and "offset 19" in problem.message


def test_unknown_dependency_is_named_with_its_line() -> None:
    text = "## Features\n### Login\n### Profile\nDepends on: Login, Billing\n"
    (problem,) = _problems(text)
    assert problem.line == 4
    assert "'Profile' depends on unknown feature 'Billing'" in problem.message
    assert "login, profile" in problem.message  # what it could have been


def test_cycle_lists_ids_in_order() -> None:
    text = (
        "## Features\n### A\n**Depends on:** C\n### B\n**Depends on:** A\n"
        "### C\n**Depends on:** B\n### D\n**Depends on:** D\n"
    )
    problems = _problems(text)
    messages = [p.message for p in problems]
    assert any("a -> c -> b -> a" in m for m in messages), messages
    assert any("d -> d" in m for m in messages), messages
    assert all("remove one of these dependencies" in m for m in messages)
    assert [p.line for p in problems] == [3, 9]


def test_duplicate_feature_names() -> None:
    (problem,) = _problems("## Features\n### Login\n### Search\n### login\n")
    assert problem.line == 4
    assert "duplicate feature name 'login' (first defined at line 2)" in problem.message


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "## Features\n### Login\nDepends on: Nowhere\n### Login\n"
        "### Cart\nDepends on: Pay\n### Pay\nDepends on: Cart\n"
    )
    problems = _problems(text)
    kinds = sorted(p.message.split(" ")[0] for p in problems)
    assert len(problems) == 3, problems
    assert kinds == ["dependency", "duplicate", "feature"]
    with pytest.raises(SpecError) as info:
        parse_spec(text, path="spec.md")
    # The message shows file:line for each problem, one per line.
    assert str(info.value).splitlines()[0].startswith("spec.md:")
    assert len(str(info.value).splitlines()) == 3


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.md"
    with pytest.raises(SpecError) as info:
        parse_spec_file(missing)
    assert str(missing) in str(info.value)
    assert "cannot read the spec file" in str(info.value)
    with pytest.raises(SpecError) as info:
        parse_spec_file(tmp_path)  # a directory
    assert "cannot read" in str(info.value)


def test_binary_and_non_utf8_files_name_the_file(tmp_path: Path) -> None:
    binary = tmp_path / "image.md"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(SpecError) as info:
        parse_spec_file(binary)
    assert str(binary) in str(info.value) and "binary" in str(info.value)
    latin = tmp_path / "latin.md"
    latin.write_bytes("## Features\n### Caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError) as info:
        parse_spec_file(latin)
    assert f"{latin}: not UTF-8" in str(info.value)


def test_lone_surrogates_in_text() -> None:
    (problem,) = _problems("## Features\n### Bad \ud800 name\n")
    assert "lone surrogate at offset 20" in problem.message


def test_no_features_says_what_the_spec_does_have() -> None:
    (problem,) = _problems("## Overview\nA tool.\n## Risks\nNone.\n")
    assert "only project sections (Overview, Risks)" in problem.message
    (problem,) = _problems("# Tool\n\nA paragraph.\n")
    assert "only the title 'Tool' and prose" in problem.message
