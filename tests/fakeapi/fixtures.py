"""Pytest fixtures for the fake Messages API. Import them into a test module or conftest:

    from tests.fakeapi.fixtures import fake_api, anthropic_env  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakeapi import API_KEY, FakeAnthropic

__all__ = ["fake_api", "anthropic_env"]


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    """A started fake server with an empty script (set one with ``set_responder``)."""
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def anthropic_env(fake_api: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the SDK (and a daemon started from this test) at the fake server."""
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake_api.base_url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
