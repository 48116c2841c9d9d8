"""A reused worktree put back from the list of what changed since its clean point alone
(``workspace/_reuse.py``): the risks of that list's own. Each state is one a hostile batch
can leave with plain file calls (renames, links, removals, ``utime``), and for each the reuse
must take the list's path (no whole-tree reset, no ``clean``, no ``diff-files``) and still
hand out exactly the head's tree, the disk itself the oracle."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from buildrunnerd.workspace import RunRepo, prepare_run_repo
from buildrunnerd.workspace._git import record_git_calls
from buildrunnerd.workspace._reuse import rename_moves_ctime

from ._helpers import run_git
from .test_worktree_reset import _assert_exactly_head, _setup

pytestmark = pytest.mark.timeout(60)


def _rename_tracked_file(path: Path, _repo: Path) -> None:
    (path / "pkg" / "core.py").rename(path / "pkg" / "renamed.py")


def _rename_tracked_folder(path: Path, _repo: Path) -> None:
    (path / "lib" / "a").rename(path / "lib" / "moved")


def _tracked_folder_deleted(path: Path, _repo: Path) -> None:
    shutil.rmtree(path / "lib" / "a")


def _deep_new_folder(path: Path, _repo: Path) -> None:
    deep = path / "lib" / "a" / "b" / "c" / "x" / "y" / "z"
    deep.mkdir(parents=True)
    (deep / "planted.py").write_text("PLANTED = 1\n")


def _hard_link_of_a_tracked_file(path: Path, _repo: Path) -> None:
    os.link(path / "pkg" / "core.py", path / "docs" / "core_copy.py")


def _outside(path: Path) -> Path:
    """Beside the worktrees, made before the worktree's clean point (see _reacquired)."""
    return path.parent.parent


def _hard_link_from_outside(path: Path, _repo: Path) -> None:
    # An old file outside the worktree (its ctime before the clean point) linked in as a
    # tracked file's name: the link moves its ctime.
    (path / "pkg" / "core.py").unlink()
    os.link(_outside(path) / "old.py", path / "pkg" / "core.py")


def _renamed_in_from_outside(path: Path, _repo: Path) -> None:
    # An old folder from outside renamed in as a tracked folder: its file keeps its ctime.
    shutil.rmtree(path / "pkg")
    (_outside(path) / "old-folder").rename(path / "pkg")


def _dotgit_file_below(path: Path, repo: Path) -> None:
    (path / "lib" / "a" / "b" / ".git").write_text(f"gitdir: {repo / '.git'}\n")


def _dotgit_folder_below(path: Path, _repo: Path) -> None:
    run_git(path / "docs", "init", "-q")


def _untracked_dated_in_the_past(path: Path, _repo: Path) -> None:
    for target in (path / "pkg" / "late.py", path / "early.txt"):
        target.write_text("old\n")
        os.utime(target, (1, 1))  # mtime and atime: only the ctime is left to tell
    os.utime(path / "pkg", (1, 1))
    os.utime(path, (1, 1))


def _same_size_mtime_back(path: Path, _repo: Path) -> None:
    target = path / "pkg" / "core.py"
    before = target.stat()
    target.write_text("EVIL = 1\n"[:before.st_size].ljust(before.st_size, "#"))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))


def _folders_swapped(path: Path, _repo: Path) -> None:
    # Two tracked folders holding the same names swap places: the files in them keep their
    # ctimes (only the folders were renamed), each at the other's path.
    (path / "docs" / "core.py").write_text("CORE = 'docs'\n")
    run_git(path, "add", "docs/core.py")  # staged, as a failed batch's verification leaves it
    (path / "pkg").rename(path / "tmp")
    (path / "docs").rename(path / "pkg")
    (path / "tmp").rename(path / "docs")


def _folder_replaced_by_a_sibling(path: Path, _repo: Path) -> None:
    # lib/a/b/c removed, pkg renamed in its place: a folder whose entries the list does not
    # show (core.py, tool.sh keep their ctimes), at a tracked folder's name.
    (path / "lib" / "a" / "b" / "c").rename(path / "lib" / "other")
    shutil.rmtree(path / "lib" / "other")
    (path / "pkg").rename(path / "lib" / "a" / "b" / "c")


