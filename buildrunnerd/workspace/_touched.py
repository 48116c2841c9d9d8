"""What model code changed in a worktree since it was last clean, put back as a checkout.

git sees a worktree's contents, not what a checkout of its tree would not hold: a file's mode
bits other than the executable one, its mtime, its links and extended attributes, a folder's
mode, an empty folder, a FIFO or a socket. Code the model wrote can depend on any of them and
pass its tests only in the worktree that holds them: the batch's own test run, or a branch
check in a reused worktree whose earlier batch left them, would then be evidence the model
forged (tests/integrity/test_hostile_shortcuts.py).

What changed is found by **ctime**, which every change of an entry moves and which no process
can set back: the worktree's *clean point* is the file system's clock when it was last as a
checkout writes it (:func:`clean_point`, a probe file's ctime, so it reads the clock the file
system stamps with, not a finer one); :func:`restore_touched` lists with ``find`` (one C walk,
links not followed) every entry whose ctime is not older than that, then writes each tracked
file or link again from the index (a new inode: default mode, no link, no attribute, a fresh
mtime), deletes what is neither file, link nor folder and every ``.git`` below the top, gives
touched folders the mode a checkout gives them and no extended attribute, and removes the
folders it left empty. The batch's processes are all dead by then (the sandbox ends with the
batch, the tests with their run), so nothing changes under the walk.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import anyio

from buildrunnerd.errors import WorkspaceError
from buildrunnerd.workspace._git import git
from buildrunnerd.workspace._tree import Tree, same_entries

__all__ = ["CleanPoint", "Touched", "clean_point", "find_touched", "restore_folder",
           "restore_touched"]

# What changed since a clean point: worktree-relative path -> its inode number when listed
# (-1 for a folder). A file or link whose inode differs when it is put back was written anew
# since, by the daemon's own git (a reset writes every file as a new one), not by the model.
Touched = dict[str, int]

_FIND_TIMEOUT_S = 120.0


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_FOLDER_MODE = 0o777 & ~_umask()  # what git's mkdir gives a folder


def _probe_ns(root: Path) -> int:
    fd, name = tempfile.mkstemp(dir=root, prefix=".clock-")
    try:
        return os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
        os.unlink(name)


class CleanPoint:
    """When a worktree was last as a checkout writes it: the file system's clock then, in ns
    (:func:`clean_point`). :func:`restore_touched` moves it forward."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __repr__(self) -> str:
        return f"CleanPoint({self.ns})"


async def clean_point(root: Path) -> CleanPoint:
    """The file system's clock now (the ctime of a probe made in ``root``, the worktree's
    parent, which the model cannot reach): taken right after a worktree is as a checkout
    writes it, every later change of an entry there has a ctime at least this."""
    return CleanPoint(await anyio.to_thread.run_sync(_probe_ns, root))


def _marker(root: Path, since_ns: int) -> tuple[str, int]:
    """A marker file whose mtime is one ns before ``since_ns``, and the clock now (its ctime
    when made)."""
    fd, name = tempfile.mkstemp(dir=root, prefix=".clean-point-")
    try:
        now_ns = os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
    # find's -cnewer compares with the marker's mtime, strictly: one ns before the clean point
    # lists what changed in the clean point's own clock tick too.
    os.utime(name, ns=(since_ns - 1, since_ns - 1))
    return name, now_ns


def _inodes(worktree: Path, names: Sequence[str]) -> Touched:
    touched: Touched = {}
    for rel in names:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            # git's listings are read as UTF-8 with bad bytes replaced: such a name cannot
            # be told tracked or not, so it cannot be put back.
            raise WorkspaceError(f"worktree {worktree}: {rel.encode(errors='surrogateescape')!r}"
                                 " changed and is not a UTF-8 name; not reused",
                                 data={"worktree": str(worktree)}) from None
        try:
            st = os.lstat(worktree / rel if rel else worktree)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:  # a path longer than PATH_MAX, say
            raise WorkspaceError(f"worktree {worktree}: cannot look at what changed there "
                                 f"({exc.strerror}); not reused",
                                 data={"worktree": str(worktree)}) from exc
        touched[rel] = -1 if stat.S_ISDIR(st.st_mode) else st.st_ino
    return touched


async def find_touched(worktree: Path, *, root: Path, clean: CleanPoint) -> Touched:
    """Every entry of ``worktree`` whose ctime is not older than ``clean`` (``""`` is the top
    folder), the top ``.git`` left out. Raises :class:`WorkspaceError` when the walk is not
    complete (a folder the model made unreadable) or the clock went back since."""
    names = await _touched(worktree, root, clean.ns)
    return await anyio.to_thread.run_sync(_inodes, worktree, names)


async def _touched(worktree: Path, root: Path, since_ns: int) -> list[str]:
    marker, now_ns = await anyio.to_thread.run_sync(_marker, root, since_ns)
    if now_ns < since_ns:
        await anyio.to_thread.run_sync(os.unlink, marker)
        raise WorkspaceError(f"worktree {worktree}: the clock went back since it was clean, so "
                             "what changed there cannot be told by ctime; not reused",
                             data={"worktree": str(worktree)})
    try:
        with anyio.fail_after(_FIND_TIMEOUT_S):
            res = await anyio.run_process(
                ["find", ".", "-path", "./.git", "-prune", "-o", "-cnewer", marker,
                 "-print0"], cwd=worktree, check=False)
    finally:
        await anyio.to_thread.run_sync(os.unlink, marker)
    if res.returncode != 0:
        why = res.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise WorkspaceError(f"worktree {worktree}: cannot list what changed there "
                             f"({why[0] if why else 'find failed'}); not reused",
                             data={"worktree": str(worktree)})
    names = [os.fsdecode(n) for n in res.stdout.split(b"\0") if n]
    return ["" if n == "." else n.removeprefix("./") for n in names]


