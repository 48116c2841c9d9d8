"""Fixtures of the agent tests (defined in ``support.py``, with the helpers)."""

from tests.agent.support import executor, worktree  # noqa: F401 (fixtures)
from tests.fakeapi.fixtures import fake_api  # noqa: F401 (a fixture)