def _files_swapped(path: Path, _repo: Path) -> None:
    (path / "pkg" / "core.py").rename(path / "pkg" / "tmp")
    (path / "docs" / "guide.md").rename(path / "pkg" / "core.py")
    (path / "pkg" / "tmp").rename(path / "docs" / "guide.md")


def _file_made_a_folder_deep(path: Path, _repo: Path) -> None:
    leaf = path / "lib" / "a" / "b" / "c" / "leaf.py"
    leaf.unlink()
    leaf.mkdir()
    (leaf / ".git").mkdir()
    (leaf / "inner.py").write_text("I = 1\n")


def _link_for_a_folder(path: Path, _repo: Path) -> None:
    shutil.rmtree(path / "lib" / "a" / "b")
    (path / "lib" / "a" / "b").symlink_to(path / "pkg")


def _fifo_for_a_file(path: Path, _repo: Path) -> None:
    (path / "docs" / "guide.md").unlink()
    os.mkfifo(path / "docs" / "guide.md")


ATTACKS: list[Callable[[Path, Path], None]] = [
    _rename_tracked_file, _rename_tracked_folder, _tracked_folder_deleted, _deep_new_folder,
    _hard_link_of_a_tracked_file, _hard_link_from_outside, _renamed_in_from_outside,
    _dotgit_file_below, _dotgit_folder_below, _untracked_dated_in_the_past,
    _same_size_mtime_back, _folders_swapped, _folder_replaced_by_a_sibling, _files_swapped,
    _file_made_a_folder_deep, _link_for_a_folder, _fifo_for_a_file,
]


async def _reacquired(repo: Path, wt_root: Path, dirty: Callable[[Path, Path], None], *,
                      moved: bool) -> tuple[RunRepo, Path, list[str]]:
    _setup(repo)
    outside = wt_root.parent
    (outside / "old-folder").mkdir(parents=True)
    for old in (outside / "old.py", outside / "old-folder" / "core.py"):
        old.write_text("EVIL = 1\n")
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    if moved:  # another batch moves the branch: the reuse runs read-tree too
        other = await run_repo.acquire_worktree(wt_root)
        (other / "pkg" / "merged.py").write_text("M = 1\n")
        (other / "docs" / "guide.md").write_text("# guide, merged\n")
        assert (await run_repo.commit_and_merge(other, "other batch")).merged
        await run_repo.release_worktree(other, reuse=False)
    dirty(victim, repo)
    await run_repo.release_worktree(victim)
    with record_git_calls() as calls:
        again = await run_repo.acquire_worktree(wt_root)
    assert again == victim
    return run_repo, again, calls.subcommands()


async def test_this_file_system_moves_a_ctime_on_rename(tmp_path: Path) -> None:
    # Where it would not, every reuse takes the whole-tree reset: the tests below would then
    # not test the list's path at all.
    assert await rename_moves_ctime(tmp_path)


@pytest.mark.parametrize("moved", [False, True], ids=["same_head", "head_moved"])
@pytest.mark.parametrize("dirty", ATTACKS, ids=lambda f: f.__name__.strip("_"))
async def test_the_list_alone_puts_the_worktree_back(
        repo: Path, wt_root: Path, dirty: Callable[[Path, Path], None], moved: bool) -> None:
    run_repo, path, names = await _reacquired(repo, wt_root, dirty, moved=moved)
    try:
        assert not {"reset", "clean", "diff-files", "status"} & set(names), names
        _assert_exactly_head(run_repo, path, await run_repo.head())
        for entry in path.rglob("*"):  # one link each: no file shared with anything else
            if entry.is_file() and not entry.is_symlink():
                assert entry.stat().st_nlink == 1, entry
        old = _outside(path) / "old.py"
        assert old.read_text() == "EVIL = 1\n"  # nothing outside was written
    finally:
        await run_repo.release_worktree(path, reuse=False)
        await run_repo.close()


