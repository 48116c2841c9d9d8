"""Reading trees from git's object store: a commit's tree, the staged tree, blob contents.

Verification decides on what will be committed, not on what the disk shows: the disk is the
model's (a symlink, a file hidden by ``.gitignore``), the index after ``git add -A`` is what
the batch's commit will hold, and the run's commits are what was accepted before. Every read
is bounded (``max_bytes`` per blob).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec

from buildrunnerd.errors import WorkspaceError
from buildrunnerd.workspace._git import git

__all__ = ["MAX_BLOB_BYTES", "REGULAR_MODES", "SYMLINK_MODE", "Blobs", "Entry", "Tree",
           "TreeShape", "cat_blobs", "commit_tree", "index_tree_id", "known_tree_id",
           "known_tree_shape",
           "read_blobs", "remember_commit_tree", "remember_index_listing", "remember_merge",
           "split_cached", "staged_tree", "tree_shape", "write_tree", "written_tree"]

MAX_BLOB_BYTES = 1024 * 1024  # a source file larger than this is not parsed
REGULAR_MODES = frozenset({"100644", "100755"})
SYMLINK_MODE = "120000"


class Entry(msgspec.Struct, frozen=True):
    """One file of a tree: its git mode (``100644``, ``120000``, ...) and blob id."""

    mode: str
    sha: str

    @property
    def regular(self) -> bool:
        return self.mode in REGULAR_MODES


Tree = dict[str, Entry]  # repository-relative POSIX path -> entry


class Blobs:
    """Blob contents by id, read in bulk. ``text(entry)`` is None for a blob that was too
    large, missing or not UTF-8."""

    def __init__(self, data: Mapping[str, bytes | None]) -> None:
        self._data = dict(data)

    def update(self, other: Blobs) -> None:
        self._data.update(other._data)

    def raw(self, entry: Entry | None) -> bytes | None:
        return None if entry is None else self._data.get(entry.sha)

    def text(self, entry: Entry | None) -> str | None:
        raw = self.raw(entry)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None


async def commit_tree(cwd: Path, commit: str, opts: Sequence[str] = (), *,
                      timeout_s: float) -> Tree:
    """Every file of ``commit`` (recursively), read from the object store. ``opts``: the
    worktree's git options (``worktree_git``). A commit whose tree the daemon wrote itself
    (:func:`write_tree`, then :func:`remember_commit_tree`) is not listed again: a batch
    starting where the last one ended costs no whole-tree read."""
    known = _known_listing(commit)
    if known is not None:
        return dict(known)
    parent = _MERGE_PARENTS.get(commit)
    parent_tree = _known_listing(parent) if parent is not None else None
    if parent is not None and parent_tree is not None:
        return await _merged_tree(cwd, commit, parent, parent_tree, opts, timeout_s=timeout_s)
    res = await git([*opts, "ls-tree", "-r", "-z", "--full-tree", commit], cwd=cwd,
                    timeout_s=timeout_s, what=f"listing the files of commit {commit[:12]}")
    tree: Tree = {}
    for record in res.stdout.split("\0"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        mode, kind, sha = meta.split(" ")
        if kind in ("blob", "commit"):  # a submodule is listed as a commit
            tree[path] = Entry(mode, sha)
    _remember_listing(commit, tree)
    return tree


def _known_listing(commit: str) -> Tree | None:
    return _TREES.get(_COMMIT_TREES.get(commit, "")) or _LISTED_COMMITS.get(commit)


def _remember_listing(commit: str, tree: Tree) -> None:
    if _FULL_ID.match(commit):  # a commit id names its tree (a ref name can move)
        if len(_LISTED_COMMITS) >= _MAX_TREES:
            _LISTED_COMMITS.pop(next(iter(_LISTED_COMMITS)))
        _LISTED_COMMITS[commit] = dict(tree)


async def _merged_tree(cwd: Path, commit: str, parent: str, parent_tree: Tree,
                       opts: Sequence[str], *, timeout_s: float) -> Tree:
    """The listing of a merge ``commit`` the daemon made on ``parent``, whose listing is
    known: the parent's, changed by what the merge changed (a read the size of the change,
    not of the tree)."""
    res = await git([*opts, "diff-tree", "-r", "-z", "--raw", "--no-renames", "--no-abbrev",
                     "--no-textconv", "--no-ext-diff", parent, commit],
                    cwd=cwd, timeout_s=timeout_s,
                    what=f"listing the changes of merge {commit[:12]}")
    tree = dict(parent_tree)
    # -z: ":<old mode> <new mode> <old sha> <new sha> <status>\0<path>\0" per change.
    fields = res.stdout.split("\0")
    for header, path in zip(fields[0::2], fields[1::2], strict=False):
        parts = header.lstrip(":").split()
        if len(parts) != 5:
            raise WorkspaceError(f"unexpected `git diff-tree` output for {commit[:12]}: "
                                 f"{header[:200]!r}", data={"commit": commit})
        _old_mode, new_mode, _old_sha, new_sha, status = parts
        if status.startswith("D"):
            tree.pop(path, None)
        else:
            tree[path] = Entry(new_mode, new_sha)
    _remember_listing(commit, tree)
    return tree


def remember_merge(commit: str, first_parent: str) -> None:
    """``commit`` is a merge the daemon made on ``first_parent``: its listing can be derived
    from the parent's (:func:`commit_tree`)."""
    if len(_MERGE_PARENTS) >= _MAX_TREES * 4:
        _MERGE_PARENTS.clear()
    _MERGE_PARENTS[commit] = first_parent