def restore_folder(path: Path) -> None:
    """Give a folder the mode, group and (no) extended attributes a checkout gives it."""
    st = os.lstat(path)
    if stat.S_IMODE(st.st_mode) != _FOLDER_MODE:
        os.chmod(path, _FOLDER_MODE)  # setuid, setgid and sticky bits included
    if st.st_gid != os.getegid():  # another group of the user's (chgrp)
        os.chown(path, -1, os.getegid())
    if hasattr(os, "listxattr"):  # Linux (macOS's Python has no xattr calls)
        for name in os.listxattr(path, follow_symlinks=False):
            os.removexattr(path, name, follow_symlinks=False)
    os.utime(path)


def _restore_folders(worktree: Path, touched: Touched) -> None:
    for rel in sorted((r for r, ino in touched.items() if ino == -1),
                      key=lambda r: r.count("/")):
        if rel.rsplit("/", 1)[-1] == ".git":
            continue
        path = worktree / rel if rel else worktree
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            restore_folder(path)


async def restore_folders(worktree: Path, touched: Touched) -> None:
    """The touched folders (:func:`find_touched`) put back as a checkout makes them (mode,
    group, no extended attribute) before the daemon's git writes into them: a file it writes
    takes its folder's default ACL and group. Raises :class:`WorkspaceError` when one cannot
    be."""
    try:
        await anyio.to_thread.run_sync(_restore_folders, worktree, touched)
    except OSError as exc:
        raise WorkspaceError(f"worktree {worktree}: cannot put back a folder the batch "
                             f"changed ({exc}); not reused",
                             data={"worktree": str(worktree)}) from exc


def _normalise(worktree: Path, touched: Touched,
               tracked: Tree) -> tuple[list[str], list[str]]:
    """Folders to their checkout mode, then the touched non-folders deleted: every tracked one
    (written again after) and every one that is not a file or a link; one written anew since
    it was listed (another inode) is left as git wrote it. Returns (the tracked paths to
    write, the touched folders, deepest first)."""
    folders: list[str] = []
    others: list[tuple[str, int]] = []
    for rel, listed_ino in touched.items():
        try:
            st = os.lstat(worktree / rel if rel else worktree)
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone since (reset, clean), or inside a .git removed before
        mode = st.st_mode
        if not stat.S_ISDIR(mode) and st.st_ino != listed_ino:
            continue  # written anew since it was listed (or a folder then): git's
        if rel.rsplit("/", 1)[-1] == ".git":
            # git never checks out (nor lists) a .git below the top: a checkout holds none.
            if stat.S_ISDIR(mode):
                shutil.rmtree(worktree / rel)
            else:
                os.unlink(worktree / rel)
        elif stat.S_ISDIR(mode):
            folders.append(rel)
        else:
            others.append((rel, mode))
    folders.sort(key=lambda rel: rel.count("/"))  # a parent's mode before its children
    for rel in folders:
        restore_folder(worktree / rel if rel else worktree)
    rewrite: list[str] = []
    for rel, mode in others:
        special = not (stat.S_ISREG(mode) or stat.S_ISLNK(mode))
        if rel in tracked or special:
            os.unlink(worktree / rel)
            if rel in tracked:
                rewrite.append(rel)
    return rewrite, sorted((f for f in folders if f), key=lambda r: -r.count("/"))


def _remove_empty(worktree: Path, folders: Iterable[str]) -> None:
    for rel in folders:
        try:
            os.rmdir(worktree / rel)
        except OSError:
            pass  # not empty (or gone): kept


async def restore_touched(worktree: Path, opts: Sequence[str], *, root: Path,
                          clean: CleanPoint, tracked: Tree, timeout_s: float,
                          touched: Touched | None = None) -> int:
    """Put every entry of ``worktree`` whose ctime is not older than ``clean`` (the worktree's
    clean point) back as a checkout of the index (``tracked``: its listing) writes it, then
    move ``clean`` to now: what runs there next is found from there.
    Untracked files and links are left where they are (``git clean`` removes them from a
    reused worktree; before the tests they are ignored files the tests may need, as a
    project's installed packages). Returns how many entries were touched. Raises
    :class:`WorkspaceError` when the worktree cannot be put back (the caller then does not
    use it as a clean checkout). ``touched``: what :func:`find_touched` listed before the
    daemon's own git changed the worktree (a reset), so that the files git wrote since are
    left as it wrote them; default: listed now."""
    if touched is None:
        touched = await find_touched(worktree, root=root, clean=clean)
    if not touched:
        clean.ns = (await clean_point(root)).ns
        return 0
    try:
        rewrite, folders = await anyio.to_thread.run_sync(
            _normalise, worktree, touched, tracked)
    except OSError as exc:
        raise WorkspaceError(f"worktree {worktree}: cannot put back what the batch changed "
                             f"({exc}); not reused", data={"worktree": str(worktree)}) from exc
    if rewrite:
        # -u: the index's stat data becomes the new files', so the next look finds them as
        # the index records them.
        with same_entries(opts):
            await git([*opts, "checkout-index", "-f", "-u", "-z", "--stdin"], cwd=worktree,
                      timeout_s=timeout_s, input=b"\0".join(os.fsencode(p) for p in rewrite),
                      what=f"writing again the files the batch changed in worktree {worktree}")
    await anyio.to_thread.run_sync(_remove_empty, worktree, folders)
    clean.ns = (await clean_point(root)).ns
    return len(touched)
