"""Fixtures: real git repositories in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._helpers import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def wt_root(tmp_path: Path) -> Path:
    return tmp_path / "state" / "worktrees" / "run1"
