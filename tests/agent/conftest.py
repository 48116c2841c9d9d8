"""Fixtures of the agent tests (defined in ``support.py``, with the helpers)."""

from tests.agent.support import executor, fake_api, worktree  # noqa: F401 (fixtures)
