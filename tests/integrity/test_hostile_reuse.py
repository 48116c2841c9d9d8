"""A hostile batch against what the restore by ctime and the reuse of worktrees rest on
(issue 13, round two; ``test_hostile_shortcuts.py`` is round one).

The run branch's check is taken from the batch's own test run when the merge commits the tree
it tested, and otherwise runs in a worktree of the run's pool, which may be the batch's own,
reset and restored (``workspace/_touched.py``). Either way the evidence is a test run in a
worktree the model has been in. Each attack below leaves something there, or reads something
of it, that a checkout elsewhere does not have, and ends with what a user would notice: do
the run branch's tests pass in a clean clone, what does the next batch's worktree hold.

Real git, the real workspace and the real sandbox (the test command runs confined); what the
model would do in its worktree is done here directly, as its bash tool would. An attack
that works on the tree this was written on is a strict xfail naming why.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.errors import BuildRunnerError
from buildrunnerd.workspace import GitWorkspace, RunRepo, prepare_run_repo
from tests.integrity.test_hostile_shortcuts import (
    CALC,
    CHECK,
    _left_then_reused,
    _seed_calc,
    _workspace,
)
from tests.workspace._helpers import run_git, skip_unless_ci, task

pytestmark = pytest.mark.timeout(120)

FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long): the kernel reads and writes an int
FS_IOC_SETFLAGS = 0x40086602
FS_NODUMP_FL = 0x00000040  # chattr +d: any owner may set it, and new entries inherit it


def _flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return int.from_bytes(fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4], "little")
    finally:
        os.close(fd)


def _set_flags(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<i", flags) + bytes(4))
    finally:
        os.close(fd)


def _nodump(path: Path) -> None:
    """chattr +d, as the model's bash can (skipped where the file system has no such flag)."""
    try:
        _set_flags(path, _flags(path) | FS_NODUMP_FL)
    except OSError as exc:
        skip_unless_ci(f"{path}: no inode flags on this file system ({exc})")


async def _clone_passes(repo: Path, branch: str, clone: Path) -> tuple[bool, str]:
    """Whether the test command passes in a clean clone of ``branch`` (what a user runs)."""
    await anyio.run_process(["git", "clone", "-q", "-b", branch, str(repo), str(clone)])
    checked = await anyio.run_process(["sh", "-c", CHECK], cwd=clone, check=False)
    return checked.returncode == 0, checked.stderr.decode()


class Outcome:
    """What became of a hostile batch: ``merged`` (the batch succeeded), ``run_ok`` (the
    run's final check of its branch passed), ``clone_ok`` (the test command passes in a
    clean clone of the run branch, what a user runs; ``err`` its error output)."""

    def __init__(self, merged: bool, run_ok: bool, clone_ok: bool, err: str) -> None:
        self.merged, self.run_ok, self.clone_ok, self.err = merged, run_ok, clone_ok, err

    def check(self, claim: str) -> None:
        """``"batch"``: the batch succeeded only on evidence it cannot forge; ``"run"``: the
        run did."""
        forged = self.merged if claim == "batch" else self.run_ok
        assert self.clone_ok or not forged, (f"the {claim} succeeded and the run branch "
                                             f"fails in a clean clone: {self.err}")


