"""A hostile batch against the reuse put back from the ctime list alone (helper listreuse's
``workspace/_reuse.py``, f1ee5b1..0ea4a8a on its branch): what it trusts (an entry not
listed, in the folder of the clean point's inode, is the one that was there) and where it
gives up for the whole-tree reset (a name that is not UTF-8, a nested repository, a failed
step), which then runs after part of the list was put back.

Each test also runs on main (ac40937), where the reuse is ``clean -ffdx`` + ``diff-files``
+ the restore by ctime. A strict xfail says on which tree the attack works.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildrunnerd.workspace import prepare_run_repo
from tests.integrity.test_hostile_reuse import (
    _assert_checkout_modes,
    _checkout,
    _default_acl,
    _disk,
)
from tests.integrity.test_hostile_shortcuts import _left_then_reused
from tests.workspace._helpers import run_git

pytestmark = pytest.mark.timeout(120)


def _acl_below_and_an_undecodable_name(wt: Path) -> None:
    _default_acl(wt / "lib" / "sub")
    (wt / os.fsdecode(b"junk\xfe")).write_text("x\n")  # any batch can make one


async def test_a_default_acl_below_does_not_reach_the_next_batch_through_the_whole_reset(
        repo: Path, wt_root: Path) -> None:
    (repo / "lib" / "sub").mkdir(parents=True)
    (repo / "lib" / "sub" / "mod.py").write_text("MOD = 1\n")
    run_git(repo, "add", "lib")
    run_git(repo, "commit", "-qm", "lib/sub")
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    other = await run_repo.acquire_worktree(wt_root)
    (other / "lib" / "sub" / "merged.py").write_text("M = 1\n")  # merged meanwhile
    assert (await run_repo.commit_and_merge(other, "other batch")).merged
    await run_repo.release_worktree(other, reuse=False)
    _acl_below_and_an_undecodable_name(victim)
    await run_repo.release_worktree(victim)
    again = await run_repo.acquire_worktree(wt_root)
    try:  # (a new worktree, when the reuse refuses the name, is fine)
        assert "system.posix_acl_default" not in os.listxattr(again / "lib" / "sub")
        _assert_checkout_modes(again, "lib/sub/mod.py", "lib/sub/merged.py")
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


def _recreated_with_its_inode(wt: Path) -> None:
    """The tracked folder pkg deleted and made again with the inode it had (ext4 hands a
    freed inode out again): the list-driven reset takes it for the clean point's folder."""
    ino = (wt / "pkg").lstat().st_ino
    for entry in ("pkg/core.py", "pkg"):
        (wt / entry).unlink() if entry.endswith(".py") else (wt / entry).rmdir()
    made = []
    for n in range(200):
        (wt / f"try{n}").mkdir()
        made.append(wt / f"try{n}")
        if (wt / f"try{n}").lstat().st_ino == ino:
            (wt / f"try{n}").rename(wt / "pkg")
            made.pop()
            break
    else:
        (wt / "pkg").mkdir()
    for folder in made:
        folder.rmdir()
    os.mkfifo(wt / "pkg" / "pipe")
    (wt / "pkg" / "core.py").write_text("CORE = 'planted'\n")
    os.chmod(wt / "pkg" / "core.py", 0o600)
    (wt / "pkg" / "extra.py").write_text("EXTRA = 1\n")


async def test_a_tracked_folder_made_again_with_its_inode_comes_back_as_checked_out(
        repo: Path, wt_root: Path) -> None:
    run_repo, victim, again = await _left_then_reused(repo, wt_root,
                                                      _recreated_with_its_inode)
    try:
        assert _disk(again) == _checkout(again)
        _assert_checkout_modes(again, "pkg/core.py")
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


def _moved_back_with_new_children(wt: Path) -> None:
    """pkg (its own inode) moved away, filled, and moved back: listed, with a FIFO, a new
    module and a renamed original in it."""
    (wt / "pkg").rename(wt / "away")
    (wt / "away" / "core.py").rename(wt / "away" / "core_old.py")
    (wt / "away" / "core.py").write_text("CORE = 'planted'\n")
    os.mkfifo(wt / "away" / "pipe")
    (wt / "away").rename(wt / "pkg")


async def test_a_tracked_folder_moved_away_and_back_comes_back_as_checked_out(
        repo: Path, wt_root: Path) -> None:
    run_repo, victim, again = await _left_then_reused(repo, wt_root,
                                                      _moved_back_with_new_children)
    try:
        assert again == victim
        assert _disk(again) == _checkout(again)
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()