async def test_a_worktree_holding_only_caches_costs_no_write(
        repo: Path, wt_root: Path) -> None:
    # A branch check's worktree where the tests wrote only caches: the caches go, and no git
    # process writes a file (no checkout-index; no read-tree: the head did not move and the
    # index holds its tree, a commit the daemon made, as its own git put it there).
    _setup(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    path = await run_repo.acquire_worktree(wt_root)
    (path / "pkg" / "feature.py").write_text("F = 1\n")
    assert (await run_repo.commit_and_merge(path, "a batch")).merged
    await run_repo.release_worktree(path)
    assert await run_repo.acquire_worktree(wt_root) == path
    (path / "pkg" / "__pycache__").mkdir()
    (path / "pkg" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"\0" * 16)
    (path / ".pytest_cache" / "v").mkdir(parents=True)
    await run_repo.release_worktree(path)
    with record_git_calls() as calls:
        assert await run_repo.acquire_worktree(wt_root) == path
    try:
        assert calls.subcommands() == ["rev-parse", "update-ref"], calls.subcommands()
        _assert_exactly_head(run_repo, path, await run_repo.head())
    finally:
        await run_repo.release_worktree(path, reuse=False)
        await run_repo.close()


async def test_a_nested_repository_in_the_index_takes_the_whole_reset(
        repo: Path, wt_root: Path) -> None:
    # A staged gitlink (a failed batch's verification staged a repository it made): the list
    # is not enough (git would look inside it), the whole-tree reset runs and refuses it.
    def nested(path: Path, _repo: Path) -> None:
        inner = path / "vendored"
        inner.mkdir()
        run_git(inner, "init", "-q")
        (inner / "v.py").write_text("V = 1\n")
        run_git(inner, "add", "v.py")
        run_git(inner, "-c", "user.name=m", "-c", "user.email=m@x", "commit", "-qm", "v")
        run_git(path, "add", "vendored")

    _setup(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    nested(victim, repo)
    await run_repo.release_worktree(victim)
    with record_git_calls() as calls:
        again = await run_repo.acquire_worktree(wt_root)
    try:
        assert "reset" in calls.subcommands(), calls.subcommands()
        _assert_exactly_head(run_repo, again, await run_repo.head())
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


@pytest.mark.parametrize("staged", [False, True], ids=["untracked", "staged"])
async def test_a_name_that_is_not_utf8_is_not_reused(
        repo: Path, wt_root: Path, staged: bool) -> None:
    # git's output is read as UTF-8 with bad bytes replaced: such a name cannot be matched
    # with the index's listing, so what changed there cannot be put back (a tracked one's
    # mode, say: tests/integrity/test_hostile_reuse.py); the worktree is removed and the
    # next batch gets a new one.
    def odd(path: Path, _repo: Path) -> None:
        (path / "pkg" / os.fsdecode(b"odd\xff.py")).write_text("ODD = 1\n")
        (path / "pkg" / "odd\ufffd.py").write_text("REAL = 1\n")
        if staged:
            run_git(path, "add", "-A")

    _setup(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    odd(victim, repo)
    await run_repo.release_worktree(victim)
    with record_git_calls() as calls:
        again = await run_repo.acquire_worktree(wt_root)
    try:
        assert again != victim and not victim.exists(), calls.subcommands()
        assert sorted(os.listdir(again / "pkg")) == ["core.py", "tool.sh"]
        _assert_exactly_head(run_repo, again, await run_repo.head())
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


async def test_folders_nested_deeper_than_pythons_stack(repo: Path, wt_root: Path) -> None:
    # shutil.rmtree recurses once a folder: a chain deeper than the interpreter's recursion
    # limit is removed by the whole-tree reset (git's clean, in C), or the worktree is not
    # reused; either way the next acquire hands out the head's checkout, and raises nothing.
    _setup(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    fd = os.open(victim / "pkg", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(sys.getrecursionlimit() + 100):  # one level at a time (no recursion)
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(os.open(".git", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    await run_repo.release_worktree(victim)
    again = await run_repo.acquire_worktree(wt_root)
    try:
        assert not (again / "pkg" / "d").exists()
        _assert_exactly_head(run_repo, again, await run_repo.head())
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()
