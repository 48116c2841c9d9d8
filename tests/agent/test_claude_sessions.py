"""Moving a Claude Code session's conversation to the folder the CLI reads for a batch's new
worktree: what moves, what is never replaced, and what a hostile config dir cannot make it do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

claude_agent_sdk = pytest.importorskip("claude_agent_sdk")

from buildrunnerd.agent._claude_sessions import (  # noqa: E402
    move_conversation,
    transcript_path,
)

SESSION = "0a4d75ca-9618-45a8-8f41-c7f7e7a4e623"


def _saved(config: Path, worktree: Path, text: str = '{"type":"user"}\n') -> Path:
    path = transcript_path(config, str(worktree), SESSION)
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_conversation_and_its_side_transcripts_move_to_the_new_worktrees_folder(
    tmp_path: Path
) -> None:
    config, old, new = tmp_path / "claude", tmp_path / "wt" / "w1-aaaaaa", tmp_path / "wt" / "w1-b"
    source = _saved(config, old, '{"type":"user","n":1}\n')
    (source.with_suffix("") / "subagents").mkdir(parents=True)
    assert move_conversation(config, SESSION, str(old), str(new)) is True
    target = transcript_path(config, str(new), SESSION)
    assert target is not None and target.parent != source.parent
    # The folder's name is the one the SDK (and so the CLI) derives from the directory.
    assert target.parent.name == claude_agent_sdk.project_key_for_directory(str(new))
    assert target.read_text() == '{"type":"user","n":1}\n'
    assert not source.exists() and (target.with_suffix("") / "subagents").is_dir()
    # Moving again (a retried start) finds it in place.
    assert move_conversation(config, SESSION, str(old), str(new)) is True


def test_a_conversation_already_in_the_new_folder_is_never_replaced(tmp_path: Path) -> None:
    config, old, new = tmp_path / "claude", tmp_path / "old", tmp_path / "new"
    source = _saved(config, old, "old\n")
    target = _saved(config, new, "new\n")
    assert move_conversation(config, SESSION, str(old), str(new)) is True
    assert (source.read_text(), target.read_text()) == ("old\n", "new\n")


def test_nothing_saved_is_nothing_to_move(tmp_path: Path) -> None:
    config = tmp_path / "claude"
    assert move_conversation(config, SESSION, str(tmp_path / "a"), str(tmp_path / "b")) is False
    assert not config.exists()


@pytest.mark.parametrize("session_id", ["../../../../etc/passwd", "", f"{SESSION}/../x",
                                        SESSION.replace("-", "")[:-1]])
def test_a_session_id_that_is_not_a_uuid_names_no_file(tmp_path: Path, session_id: str) -> None:
    config = tmp_path / "claude"
    _saved(config, tmp_path / "a")
    assert transcript_path(config, str(tmp_path / "a"), session_id) is None
    assert move_conversation(config, session_id, str(tmp_path / "a"), str(tmp_path / "b")) is False
    assert sorted(p.name for p in (config / "projects").iterdir()) == [
        claude_agent_sdk.project_key_for_directory(str(tmp_path / "a"))]


def test_a_link_in_place_of_the_conversation_is_left_alone(tmp_path: Path) -> None:
    config, old, new = tmp_path / "claude", tmp_path / "old", tmp_path / "new"
    secret = tmp_path / "secret.txt"
    secret.write_text("not a transcript\n")
    source = _saved(config, old)
    source.unlink()
    os.symlink(secret, source)
    assert move_conversation(config, SESSION, str(old), str(new)) is False
    assert source.is_symlink() and secret.read_text() == "not a transcript\n"
    target = transcript_path(config, str(new), SESSION)
    assert target is not None and not target.exists() and not target.is_symlink()
