"""Reading trees from git's object store: a commit's tree, the staged tree, blob contents.

Verification decides on what will be committed, not on what the disk shows: the disk is the
model's (a symlink, a file hidden by ``.gitignore``), the index after ``git add -A`` is what
the batch's commit will hold, and the run's commits are what was accepted before. Every read
is bounded (``max_bytes`` per blob).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

from buildrunnerd.errors import WorkspaceError
from buildrunnerd.workspace._git import git

__all__ = ["Entry", "Tree", "Blobs", "commit_tree", "staged_tree", "read_blobs",
           "MAX_BLOB_BYTES", "REGULAR_MODES", "SYMLINK_MODE"]

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
    worktree's git options (``worktree_git``)."""
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
    return tree


async def staged_tree(cwd: Path, opts: Sequence[str] = (), *, timeout_s: float) -> Tree:
    """The index of the worktree ``cwd`` (what its next commit will hold)."""
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


async def read_blobs(cwd: Path, entries: Iterable[Entry], opts: Sequence[str] = (), *,
                     timeout_s: float, max_bytes: int = MAX_BLOB_BYTES) -> Blobs:
    """The contents of the regular-file and symlink blobs among ``entries``, in two git calls
    (sizes first, so no blob over ``max_bytes`` is ever read)."""
    shas = sorted({e.sha for e in entries if e.mode != "160000"})
    known: dict[str, bytes | None] = {}
    for sha in shas:
        content = _BLOB_CACHE.get(sha)
        if content is not None:
            known[sha] = content if len(content) <= max_bytes else None
    shas = [s for s in shas if s not in known]
    if not shas:
        return Blobs(known)
    fresh = await _read_blobs_from_git(cwd, shas, opts, timeout_s=timeout_s,
                                       max_bytes=max_bytes)
    for sha, content in fresh.items():
        if content is not None:
            _BLOB_CACHE.put(sha, content)
    return Blobs({**known, **fresh})


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
    res = await git([*opts, "cat-file", "--batch"], cwd=cwd, timeout_s=timeout_s,
                    input="".join(f"{s}\n" for s in wanted).encode(), what="reading blobs")
    out = res.stdout_bytes
    pos = 0
    for _ in wanted:
        header_end = out.index(b"\n", pos)
        sha, kind, size_text = out[pos:header_end].decode().split()
        size = int(size_text)
        start = header_end + 1
        if kind != "blob":
            raise WorkspaceError(f"git cat-file returned a {kind} for blob {sha}",
                                 data={"sha": sha})
        data[sha] = out[start:start + size]
        pos = start + size + 1  # the content is followed by one newline
    return data