async def staged_tree(cwd: Path, opts: Sequence[str] = (), *, timeout_s: float) -> Tree:
    """The index of the worktree ``cwd`` (what its next commit will hold).

    One listing serves every check of a batch: it is kept with the index file's checksum
    and handed out again (a copy) while the index is byte for byte the one listed. The
    index is read by the daemon's git from the git directory the daemon recorded (``opts``),
    never through the worktree's files."""
    index = _index_path(opts)
    key = _index_key(index) if index is not None else None
    if index is not None and key is not None:
        cached = _LISTINGS.get(index)
        if cached is not None and cached[0] == key:
            return dict(cached[1])
    base = _BASES.get(index) if index is not None else None
    tree = None
    if base is not None:
        tree = await _listing_from_base(cwd, opts, *base, timeout_s=timeout_s)
    if tree is None:
        tree = await _list_index(cwd, opts, timeout_s=timeout_s)
    # Kept only when the index did not change while git read it.
    if index is not None and key is not None and _index_key(index) == key:
        if len(_LISTINGS) >= _MAX_LISTINGS and index not in _LISTINGS:
            _LISTINGS.clear()
        _LISTINGS[index] = (key, dict(tree))
    return tree


async def _list_index(cwd: Path, opts: Sequence[str], *, timeout_s: float) -> Tree:
    res = await git([*opts, "ls-files", "-s", "-z"], cwd=cwd, timeout_s=timeout_s,
                    what="listing the staged files")
    tree: Tree = {}
    for record in res.stdout.split("\0"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        mode, sha, _stage = meta.split(" ")
        tree[path] = Entry(mode, sha)
    return tree


async def _listing_from_base(cwd: Path, opts: Sequence[str], base_id: str, base: Tree, *,
                             timeout_s: float) -> Tree | None:
    """The index's listing as the tree ``base_id`` it held before (whose listing is
    ``base``) changed by what ``diff-index --cached`` reports between the two: the size of
    the change (a batch's staging), not of the tree. None when git reports anything but
    added, modified, type-changed and deleted entries (an unmerged index): list it whole.
    Every option that a configuration could change is given: all nested repositories
    compared, no renames, full ids."""
    res = await git([*opts, "diff-index", "--cached", "--raw", "-z", "--no-renames",
                     "--no-abbrev", "--ignore-submodules=none", "--no-textconv",
                     "--no-ext-diff", base_id, "--"],
                    cwd=cwd, timeout_s=timeout_s, check=False,
                    what="listing the staged changes")
    if not res.ok:
        return None
    tree = dict(base)
    # -z: ":<old mode> <new mode> <old sha> <new sha> <status>\0<path>\0" per change.
    fields = res.stdout.split("\0")
    if fields[-1:] != [""] or len(fields) % 2 != 1:
        return None
    for header, path in zip(fields[0:-1:2], fields[1::2], strict=True):
        parts = header.lstrip(":").split(" ")
        if not header.startswith(":") or len(parts) != 5:
            return None
        _old_mode, new_mode, _old_sha, new_sha, status = parts
        if status == "D":
            tree.pop(path, None)
        elif status in ("A", "M", "T"):
            tree[path] = Entry(new_mode, new_sha)
        else:
            return None
    return tree


def _remember_base(index: str, tree_id: str, tree: Tree) -> None:
    if len(_BASES) >= _MAX_BASES and index not in _BASES:
        _BASES.clear()
    _BASES[index] = (tree_id, tree)


async def write_tree(cwd: Path, opts: Sequence[str] = (), *, timeout_s: float) -> str:
    """``git write-tree`` of the worktree's index: the id of the tree its next commit will
    hold. The index's listing (:func:`staged_tree`) stays shared across the call (git only
    records the tree ids in the index, never changes an entry), and becomes the listing of
    that tree id (:func:`commit_tree`)."""
    index = _index_path(opts)
    before = _index_key(index) if index is not None else None
    cached = _LISTINGS.get(index) if index is not None else None
    res = await git([*opts, "write-tree"], cwd=cwd, timeout_s=timeout_s,
                    what="recording the staged tree")
    tree_id = res.stdout.strip()
    after = _index_key(index) if index is not None else None
    if index is not None and before is not None and cached is not None and cached[0] == before:
        if after is not None:
            _LISTINGS[index] = (after, cached[1])
        if len(_TREES) >= _MAX_TREES:
            _TREES.pop(next(iter(_TREES)))
        _TREES[tree_id] = cached[1]
        _remember_base(index, tree_id, cached[1])
    if index is not None and after is not None and after == _index_key(index):
        if len(_WRITTEN) >= _MAX_LISTINGS and index not in _WRITTEN:
            _WRITTEN.clear()
        _WRITTEN[index] = (after, tree_id)
    return tree_id


def written_tree(opts: Sequence[str]) -> str | None:
    """The tree id :func:`write_tree` last returned for the index of ``opts`` (its
    ``--git-dir``), when that index file is still byte for byte the one it wrote from; None
    when the index changed since (any git call that staged, reset or refreshed it) or was
    never written. The index lives in the git directory the daemon recorded, which the
    worktree's content cannot reach."""
    index = _index_path(opts)
    if index is None:
        return None
    written = _WRITTEN.get(index)
    if written is None or _index_key(index) != written[0]:
        return None
    return written[1]


def remember_index_listing(opts: Sequence[str], tree: Tree, tree_id: str | None = None) -> None:
    """The index of ``opts`` was just made, by the daemon's own git, to hold exactly
    ``tree`` (``read-tree`` of a listed commit, whose tree id is ``tree_id`` when known):
    :func:`staged_tree` hands it out, and :func:`index_tree_id` names it, until the index
    changes."""
    index = _index_path(opts)
    key = _index_key(index) if index is not None else None
    if index is None or key is None:
        return
    if len(_LISTINGS) >= _MAX_LISTINGS and index not in _LISTINGS:
        _LISTINGS.clear()
    listing = dict(tree)
    _LISTINGS[index] = (key, listing)
    _WRITTEN.pop(index, None)
    _HELD.pop(index, None)
    if tree_id is not None:
        if len(_HELD) >= _MAX_LISTINGS:
            _HELD.clear()
        _HELD[index] = (key, tree_id)
        _remember_base(index, tree_id, listing)


def index_tree_id(opts: Sequence[str]) -> str | None:
    """The id of the tree the index of ``opts`` holds, when the daemon's own git made it
    so and the index file is still byte for byte that one: the tree :func:`write_tree`
    wrote from it, or the tree ``read-tree`` read into it (:func:`remember_index_listing`).
    None otherwise."""
    written = written_tree(opts)
    if written is not None:
        return written
    index = _index_path(opts)
    held = _HELD.get(index) if index is not None else None
    if index is None or held is None or _index_key(index) != held[0]:
        return None
    return held[1]


@contextmanager
def same_entries(opts: Sequence[str]) -> Iterator[None]:
    """Inside this block the daemon's own git rewrites the index of ``opts`` without changing
    an entry (``checkout-index -u`` records the stat data of the files it wrote): what was
    known of the index before (its listing, its tree id) stays known after."""
    index = _index_path(opts)
    key = _index_key(index) if index is not None else None
    listing = _LISTINGS.get(index) if index is not None else None
    written = _WRITTEN.get(index) if index is not None else None
    held = _HELD.get(index) if index is not None else None
    yield
    new = _index_key(index) if index is not None else None
    if index is None or key is None or new is None:
        return
    if listing is not None and listing[0] == key:
        _LISTINGS[index] = (new, listing[1])
    if written is not None and written[0] == key:
        _WRITTEN[index] = (new, written[1])
    if held is not None and held[0] == key:
        _HELD[index] = (new, held[1])


class TreeShape(msgspec.Struct, frozen=True):
    """What a listing holds beside its files: every folder (each ancestor of a listed path;
    the top itself, ``""``, is not one), and whether any entry is a nested repository (a
    gitlink, mode 160000)."""

    folders: frozenset[str]
    gitlinks: bool


def tree_shape(tree: Tree, tree_id: str | None = None) -> TreeShape:
    """The :class:`TreeShape` of ``tree``. With ``tree_id`` (the id git gave that tree) it is
    kept for the next call: a batch starting where the last one ended asks for the same tree
    twice, and each new tree costs one pass over its paths."""
    if tree_id is not None:
        known = _SHAPES.get(tree_id)
        if known is not None:
            return known
    parents = {path.rpartition("/")[0] for path in tree}
    folders: set[str] = set()
    for folder in parents:
        while folder and folder not in folders:
            folders.add(folder)
            folder = folder.rpartition("/")[0]
    shape = TreeShape(frozenset(folders), "160000" in {e.mode for e in tree.values()})
    if tree_id is not None:
        if len(_SHAPES) >= _MAX_TREES:
            _SHAPES.pop(next(iter(_SHAPES)))
        _SHAPES[tree_id] = shape
    return shape


def known_tree_shape(commit: str) -> TreeShape | None:
    """The :class:`TreeShape` of a commit the daemon made (its tree id known) when that
    tree's shape or listing is already held; None otherwise (no git call, no listing read
    here: the caller asks git)."""
    tree_id = known_tree_id(commit)
    if tree_id is None:
        return None
    shape = _SHAPES.get(tree_id)
    if shape is not None:
        return shape
    listing = _known_listing(commit)
    return tree_shape(listing, tree_id) if listing is not None else None


def remember_commit_tree(commit: str, tree_id: str) -> None:
    """``commit`` (made by the daemon's git) has the tree ``tree_id``, as git reported."""
    if len(_TREE_IDS) >= _MAX_TREES * 4:
        _TREE_IDS.clear()
    _TREE_IDS[commit] = tree_id
    if tree_id in _TREES:
        if len(_COMMIT_TREES) >= _MAX_TREES * 4:
            _COMMIT_TREES.clear()
        _COMMIT_TREES[commit] = tree_id


def known_tree_id(commit: str) -> str | None:
    """The tree id of a commit the daemon made (:func:`remember_commit_tree`), or None."""
    return _TREE_IDS.get(commit)


# Listings of trees the daemon wrote (tree id -> listing; a tree id names its content, so an
# entry is never stale), and the commits made of them. A few: about one per worker.
_TREES: dict[str, Tree] = {}
_COMMIT_TREES: dict[str, str] = {}
_TREE_IDS: dict[str, str] = {}  # every commit the daemon made -> its tree id
_MAX_TREES = 16
# Commits listed with ls-tree (commit id -> listing): a batch's checks and its secret scan
# compare with the same commit.
_LISTED_COMMITS: dict[str, Tree] = {}
_MERGE_PARENTS: dict[str, str] = {}  # a merge the daemon made -> its first parent
_FULL_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")

# The last listing of each index: index file -> (its key, the listing).
_LISTINGS: dict[str, tuple[tuple[int, int, bytes], Tree]] = {}
_MAX_LISTINGS = 64
# The tree id each index was last written as (index file -> (its key after, tree id)).
_WRITTEN: dict[str, tuple[tuple[int, int, bytes], str]] = {}
# The tree each index was last made to hold by read-tree (index file -> (its key, tree id)).
_HELD: dict[str, tuple[tuple[int, int, bytes], str]] = {}
# The last tree each index was known to hold, and its listing (index file -> (tree id,
# listing)): once the index changes (a batch's staging), its listing is that one changed by
# what `diff-index --cached` reports. About one per worker: a listing is the whole tree.
_BASES: dict[str, tuple[str, Tree]] = {}
_MAX_BASES = 32
# The shape of a tree (tree id -> its shape; a tree id names its content).
_SHAPES: dict[str, TreeShape] = {}
_TRAILER_BYTES = 32  # the index's closing checksum (SHA-1: 20 bytes, SHA-256: 32)


def _index_path(opts: Sequence[str]) -> str | None:
    """The index file git uses with ``opts`` (its ``--git-dir``); None without one."""
    git_dir = None
    for flag, value in zip(opts, opts[1:], strict=False):
        if flag == "--git-dir":
            git_dir = value
    return os.path.join(git_dir, "index") if git_dir else None


def _index_key(index: str) -> tuple[int, int, bytes] | None:
    """The index file's inode, size and closing checksum (git writes a checksum of the whole
    file at its end, and every write renames a new file into place); None when it cannot be
    read or carries no checksum (``index.skipHash``)."""
    try:
        fd = os.open(index, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size < _TRAILER_BYTES:
            return None
        trailer = os.pread(fd, _TRAILER_BYTES, st.st_size - _TRAILER_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not trailer[-20:].strip(b"\0"):
        return None
    return (st.st_ino, st.st_size, trailer)


async def read_blobs(cwd: Path, entries: Iterable[Entry], opts: Sequence[str] = (), *,
                     timeout_s: float, max_bytes: int = MAX_BLOB_BYTES) -> Blobs:
    """The contents of the regular-file and symlink blobs among ``entries``, in two git calls
    (sizes first, so no blob over ``max_bytes`` is ever read)."""
    cached, shas = split_cached(sorted({e.sha for e in entries if e.mode != "160000"}))
    known: dict[str, bytes | None] = {
        sha: content if len(content) <= max_bytes else None for sha, content in cached.items()}
    if not shas:
        return Blobs(known)
    fresh = await _read_blobs_from_git(cwd, shas, opts, timeout_s=timeout_s,
                                       max_bytes=max_bytes)
    for sha, content in fresh.items():
        if content is not None:
            _BLOB_CACHE.put(sha, content)
    return Blobs({**known, **fresh})


def split_cached(shas: Iterable[str]) -> tuple[dict[str, bytes], list[str]]:
    """``shas`` split into the contents a bulk read (:func:`read_blobs`) already holds, and
    the ids still to read from git (in the given order)."""
    known: dict[str, bytes] = {}
    unread: list[str] = []
    for sha in shas:
        content = _BLOB_CACHE.get(sha)
        if content is None:
            unread.append(sha)
        else:
            known[sha] = content
    return known, unread


async def cat_blobs(cwd: Path, shas: Sequence[str], opts: Sequence[str] = (), *,
                    timeout_s: float, what: str = "reading blobs") -> dict[str, bytes]:
    """The contents of ``shas`` (every one a blob, its size already checked), in one
    ``git cat-file --batch``."""
    if not shas:
        return {}
    res = await git([*opts, "cat-file", "--batch"], cwd=cwd, timeout_s=timeout_s,
                    input="".join(f"{s}\n" for s in shas).encode(), what=what)
    out = res.stdout_bytes
    data: dict[str, bytes] = {}
    pos = 0
    for _ in shas:
        header_end = out.index(b"\n", pos)
        sha, kind, size_text = out[pos:header_end].decode().split()
        if kind != "blob":
            raise WorkspaceError(f"git cat-file returned a {kind} for blob {sha} in {cwd}",
                                 data={"sha": sha, "cwd": str(cwd)})
        start = header_end + 1
        size = int(size_text)
        data[sha] = out[start:start + size]
        pos = start + size + 1  # the content is followed by one newline
    return data


class _BlobCache:
    """Blob contents by id, bounded by bytes, in two generations (the older dropped when the
    newer is full). A blob id names its content, so an entry is never stale: every batch of a
    run reads the protected tests of the whole accepted tree, and without this read all of
    them from git again (issue 13: a batch's cost must follow its change)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._new: dict[str, bytes] = {}
        self._old: dict[str, bytes] = {}
        self._size = 0

    def get(self, sha: str) -> bytes | None:
        content = self._new.get(sha)
        if content is None:
            content = self._old.get(sha)
            if content is not None:
                self.put(sha, content)
        return content

    def put(self, sha: str, content: bytes) -> None:
        if sha in self._new or len(content) > self.max_bytes // 8:
            return
        if self._size + len(content) > self.max_bytes // 2:
            self._old, self._new, self._size = self._new, {}, 0
        self._new[sha] = content
        self._size += len(content)


_BLOB_CACHE = _BlobCache(64 * 1024 * 1024)


async def _read_blobs_from_git(cwd: Path, shas: list[str], opts: Sequence[str], *,
                               timeout_s: float, max_bytes: int) -> dict[str, bytes | None]:
    check = await git([*opts, "cat-file", "--batch-check"], cwd=cwd, timeout_s=timeout_s,
                      input="".join(f"{s}\n" for s in shas).encode(),
                      what="sizing blobs")
    wanted: list[str] = []
    data: dict[str, bytes | None] = {}
    for line in check.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob" and int(parts[2]) <= max_bytes:
            wanted.append(parts[0])
        elif parts:
            data[parts[0]] = None
    if not wanted:
        return data
    data.update(await cat_blobs(cwd, wanted, opts, timeout_s=timeout_s))
    return data
