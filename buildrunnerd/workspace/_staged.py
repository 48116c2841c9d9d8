"""What a batch will commit, read from git's object store, and its secret scan.

The scan runs after every other check (files the tests wrote are included) over the staged
tree, which is exactly what the batch's commit will hold. Contents are raw blobs: the index's
listing compared with the batch's start commit names them (the listings the batch's checks
already read: :mod:`._tree`), and ``git cat-file --batch`` reads those the checks did not,
so no ``.gitattributes`` (``-diff``, ``binary``, a textconv) can turn a file into "Binary
files differ".
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Collection, Sequence
from pathlib import Path

import anyio

from buildrunnerd.config._model import VerifyConfig
from buildrunnerd.workspace._allowlist import load_allowlist
from buildrunnerd.workspace._git import git
from buildrunnerd.workspace._repo import stage_all
from buildrunnerd.workspace._secrets import MAX_FINDINGS, SecretFinding, StagedChange, scan_commit
from buildrunnerd.workspace._tree import Tree, cat_blobs, commit_tree, split_cached, staged_tree
from buildrunnerd.workspace._worktree import worktree_git

__all__ = ["read_staged_changes", "scan_staged", "SCAN_MAX_BLOB_BYTES",
           "SCAN_MAX_TOTAL_BYTES"]

#: A staged file larger than this is not read: it fails the scan as ``unscanned_file``.
SCAN_MAX_BLOB_BYTES = 16 * 1024 * 1024
#: Staged bytes scanned per verification at most; files past it are ``unscanned_file``.
SCAN_MAX_TOTAL_BYTES = 256 * 1024 * 1024
# Blob bytes read by one ``cat-file --batch`` call and scanned in one go at most: memory, and
# how long a cancelled batch waits for the scanning thread (seconds, not minutes).
_GROUP_BYTES = 16 * 1024 * 1024
_NULL_SHA = "0" * 40
_GITLINK = "160000"


class _Entry:
    __slots__ = ("path", "new_sha", "old_sha")

    def __init__(self, path: str, new_sha: str, old_sha: str | None) -> None:
        self.path = path
        self.new_sha = new_sha
        self.old_sha = old_sha


def _changes(before: Tree, after: Tree, paths: Collection[str] | None = None) -> list[_Entry]:
    """The files of ``after`` (the index) that are new or differ (content or mode) from
    ``before`` (the start commit), in path order; nested repositories (gitlinks) are not
    files. Deleted files add no line. ``paths``: where the two differ, when known (else
    every path of ``after`` is compared)."""
    entries: list[_Entry] = []
    items = (((p, after[p]) for p in sorted(paths) if p in after) if paths is not None
             else after.items())
    for path, new in items:
        if new.mode == _GITLINK or new.sha == _NULL_SHA:
            continue
        old = before.get(path)
        if old == new:
            continue
        old_sha = old.sha if old is not None and old.mode != _GITLINK else None
        entries.append(_Entry(path, new.sha, old_sha))
    return entries


async def _sizes(worktree: Path, options: Sequence[str], shas: Sequence[str],
                 timeout_s: float) -> dict[str, int]:
    known, unknown = split_cached(shas)
    sizes = {sha: len(content) for sha, content in known.items()}
    if not unknown:
        return sizes
    res = await git([*options, "cat-file", "--batch-check"], cwd=worktree, timeout_s=timeout_s,
                    input="".join(f"{s}\n" for s in unknown).encode(),
                    what="sizing the staged files")
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob":
            sizes[parts[0]] = int(parts[2])
    return sizes


async def _blobs(worktree: Path, options: Sequence[str], shas: Sequence[str],
                 timeout_s: float) -> dict[str, bytes]:
    blobs, unread = split_cached(shas)
    blobs.update(await cat_blobs(worktree, unread, options, timeout_s=timeout_s,
                                 what="reading the staged files"))
    return blobs


async def read_staged_changes(
    worktree: Path,
    base_commit: str,
    *,
    timeout_s: float,
    git_options: Sequence[str] = (),
    max_blob_bytes: int = SCAN_MAX_BLOB_BYTES,
    max_total_bytes: int = SCAN_MAX_TOTAL_BYTES,
    changed: Collection[str] | None = None,
) -> AsyncGenerator[list[StagedChange], None]:
    """The files staged in ``worktree`` that differ from ``base_commit``, new content and
    old, in groups that bound the memory held at once. A blob over ``max_blob_bytes``, and
    every blob once ``max_total_bytes`` were read, is not read (``new=None``).
    ``git_options`` go before every git subcommand: the daemon's own ``--git-dir``/
    ``--work-tree`` and driver overrides (:func:`._worktree.worktree_git`). ``changed``: the
    paths where the index differs from ``base_commit``, as git's diff of this very index
    reported them (verification's own), so no pass over the whole listing is needed."""
    options = list(git_options)
    # The listings the batch's checks read (no git call when the index and the start
    # commit are the ones they listed).
    before = await commit_tree(worktree, base_commit, options, timeout_s=timeout_s)
    after = await staged_tree(worktree, options, timeout_s=timeout_s)
    entries = _changes(before, after, changed)
    if not entries:
        return
    shas = sorted({e.new_sha for e in entries} | {e.old_sha for e in entries if e.old_sha})
    sizes = await _sizes(worktree, options, shas, timeout_s)
    unread = {sha for sha, size in sizes.items() if size > max_blob_bytes}
    group: list[_Entry] = []
    group_bytes = total_bytes = 0
    for entry in entries:
        size = sizes.get(entry.new_sha, 0) + sizes.get(entry.old_sha or "", 0)
        total_bytes += size
        if total_bytes > max_total_bytes:
            # Past the total: named, not read (each becomes an unscanned_file finding).
            unread.add(entry.new_sha)
            size = 0
        if group and group_bytes + size > _GROUP_BYTES:
            yield await _read_group(worktree, options, group, sizes, unread, timeout_s)
            group, group_bytes = [], 0
        group.append(entry)
        group_bytes += size
    if group:
        yield await _read_group(worktree, options, group, sizes, unread, timeout_s)


async def _read_group(worktree: Path, options: Sequence[str], group: Sequence[_Entry],
                      sizes: dict[str, int], unread: set[str], timeout_s: float
                      ) -> list[StagedChange]:
    def wanted_sha(sha: str | None) -> bool:
        return sha is not None and sha in sizes and sha not in unread

    wanted = sorted({e.new_sha for e in group if wanted_sha(e.new_sha)}
                    | {e.old_sha for e in group if e.old_sha and wanted_sha(e.old_sha)})
    blobs = await _blobs(worktree, options, wanted, timeout_s)
    return [
        StagedChange(path=e.path, new=blobs.get(e.new_sha),
                     old=blobs.get(e.old_sha) if e.old_sha else None,
                     size_bytes=sizes.get(e.new_sha, 0))
        for e in group
    ]


async def scan_staged(
    worktree: Path,
    *,
    base_commit: str,
    run_base_commit: str,
    config: VerifyConfig,
    timeout_s: float,
    git_options: Sequence[str] | None = None,
    stage: bool = True,
    changed: Collection[str] | None = None,
) -> list[SecretFinding]:
    """Stage everything the commit will hold (again, unless ``stage`` is false because the
    caller found nothing to stage: the tests may have written files) and scan it against
    ``base_commit`` (the batch's start), with the allowlist of ``run_base_commit`` (the
    run's start, see :mod:`._allowlist`). Every git call uses ``git_options`` (default:
    :func:`._worktree.worktree_git`, which also refuses a worktree whose ``.git`` was
    rewritten). ``changed`` (only with ``stage=False``): the paths where the index differs
    from ``base_commit``, from git's diff of this index (see :func:`read_staged_changes`)."""
    if stage:
        changed = None  # staging again may change the index
    options = (list(git_options) if git_options is not None
               else await worktree_git(worktree, timeout_s=timeout_s))
    if stage:
        await stage_all(worktree, options, timeout_s=timeout_s,
                        what="staging changes for the secret scan")
    allow = await load_allowlist(worktree, run_base_commit, config, timeout_s=timeout_s,
                                 git_options=options)
    findings: list[SecretFinding] = []
    groups = read_staged_changes(worktree, base_commit, timeout_s=timeout_s,
                                 git_options=options, changed=changed)
    async with contextlib.aclosing(groups):
        async for group in groups:
            # CPU-bound (about 0.3 s per MB of text): off the event loop.
            findings += await anyio.to_thread.run_sync(scan_commit, group, allow)
            if len(findings) >= MAX_FINDINGS:
                break
    return findings[:MAX_FINDINGS]