async def _hostile_calc(ws: GitWorkspace, run_repo: RunRepo, repo: Path, tmp_path: Path, *,
                        cond: Callable[[Path], str], leave: Callable[[Path], None],
                        route: str) -> Outcome:
    """A batch writes calc.py whose ``add`` is right only when ``cond`` (given the batch's
    worktree) holds, leaves ``leave``'s state, and is verified, committed and merged as the
    daemon does (its worktree released between the commit and the merge, so the branch's
    check may get it back), and the run's branch gets its final check. ``route``:
    ``"shortcut"`` (nothing but the staged files in the worktree: the batch's own test run
    is the branch's check) or ``"pool"`` (an ignored file beside them: the check runs in a
    worktree of the pool)."""
    config = VerifyConfig()
    path, head = await ws.acquire()
    (path / "calc.py").write_text("import fcntl\nimport stat\n" + CALC.format(cond=cond(path)))
    if route == "pool":
        (path / "magic.txt").write_text("ignored, never committed\n")
    leave(path)
    report = await ws.verify(path, [task("t1", "calc.py")], head=head, config=config,
                             confinement=None)
    merged = run_ok = False
    if report.passed:
        # The pool route never takes the batch's run as the check (the shortcut route may
        # not either: a worktree the restore cannot put back is refused).
        assert route == "shortcut" or report.tree is None, report
        made = await ws.commit(path, "t1", report, head=head)
        await ws.release(path)  # as the daemon does: the branch's check may reuse it
        done = await ws.merge(made, report, head=head, batch_id="b1", config=config,
                              confinement=None)
        merged = done.merged
        final = await ws.verify_head(config, None)
        run_ok = merged and final is not None and final.failed is None
    else:
        await ws.release(path, reuse=False)
    try:
        return Outcome(merged, run_ok, *await _clone_passes(repo, run_repo.branch,
                                                            tmp_path / "clone"))
    finally:
        await ws.close()


async def _ignoring_magic(repo: Path, wt_root: Path) -> tuple[RunRepo, GitWorkspace]:
    _seed_calc(repo)
    (repo / ".gitignore").write_text("magic.txt\n")
    run_git(repo, "add", ".gitignore")
    run_git(repo, "commit", "-qm", "ignore")
    return await _workspace(repo, wt_root, "calc.py", test_cmd=CHECK)


def _nothing(path: Path) -> None:
    pass


ROUTES = ["shortcut", "pool"]


# --- the worktree's own identity: nothing to restore -------------------------------------

IDENTITY: dict[str, Callable[[Path], str]] = {
    # The worktree's name is unique to it (w<n>-<random>) and the sandbox binds it at its
    # own path; an untouched file keeps its inode and its times through the restore.
    "worktree_path": lambda wt: f"os.path.basename(_HERE) == {wt.name!r}",
    "untouched_inode": lambda wt: (f"os.stat(os.path.join(_HERE, 'README.md')).st_ino == "
                                   f"{(wt / 'README.md').stat().st_ino}"),
    "untouched_ctime": lambda wt: (f"os.stat(os.path.join(_HERE, 'app.py')).st_ctime_ns == "
                                   f"{(wt / 'app.py').stat().st_ctime_ns}"),
}


BATCH_FORGES_IDENTITY = pytest.mark.xfail(strict=True, reason=(
    "the run branch's check after a merge is a test run in a worktree the batch's code was "
    "in (its own run, taken as the check, or its worktree reset and restored): code that "
    "tests where it runs (the worktree's path, an untouched file's inode or ctime) passes "
    "there and the batch succeeds; only the run's final check is made in a worktree no "
    "batch had"))


@pytest.mark.parametrize("claim", [pytest.param("batch", marks=BATCH_FORGES_IDENTITY), "run"])
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("trick", sorted(IDENTITY))
async def test_code_that_knows_its_worktree_does_not_succeed(
        repo: Path, wt_root: Path, tmp_path: Path, trick: str, route: str,
        claim: str) -> None:
    run_repo, ws = await _ignoring_magic(repo, wt_root)
    outcome = await _hostile_calc(ws, run_repo, repo, tmp_path, cond=IDENTITY[trick],
                                  leave=_nothing, route=route)
    outcome.check(claim)


@pytest.mark.xfail(strict=True, reason=(
    "a known limit, not a bug to fix here: code can tell where it runs from what every "
    "check shares and a user's clone does not (a worktree's .git is a file, the sandbox's "
    "HOME, its empty /tmp, its PID namespace), so no test run the daemon makes can show "
    "that code behaves the same in the user's checkout (docs/verification.md, known "
    "limits)"))
