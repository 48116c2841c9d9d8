"""Where the Claude Code CLI keeps a session's conversation, and moving it with its batch.

The CLI saves a session's transcript under its config dir, in a folder named for the working
directory it ran in: ``$CLAUDE_CONFIG_DIR/projects/<project key>/<session id>.jsonl``, the
layout the ``claude-agent-sdk`` documents for its session stores, with the key from its public
:func:`claude_agent_sdk.project_key_for_directory`. ``--resume <id>`` looks for it there. After
a daemon crash a batch resumes its session in a new worktree, another path: the conversation
is moved to that worktree's folder first, so the CLI resumes the very same conversation
whatever its version looks for elsewhere.

The config dir is the daemon's (the CLI writes there; the model's tools cannot reach it), but
nothing here trusts its content: the session id must be a UUID (it names a file), no link is
followed, only a regular file (and a session's folder of side transcripts) is moved, and a
conversation already at the destination is never replaced.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

__all__ = ["move_conversation", "transcript_path"]


def _session_name(session_id: str) -> str | None:
    try:
        parsed = uuid.UUID(session_id)
    except ValueError:
        return None
    name = str(parsed)
    return name if name == session_id.lower() else None


def transcript_path(config_dir: Path, worktree: str, session_id: str) -> Path | None:
    """Where the CLI keeps ``session_id``'s conversation when it runs in ``worktree`` (None:
    the id is not a UUID)."""
    from claude_agent_sdk import project_key_for_directory

    name = _session_name(session_id)
    if name is None:
        return None
    return Path(config_dir) / "projects" / project_key_for_directory(worktree) / f"{name}.jsonl"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def move_conversation(config_dir: Path, session_id: str, old_worktree: str,
                      new_worktree: str) -> bool:
    """Move ``session_id``'s conversation from ``old_worktree``'s folder to
    ``new_worktree``'s (blocking). True when the conversation is now there; False when there
    was none to move (not saved before the crash, or not a regular file: a link is left
    alone), and the caller starts a new session if the CLI finds none either."""
    source = transcript_path(config_dir, old_worktree, session_id)
    target = transcript_path(config_dir, new_worktree, session_id)
    if source is None or target is None:
        return False
    if _lstat(target) is not None:
        return True  # already there (the same path, or moved by an earlier try)
    found = _lstat(source)
    if found is None or not stat.S_ISREG(found.st_mode):
        return False
    folder = _lstat(target.parent)
    if folder is None:
        target.parent.mkdir(mode=0o700)  # next to the source's folder, in ``projects``
    elif not stat.S_ISDIR(folder.st_mode):
        return False
    # rename() moves the entry itself, never what a link names. A transcript already at the
    # target was ruled out above, and no CLI of this batch runs while it is moved.
    os.rename(source, target)
    # Side transcripts (subagents) live in a folder named for the session.
    side = source.with_suffix("")
    found_side = _lstat(side)
    if (found_side is not None and stat.S_ISDIR(found_side.st_mode)
            and _lstat(target.with_suffix("")) is None):
        os.rename(side, target.with_suffix(""))
    return True
