"""The first ten minutes: the README's two commands exist and CI runs the test one; the links
in the user docs lead somewhere."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/quickstart.md", "docs/configuration.md", "docs/operations.md",
        "CHANGELOG.md"]


def test_readme_has_the_run_and_test_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in ("./scripts/demo", "./scripts/test"):
        assert f"\n{command}" in readme, command
        assert os.access(ROOT / command, os.X_OK), f"{command} is not executable"
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_relative_links_resolve() -> None:
    for name in DOCS:
        path = ROOT / name
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # absolute URLs are not checked offline
            assert (path.parent / target).exists(), f"{name}: broken link {target}"


def test_changelog_keeps_a_changelog_form() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert "### Added" in text
