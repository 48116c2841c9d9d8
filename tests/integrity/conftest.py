"""Fixtures of the hostile batches: the real git repositories of tests/workspace."""

from __future__ import annotations

from tests.workspace.conftest import repo, wt_root

__all__ = ["repo", "wt_root"]