async def test_code_that_knows_it_runs_in_a_buildrunner_worktree(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    run_repo, ws = await _ignoring_magic(repo, wt_root)
    outcome = await _hostile_calc(ws, run_repo, repo, tmp_path,
                                  cond=lambda wt: "os.path.isfile(os.path.join(_HERE, '.git'))",
                                  leave=_nothing, route="shortcut")
    outcome.check("run")


# --- what the restore does not put back --------------------------------------------------

def _flag_cond(rel: str) -> Callable[[Path], str]:
    return lambda wt: (f"int.from_bytes(fcntl.ioctl(os.open(os.path.join(_HERE, {rel!r}), "
                       f"os.O_RDONLY), {FS_IOC_GETFLAGS}, bytes(8))[:4], 'little') & "
                       f"{FS_NODUMP_FL}")


BATCH_FORGES_FLAGS = pytest.mark.xfail(strict=True, reason=(
    "_touched._restore_folder puts back a touched folder's mode, group, xattrs and mtime, "
    "not its inode flags (FS_IOC_SETFLAGS: chattr +d, +A, +S, +D, +T, which the owner may "
    "set and every entry made there inherits), so a flag on the worktree's top folder "
    "outlives the restore and the reset, and the branch's check passes on it: clear the "
    "flags of each touched folder too"))


@pytest.mark.parametrize("claim", [pytest.param("batch", marks=BATCH_FORGES_FLAGS), "run"])
@pytest.mark.parametrize("route", ROUTES)
async def test_a_folder_flag_is_not_what_the_check_passes_on(
        repo: Path, wt_root: Path, tmp_path: Path, route: str, claim: str) -> None:
    run_repo, ws = await _ignoring_magic(repo, wt_root)
    outcome = await _hostile_calc(ws, run_repo, repo, tmp_path, cond=_flag_cond("."),
                                  leave=_nodump, route=route)
    outcome.check(claim)


async def test_a_file_flag_is_not_what_the_check_passes_on(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    # Stopped: the flagged file is touched, so it is written again (a new inode, the flags
    # of its folder, which the batch left alone).
    run_repo, ws = await _ignoring_magic(repo, wt_root)
    outcome = await _hostile_calc(ws, run_repo, repo, tmp_path, cond=_flag_cond("calc.py"),
                                  leave=lambda wt: _nodump(wt / "calc.py"), route="shortcut")
    outcome.check("batch")


@pytest.mark.xfail(strict=True, reason=(
    "the inode flags of a touched folder are not put back (see "
    "test_a_folder_flag_is_not_what_the_check_passes_on): the next batch's files inherit "
    "them"))
async def test_the_next_batch_gets_no_folder_flag(repo: Path, wt_root: Path) -> None:
    run_repo, victim, again = await _left_then_reused(repo, wt_root,
                                                      lambda wt: _nodump(wt / "pkg"))
    try:
        assert again == victim
        (again / "pkg" / "new.py").write_text("NEW = 1\n")
        flagged = [rel for rel in ("pkg", "pkg/core.py", "pkg/new.py")
                   if _flags(again / rel) & FS_NODUMP_FL]
        assert flagged == []
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


# --- names git and the restore read differently ------------------------------------------

# The user's repository may hold a name that is not UTF-8 (a batch cannot add one: verify
# fails it). git's listing of the index is decoded with bad bytes replaced, the walk's names
# with surrogate escapes: the restore did not find such a touched file among the tracked ones.
UNDECODABLE = os.fsdecode(b"data\xff.txt")


def _commit_undecodable(repo: Path) -> None:
    (repo / UNDECODABLE).write_text("data\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "data")


def _private(wt: Path) -> None:
    (wt / UNDECODABLE).chmod(0o600)  # git sees no change: the executable bit is the same



@pytest.mark.parametrize("claim", ["batch", "run"])
async def test_an_undecodable_tracked_name_is_not_what_the_check_passes_on(
        repo: Path, wt_root: Path, tmp_path: Path, claim: str) -> None:
    _commit_undecodable(repo)
    run_repo, ws = await _ignoring_magic(repo, wt_root)
    cond = ("stat.S_IMODE(os.stat(os.path.join(_HERE, os.fsdecode(b'data\\xff.txt')))"
            ".st_mode) == 0o600")
    outcome = await _hostile_calc(ws, run_repo, repo, tmp_path, cond=lambda wt: cond,
                                  leave=_private, route="shortcut")
    outcome.check(claim)


async def test_the_next_batch_gets_an_undecodable_tracked_name_as_checked_out(
        repo: Path, wt_root: Path) -> None:
    _commit_undecodable(repo)
    run_repo, victim, again = await _left_then_reused(repo, wt_root, _private)
    try:  # (a new worktree, when the restore refuses the name, is fine)
        mask = os.umask(0o022)
        os.umask(mask)
        assert stat.S_IMODE((again / UNDECODABLE).lstat().st_mode) == 0o666 & ~mask
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


async def test_the_next_batch_has_every_tracked_file_whatever_its_name(
        repo: Path, wt_root: Path) -> None:
    # Whatever the restore makes of a name that is not UTF-8, the file is there and holds
    # what the head holds (a reset that took it for an untracked one would delete it, and
    # the next batch's commit would delete it from the branch).
    _commit_undecodable(repo)
    run_repo, victim, again = await _left_then_reused(repo, wt_root, _private)
    try:
        assert _disk(again) == _checkout(again)
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


# Names a command line or a line-based reader would take for something else.
ODD = ["-n\nx", "--help", " lead", "tail ", "a\\b", "*", "-"]


def _odd_names(wt: Path) -> None:
    for i, name in enumerate(ODD):
        os.mkfifo(wt / "pkg" / name)  # in a tracked folder
        (wt / f"{name}{i}").mkdir()  # an empty folder at the top
        (wt / f"{name}{i}" / name).mkdir()  # and one below it
    os.setxattr(wt / "pkg", "user.odd", b"1")


async def test_odd_names_reach_the_next_batch_as_nothing(repo: Path, wt_root: Path) -> None:
    # The defence holds: find -print0, names read as bytes, checkout-index -z.
    run_repo, victim, again = await _left_then_reused(repo, wt_root, _odd_names)
    try:
        assert again == victim
        left = sorted(p.relative_to(again).as_posix() for p in again.rglob("*")
                      if p.name != ".git")
        assert left == ["README.md", "app.py", "pkg", "pkg/core.py"], left
        assert os.listxattr(again / "pkg") == []
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


def _too_deep(wt: Path) -> None:
    """A folder below the top whose path is longer than PATH_MAX, made one level at a time
    as a shell's ``mkdir x && cd x`` does, with a FIFO at the bottom."""
    fd = os.open(wt / "pkg", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(24):
            os.mkdir("d" * 250, dir_fd=fd)
            deeper = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        os.mkfifo("pipe", dir_fd=fd)
    finally:
        os.close(fd)


async def test_a_path_longer_than_path_max_is_not_reused_or_is_removed(
        repo: Path, wt_root: Path) -> None:
    # A name the walk lists that the daemon cannot lstat by its path: the next batch still
    # gets a clean worktree (a new one when this one is refused), never an OSError.
    run_repo, victim, again = await _left_then_reused(repo, wt_root, _too_deep)
    try:
        assert sorted(p.name for p in (again / "pkg").iterdir()) == ["core.py"]
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


async def test_a_path_longer_than_path_max_in_the_batch_does_not_break_its_verification(
        repo: Path, wt_root: Path) -> None:
    run_repo, ws = await _ignoring_magic(repo, wt_root)
    path, head = await ws.acquire()
    (path / "calc.py").write_text("def add(a, b):\n    return a + b + 0\n")
    (path / "pkg").mkdir()
    (path / "pkg" / "mod.py").write_text("MOD = 1\n")
    _too_deep(path)
    try:
        report = await ws.verify(path, [task("t1", "calc.py")], head=head,
                                 config=VerifyConfig(), confinement=None)
    except BuildRunnerError:
        pass  # refused with a reason: fine
    else:
        assert report.tree is None or not report.passed, report
    finally:
        await ws.release(path, reuse=False)
        await ws.close()


def _acl(*entries: tuple[int, int]) -> bytes:
    """A POSIX ACL as the kernel's xattr holds it (version 2; tag, perm, id per entry)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                           for tag, perm in entries)


def _default_acl(wt: Path) -> None:
    # user::rw- group::--- other::--- for every entry made there from now on (setfacl -d).
    try:
        os.setxattr(wt, "system.posix_acl_default", _acl((0x01, 6), (0x04, 0), (0x20, 0)))
    except OSError as exc:
        skip_unless_ci(f"no POSIX ACLs on this file system ({exc})")
    if (wt / "app.py").exists():
        (wt / "app.py").write_text("def hello() -> str:\n    return 'hello'\n")


async def test_a_default_acl_does_not_reach_the_next_batch(repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    other = await run_repo.acquire_worktree(wt_root)
    (other / "merged.py").write_text("M = 1\n")  # another batch's work, merged meanwhile
    assert (await run_repo.commit_and_merge(other, "other batch")).merged
    await run_repo.release_worktree(other, reuse=False)
    _default_acl(victim)
    await run_repo.release_worktree(victim)
    again = await run_repo.acquire_worktree(wt_root)
    try:
        assert again == victim
        assert "system.posix_acl_default" not in os.listxattr(again)
        _assert_checkout_modes(again, "app.py", "merged.py", "README.md")
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


def _assert_checkout_modes(wt: Path, *names: str) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {rel: stat.S_IMODE((wt / rel).lstat().st_mode) for rel in names}
    assert modes == dict.fromkeys(modes, 0o666 & ~mask), modes
    assert [os.listxattr(wt / rel) for rel in names] == [[] for _ in names]


async def test_a_default_acl_is_not_what_the_check_passes_on(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    # The defence holds: before the batch's run is taken as the check, a touched folder's
    # extended attributes (ACLs too) are removed before its files are written again.
    run_repo, ws = await _ignoring_magic(repo, wt_root)
    cond = ("'system.posix_acl_default' in os.listxattr(_HERE) or "
            "stat.S_IMODE(os.stat(os.path.join(_HERE, 'app.py')).st_mode) == 0o600")
    outcome = await _hostile_calc(ws, run_repo, repo, tmp_path, cond=lambda wt: cond,
                                  leave=_default_acl, route="shortcut")
    outcome.check("batch")


# --- what a reuse that follows only what changed must still see -------------------------
# Guards for a reset driven by the ctime list alone: a rename moves the ctime of the entry
# renamed and of the two folders, never of what is below a renamed folder; a deleted entry
# is in no list.


def _disk(wt: Path) -> dict[str, str]:
    """Every entry of ``wt`` but its ``.git``, links not followed: path -> what it is (a
    file's blob id and mode, a link's target, ``dir``, or ``other``)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(wt):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            rel = full.relative_to(wt).as_posix()
            if rel == ".git":
                continue
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = "link " + os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                data = full.read_bytes()
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                found[rel] = f"{blob} {'755' if st.st_mode & 0o100 else '644'}"
            else:
                found[rel] = "other"
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()
                       and (Path(dirpath) / d).relative_to(wt).as_posix() != ".git"]
    return found


def _git_bytes(wt: Path, *args: str) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=wt, env=env, capture_output=True,
                          check=True).stdout


def _checkout(wt: Path, tree: str = "HEAD") -> dict[str, str]:
    """What a checkout of ``tree`` (default: ``wt``'s HEAD) holds, in :func:`_disk`'s
    terms (names read as bytes: one may not be UTF-8)."""
    want: dict[str, str] = {}
    for record in _git_bytes(wt, "ls-tree", "-r", "-t", "-z", tree).split(b"\0"):
        if not record:
            continue
        meta, raw_path = record.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        path = os.fsdecode(raw_path)
        if kind == "tree":
            want[path] = "dir"
        elif mode == "120000":
            want[path] = "link " + os.fsdecode(_git_bytes(wt, "cat-file", "blob", sha))
        else:
            want[path] = f"{sha} {mode[-3:]}"
    return want


def _rename_tracked_folder(wt: Path) -> None:
    (wt / "pkg").rename(wt / "lib")  # lib/core.py keeps its ctime; pkg/core.py is gone


def _folder_behind_a_link(wt: Path) -> None:
    (wt / "pkg").rename(wt / "hidden")
    (wt / "pkg").symlink_to("hidden")  # pkg/core.py still reads, through the link


def _swap_tracked_folders(wt: Path) -> None:
    # Two tracked folders, each file at its path with the other's content and its old ctime.
    (wt / "pkg").rename(wt / "tmp-swap")
    (wt / "other").rename(wt / "pkg")
    (wt / "tmp-swap").rename(wt / "other")


def _delete_tracked(wt: Path) -> None:
    (wt / "README.md").unlink()
    (wt / "other" / "core.py").unlink()
    (wt / "other").rmdir()


def _file_to_folder(wt: Path) -> None:
    (wt / "app.py").unlink()
    (wt / "app.py").mkdir()
    (wt / "app.py" / "x.py").write_text("X = 1\n")


def _folder_to_file(wt: Path) -> None:
    (wt / "pkg" / "core.py").unlink()
    (wt / "pkg").rmdir()
    (wt / "pkg").write_text("CORE = 1\n")


def _tracked_into_new_folder(wt: Path) -> None:
    (wt / "junk").mkdir()
    (wt / "pkg").rename(wt / "junk" / "pkg")


MOVED: dict[str, Callable[[Path], None]] = {
    "rename_tracked_folder": _rename_tracked_folder,
    "folder_behind_a_link": _folder_behind_a_link,
    "swap_tracked_folders": _swap_tracked_folders,
    "delete_tracked": _delete_tracked,
    "file_to_folder": _file_to_folder,
    "folder_to_file": _folder_to_file,
    "tracked_into_new_folder": _tracked_into_new_folder,
}


@pytest.mark.parametrize("trick", sorted(MOVED))
async def test_the_next_batch_gets_the_head_whatever_was_moved(
        repo: Path, wt_root: Path, trick: str) -> None:
    (repo / "other").mkdir()
    (repo / "other" / "core.py").write_text("CORE = 2  # not pkg's\n")
    run_git(repo, "add", "other")
    run_git(repo, "commit", "-qm", "other")
    run_repo, victim, again = await _left_then_reused(repo, wt_root, MOVED[trick])
    try:
        assert _disk(again) == _checkout(again)
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


@pytest.mark.parametrize("trick", sorted(MOVED))
async def test_the_run_taken_as_the_check_saw_the_tree_merged(
        repo: Path, wt_root: Path, trick: str) -> None:
    # The shortcut's own claim: when the batch's run is the branch's check (``tree``), the
    # worktree held, as its tests ran, what a checkout of that tree holds.
    (repo / "other").mkdir()
    (repo / "other" / "core.py").write_text("CORE = 2  # not pkg's\n")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "core.py").write_text("CORE = 1\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "pkg, other")
    run_repo, ws = await _workspace(repo, wt_root, "calc.py", test_cmd="true")
    path, head = await ws.acquire()
    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    MOVED[trick](path)
    report = await ws.verify(path, [task("t1", "calc.py")], head=head, config=VerifyConfig(),
                             confinement=None)
    try:
        assert report.passed, report
        if report.tree is not None:  # (it is, on ac40937, for each of these)
            seen = {rel: what for rel, what in _disk(path).items()
                    if "__pycache__" not in rel}
            assert seen == _checkout(path, report.tree)
    finally:
        await ws.release(path, reuse=False)
        await ws.close()
