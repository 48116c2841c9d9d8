"""A reused worktree put back as a checkout of its index from the ctime list alone.

The list (:func:`._touched.find_touched`: every entry whose ctime is not older than the
worktree's clean point, when it was exactly a checkout) is the only evidence of what a batch
changed: no process can set a ctime back, and the batch's and its tests' processes are all
dead when the list is made. Every way to change an entry moves a ctime the list sees:

- writing, truncating, re-moding, re-dating (``utime``), an extended attribute, a hard link
  made or removed: the entry's own;
- making, removing or renaming an entry: its folder's, and (a rename) the entry's own, on
  every file system where :func:`rename_moves_ctime` holds (ext4, xfs, btrfs, tmpfs); on
  any other the caller takes the whole-tree reset.

So an entry that is not listed, in a folder that is the same folder (the same inode) it was at
the clean point, is the entry that was there. :func:`put_back` walks the list, parents first:

- an entry named ``.git`` below the top, and every untracked entry (not in the index listing;
  a folder whole), is deleted;
- a listed tracked file, link or anything in a tracked file's place is deleted, to be written
  again from the index (a new inode: default mode, one link, no attribute, a fresh mtime);
- a listed tracked folder gets the mode a checkout gives it and no extended attribute, and its
  entries are compared with the index's: an untracked name there is deleted, a tracked one
  missing or of the wrong kind is written again. A tracked folder that is not the folder of
  the clean point (another inode: one renamed or made in its place, whose entries the list
  need not show) is deleted whole and its files are written again.

Anything the walk does not expect (the top folder replaced, a nested repository in the index,
an entry it cannot remove) raises :class:`NotCoveredError`: the caller then resets the whole tree.
Every path comes from ``find`` (links never followed) and from the daemon's own index
listing; nothing is followed through a link: a folder is only entered when ``lstat`` shows a
real one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import anyio
import msgspec

from buildrunnerd.errors import WorkspaceError
from buildrunnerd.workspace._touched import restore_folder
from buildrunnerd.workspace._tree import Tree

__all__ = ["FolderInodes", "NotCoveredError", "PutBack", "folder_inodes", "put_back",
           "rename_moves_ctime"]

# Each tracked folder of a worktree at its clean point (``""`` its top) -> its inode number.
FolderInodes = dict[str, int]

_GITLINK = "160000"
# How long the probe waits for the file system's clock to tick (it ticks every few ms at the
# coarsest, every ns with multigrain timestamps).
_PROBE_WAIT_S = 1.0
_RENAME_PROBES: dict[int, bool] = {}  # st_dev of a worktree root -> the probe's answer


class NotCoveredError(WorkspaceError):
    """The worktree holds something the list-driven reset does not put back: the caller
    resets it whole (never raised out of the workspace)."""


class PutBack(msgspec.Struct, frozen=True):
    """What :func:`put_back` deleted that the index holds: files (and links) to be written
    again from the index, and how many listed entries it looked at."""

    deleted: list[str]
    listed: int


def _probe_rename(root: Path) -> bool:
    folder = tempfile.mkdtemp(dir=root, prefix=".rename-probe-")
    try:
        file_path, dir_path = os.path.join(folder, "f"), os.path.join(folder, "d")
        os.close(os.open(file_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
        os.mkdir(dir_path)
        os.mkdir(os.path.join(folder, "into"))
        made_ns = max(os.lstat(file_path).st_ctime_ns, os.lstat(dir_path).st_ctime_ns)
        deadline = time.monotonic() + _PROBE_WAIT_S
        tick = os.path.join(folder, "tick")
        while True:  # until the file system's clock has moved past both
            os.close(os.open(tick, os.O_CREAT | os.O_WRONLY, 0o600))
            now_ns = os.lstat(tick).st_ctime_ns
            os.unlink(tick)
            if now_ns > made_ns:
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        moved_file = os.path.join(folder, "into", "f2")
        moved_dir = os.path.join(folder, "d2")
        os.rename(file_path, moved_file)
        os.rename(dir_path, moved_dir)
        return (os.lstat(moved_file).st_ctime_ns > made_ns
                and os.lstat(moved_dir).st_ctime_ns > made_ns)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def rename_moves_ctime(root: Path) -> bool:
    """Whether renaming an entry on the file system of ``root`` (the worktrees' parent, which
    only the daemon reaches) moves that entry's own ctime, for a file moved to another folder
    and a folder renamed in its own (probed once a file system, then remembered)."""
    dev = (await anyio.Path(root).stat()).st_dev
    known = _RENAME_PROBES.get(dev)
    if known is None:
        known = _RENAME_PROBES[dev] = await anyio.to_thread.run_sync(_probe_rename, root)
    return known


def folder_inodes(worktree: Path, folders: Iterable[str]) -> FolderInodes:
    """The inode of the top of ``worktree`` and of each of ``folders`` (a checkout's tracked
    folders) that is a real folder; taken when the worktree is a checkout (its clean point)."""
    found: FolderInodes = {}
    for rel in ("", *folders):
        try:
            st = os.lstat(worktree / rel if rel else worktree)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            found[rel] = st.st_ino
    return found


def _children(index: Tree, folders: Collection[str], wanted: Collection[str]
              ) -> dict[str, dict[str, bool]]:
    """For each folder of ``wanted`` (tracked folders, ``""`` the top), the index's entries
    directly in it: name -> whether it is a folder. ``folders``: every folder of the index."""
    out: dict[str, dict[str, bool]] = {rel: {} for rel in wanted}
    if not out:
        return out
    # Only the paths directly in the top or below another wanted folder (one C-level test a
    # path, not a Python step).
    paths = [path for path in index if "/" not in path] if "" in out else []
    prefixes = tuple(f"{rel}/" for rel in out if rel)
    if prefixes:
        paths += [path for path in index if path.startswith(prefixes)]
    for path in paths:
        parent, _, name = path.rpartition("/")
        names = out.get(parent)
        if names is not None:
            names[name] = False
    for folder in folders:
        parent, _, name = folder.rpartition("/")
        names = out.get(parent)
        if names is not None:
            names[name] = True
    return out


def _remove(path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # never follows a link: what is behind one is not touched
    else:
        os.unlink(path)


def _readable(worktree: Path, name: str) -> None:
    """A name that is not valid UTF-8 on disk (decoded with surrogates), or holds U+FFFD (an
    undecodable name as git's output reads), cannot be matched with the index's listing:
    the whole-tree reset compares bytes."""
    if "\ufffd" in name or not name.isprintable() and _undecodable(name):
        raise NotCoveredError(f"{worktree}: a name that is not valid UTF-8 ({name!r})")


def _undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def put_back(worktree: Path, listed: Iterable[str], index: Tree, folders: Collection[str],
             inodes: Mapping[str, int]) -> PutBack:
    """Make ``worktree`` a checkout of its index again but for the files it returns deleted
    (to be written again from the index): ``listed`` are the entries whose ctime is not older
    than the worktree's clean point, ``index`` the index's listing, ``folders`` every folder
    of it, ``inodes`` the tracked folders' inodes at the clean point (:func:`folder_inodes`).
    Raises :class:`NotCoveredError` (the whole-tree reset then takes over) or :class:`OSError`."""
    names = sorted(listed, key=lambda rel: rel.count("/"))  # parents first
    tracked_folders = {"", *folders}
    gone: set[str] = set()  # removed whole: nothing below is looked at again
    deleted: list[str] = []
    subtrees: list[str] = []  # tracked folders removed whole: their files are written again
    children = _children(index, folders, [n for n in names if n in tracked_folders])

    def below_gone(rel: str) -> bool:
        parent = rel.rpartition("/")[0]
        while parent:
            if parent in gone:
                return True
            parent = parent.rpartition("/")[0]
        return False

    for rel in names:
        if below_gone(rel) or rel in gone:
            continue
        _readable(worktree, rel)
        path = worktree / rel if rel else worktree
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed above (a folder this walk compared)
        if rel and rel.rpartition("/")[2] == ".git":
            # git never checks out (nor lists, nor cleans) a .git below the top.
            _remove(path, st.st_mode)
            gone.add(rel)
        elif rel in tracked_folders:
            if not stat.S_ISDIR(st.st_mode) or inodes.get(rel) != st.st_ino:
                if not rel:
                    raise NotCoveredError(f"{worktree}: the top folder is not the one it was")
                _remove(path, st.st_mode)  # not the clean point's folder: whole
                gone.add(rel)
                subtrees.append(rel)
                continue
            restore_folder(path)
            _compare(worktree, rel, children[rel], gone, deleted, subtrees)
        elif rel in index:
            if index[rel].mode == _GITLINK:
                raise NotCoveredError(f"{worktree}: {rel} is a nested repository")
            _remove(path, st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                gone.add(rel)
            deleted.append(rel)
        else:
            _remove(path, st.st_mode)  # untracked: gone whole (git clean -ffdx would)
            gone.add(rel)
    if subtrees:
        prefixes = tuple(f"{rel}/" for rel in subtrees)
        deleted += [path for path in index if path.startswith(prefixes)]
    deleted = list(dict.fromkeys(deleted))
    for rel in deleted:
        _readable(worktree, rel)
        if index[rel].mode == _GITLINK:
            raise NotCoveredError(f"{worktree}: {rel} is a nested repository")
    return PutBack(deleted=deleted, listed=len(names))


def _compare(worktree: Path, folder: str, expected: dict[str, bool], gone: set[str],
             deleted: list[str], subtrees: list[str]) -> None:
    """The entries of a listed tracked folder (the clean point's own) against the index's:
    what the index does not hold there is deleted, what it holds and is missing or of the
    wrong kind (a folder for a file, anything but a folder for a folder) is to be written."""
    want = dict(expected)
    path = worktree / folder if folder else worktree
    with os.scandir(path) as entries:
        found = [(entry.name, entry.stat(follow_symlinks=False).st_mode) for entry in entries]
    for name, mode in found:
        if not folder and name == ".git":
            continue  # the worktree's own (the daemon checks it before every git call)
        rel = _join(folder, name)
        _readable(worktree, rel)
        is_folder = want.pop(name, None)
        if is_folder is None:
            _remove(path / name, mode)  # untracked here (a .git below the top included)
            gone.add(rel)
        elif is_folder and not stat.S_ISDIR(mode):
            _remove(path / name, mode)
            gone.add(rel)
            subtrees.append(rel)
        elif not is_folder and stat.S_ISDIR(mode):
            _remove(path / name, mode)
            gone.add(rel)
            deleted.append(rel)
        # Otherwise the kind the index holds: a listed one is put back in its own turn, one
        # not listed is the clean point's (every way to put an entry there moves its ctime).
    for name, is_folder in want.items():  # missing: deleted or renamed away
        rel = _join(folder, name)
        (subtrees if is_folder else deleted).append(rel)
