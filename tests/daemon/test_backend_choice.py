"""Which backend the daemon runs with, and why: asked of the real Claude Code CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildrunnerd.agent import ClaudeCliError
from buildrunnerd.agent._claude_cli import find_claude_cli
from buildrunnerd.config import Config
from buildrunnerd.daemon._app import DaemonOptions, choose_backend
from tests.fakeapi import API_KEY, OAUTH_TOKEN

BUNDLED = find_claude_cli({"PATH": ""})
needs_cli = pytest.mark.skipif(BUNDLED is None, reason="the claude-code extra is not installed")


def env_with(**extra: str) -> dict[str, str]:
    base = {"PATH": os.environ.get("PATH", os.defpath)}
    if BUNDLED is not None:
        base["BUILDRUNNER_CLAUDE_CLI"] = str(BUNDLED[0])
    return {**base, **extra}


async def test_auto_prefers_the_api_key(tmp_path: Path) -> None:
    choice = await choose_backend(DaemonOptions(), Config(), env_with(ANTHROPIC_API_KEY=API_KEY),
                                  tmp_path)
    assert (choice.name, choice.reason) == ("anthropic", "auto: ANTHROPIC_API_KEY is set")


@needs_cli
async def test_auto_without_a_key_takes_a_logged_in_claude_code(tmp_path: Path) -> None:
    choice = await choose_backend(DaemonOptions(), Config(),
                                  env_with(CLAUDE_CODE_OAUTH_TOKEN=OAUTH_TOKEN), tmp_path)
    assert choice.name == "claude-code"
    assert "no ANTHROPIC_API_KEY" in choice.reason and "logged in (oauth_token)" in choice.reason
    assert (tmp_path / "claude").is_dir()  # its config dir lives under the state dir


@needs_cli
async def test_auto_with_a_logged_out_cli_is_simulated_and_says_how_to_log_in(
    tmp_path: Path
) -> None:
    choice = await choose_backend(DaemonOptions(), Config(), env_with(), tmp_path)
    assert choice.name == "simulated"
    assert "not logged in" in choice.reason and "docs/claude-code.md" in choice.reason


async def test_auto_without_any_cli_is_simulated(tmp_path: Path) -> None:
    env = env_with(BUILDRUNNER_CLAUDE_CLI=str(tmp_path / "missing"))
    choice = await choose_backend(DaemonOptions(), Config(), env, tmp_path)
    assert choice.name == "simulated"


@needs_cli
async def test_asking_for_claude_code_when_logged_out_is_an_error_with_the_fix(
    tmp_path: Path
) -> None:
    with pytest.raises(ClaudeCliError) as err:
        await choose_backend(DaemonOptions(backend="claude-code"), Config(), env_with(),
                             tmp_path)
    assert "claude auth login" in str(err.value)
    assert f"CLAUDE_CONFIG_DIR={tmp_path / 'claude'}" in str(err.value)
