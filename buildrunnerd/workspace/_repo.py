"""The run repository: a run's own branch, its batch worktrees, and merges into the branch.

The user's checkout is never touched: the run branch is created with ``git branch`` (no
checkout), every batch works in a detached worktree under the state dir, and the branch only
moves by ``git update-ref`` with the expected old value, so nothing is ever forced.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import weakref
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import anyio
import msgspec
import structlog

from buildrunnerd.errors import RepoError, WorkspaceError
from buildrunnerd.plan._model import Task
from buildrunnerd.workspace._git import BOT_IDENTITY, git
from buildrunnerd.workspace._reuse import (
    FolderInodes,
    NotCoveredError,
    folder_inodes,
    put_back,
    rename_moves_ctime,
)
from buildrunnerd.workspace._sweep import remove_nested_dotgits
from buildrunnerd.workspace._touched import (
    CleanPoint,
    Touched,
    clean_point,
    find_touched,
    restore_folders,
    restore_touched,
)
from buildrunnerd.workspace._tree import (
    commit_tree,
    index_tree_id,
    known_tree_id,
    known_tree_shape,
    remember_commit_tree,
    remember_index_listing,
    remember_merge,
    same_entries,
    staged_tree,
    tree_shape,
    written_tree,
)
from buildrunnerd.workspace._workspace import BatchCommit
from buildrunnerd.workspace._worktree import forget_worktree, record_worktree, worktree_git

__all__ = [
    "RunRepo", "MergeResult", "prepare_run_repo", "cleanup_orphan_worktrees",
    "batch_commit_message", "BRANCH_PREFIX", "COMMIT_EXCLUDES", "stage_all",
]

BRANCH_PREFIX = "buildrunner/"
_log = structlog.get_logger("buildrunnerd.workspace")

# Byte-code and tool caches that verification (py_compile, pytest) may leave in a worktree.
# They are never part of a batch's work, so ``git add`` skips them even when the project has
# no .gitignore for them.
COMMIT_EXCLUDES = (
    ":(exclude,glob)**/__pycache__/**",
    ":(exclude,glob)**/*.pyc",
    ":(exclude,glob)**/.pytest_cache/**",
    ":(exclude,glob)**/.mypy_cache/**",
    ":(exclude,glob)**/.ruff_cache/**",
    ":(exclude,glob)**/.hypothesis/**",
)

# Where a run's base commit is remembered, so RunRepo.open works after a restart. A key in the
# branch's own config section disappears with the branch (``git branch -D``).
_BASE_KEY = "branch.{branch}.buildrunnerBase"

# git does not support concurrent worktree changes in one repository: `git worktree add` reads
# every entry of .git/worktrees and fails ("failed to read .git/worktrees/x/commondir") on one
# that another add is still writing, and `prune` may delete it. Every add, remove and prune of
# a repository is serialized by this lock, shared by all runs on that repository.
_WORKTREE_LOCKS: weakref.WeakValueDictionary[str, anyio.Lock] = weakref.WeakValueDictionary()


def _worktree_lock(repo: Path) -> anyio.Lock:
    key = os.path.realpath(repo)
    lock = _WORKTREE_LOCKS.get(key)
    if lock is None:
        lock = _WORKTREE_LOCKS[key] = anyio.Lock()
    return lock


# ``git merge-tree --write-tree`` (a merge computed in the object store, no worktree) arrived in
# git 2.38. With it a merge needs no worktree and so not the repository's worktree lock.
MERGE_TREE_MIN_VERSION = (2, 38)

# None: probe ``git version`` once per process. Tests set True/False to force a merge path.
_USE_MERGE_TREE: bool | None = None


async def _merge_tree_supported(cwd: Path, timeout_s: float) -> bool:
    """Whether this git has ``merge-tree --write-tree`` (probed once, then cached)."""
    global _USE_MERGE_TREE
    if _USE_MERGE_TREE is None:
        res = await git(["version"], cwd=cwd, timeout_s=timeout_s, check=False)
        match = re.search(r"(\d+)\.(\d+)", res.stdout) if res.ok else None
        version = (int(match[1]), int(match[2])) if match else (0, 0)
        _USE_MERGE_TREE = version >= MERGE_TREE_MIN_VERSION
    return _USE_MERGE_TREE


# How often a merge is retried when the run branch moved between reading it and updating it.
_MAX_REF_RACES = 3

# Idle worktrees a run keeps for reuse (about its worker count; more are removed).
_MAX_IDLE_WORKTREES = 16


async def _gitlinks(worktree: Path, opts: Sequence[str], *, timeout_s: float) -> list[str]:
    """The paths of the nested repositories (gitlinks, mode 160000) in the worktree's index
    (its listing, shared with the batch's checks: :func:`._tree.staged_tree`)."""
    listed = await staged_tree(worktree, opts, timeout_s=timeout_s)
    return sorted(path for path, entry in listed.items() if entry.mode == "160000")


async def stage_all(worktree: Path, opts: Sequence[str], *, timeout_s: float,
                    what: str) -> None:
    """``git add -A`` of the worktree as a batch's commit takes it: caches excluded, and never
    a nested repository already in the index. Looking at one, ``git add`` runs ``git status``
    inside it, and that reads the nested repository's own config, whose filters the model
    chose: they would run unconfined. (A new nested repository is recorded once, by reading
    its HEAD, which runs nothing.)"""
    links = [f":(exclude,literal){path}"
             for path in await _gitlinks(worktree, opts, timeout_s=timeout_s)]
    await git([*opts, "add", "-A", "--", ".", *COMMIT_EXCLUDES, *links], cwd=worktree,
              timeout_s=timeout_s, what=what)


class MergeResult(msgspec.Struct):
    """The outcome of :meth:`RunRepo.commit_and_merge`.

    ``merged`` with ``commit=None`` means the batch changed nothing (nothing to commit; the run
    branch is unchanged). ``merged=False`` means the merge conflicted: ``conflict_files`` lists
    the paths, ``commit`` is the batch's own (unmerged) commit, and the run branch is unchanged.
    """

    merged: bool
    commit: str | None = None
    conflict_files: list[str] = []
    fast_forward: bool = False
    previous: str | None = None  # the branch's head before the merge (for a rollback)
    tree: str | None = None  # the tree id of ``commit`` (as git reported making it)


def batch_commit_message(run_id: str, batch_id: str, tasks: Sequence[Task]) -> str:
    """The commit message of a batch: names the run, the batch and every task."""
    titles = ", ".join(t.id for t in tasks) or "no tasks"
    lines = [f"buildrunner {run_id} {batch_id}: {titles}", ""]
    lines += [f"- {t.id}: {t.title}" for t in tasks]
    lines += ["", f"BuildRunner-Run: {run_id}", f"BuildRunner-Batch: {batch_id}"]
    return "\n".join(lines) + "\n"


class RunRepo:
    """A repository and the branch one run works on.

    Make one with :func:`prepare_run_repo` (new run) or :meth:`RunRepo.open` (after a restart).
    Merges into the branch are serialized by a lock held by this object: use one ``RunRepo`` per
    run. Even so the branch is only moved with a compare-and-swap, so a second writer can never
    make a merge silently drop work.
    """

    def __init__(
        self, repo: Path, branch: str, base_commit: str, *, timeout_s: float = 60.0
    ) -> None:
        self.repo = repo
        self.branch = branch
        self.base_commit = base_commit
        self.timeout_s = timeout_s
        self._merge_lock = anyio.Lock()
        self._worktree_lock = _worktree_lock(repo)  # held here: the registry is weak
        # Worktrees of finished batches, kept to be reset for the next one (see
        # acquire_worktree): a batch then costs the size of its change, not of the tree.
        self._idle: list[Path] = []
        # The commit each just-acquired worktree was reset to (or made at): the daemon's own
        # record, so reading it back costs no git call (see worktree_head).
        self._started: dict[Path, str] = {}
        # Each worktree's clean point (see _touched.clean_point): the file system's clock
        # when it was last as a checkout writes it; what changed since is put back at reuse.
        self._clean: dict[Path, CleanPoint] = {}
        # Each worktree's tracked folders at its clean point, by inode (see _reuse).
        self._folders: dict[Path, FolderInodes] = {}
        self._made = 0
        self.max_idle = _MAX_IDLE_WORKTREES
        # The branch's head as this object last read or moved it (a hint only: every move is
        # a compare-and-swap, so a stale hint costs one failed update-ref, never work).
        self._head_hint: str | None = None
        # Set while a batch's fast-forward is about to move the branch (see merge_coming).
        self._fast_forward: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"RunRepo(repo={str(self.repo)!r}, branch={self.branch!r})"

    @property
    def ref(self) -> str:
        return f"refs/heads/{self.branch}"

    @classmethod
    async def open(
        cls, repo: Path, branch: str, *, base_commit: str | None = None, timeout_s: float = 60.0
    ) -> RunRepo:
        """Re-open a run's repository after a restart. The branch must still exist; its base
        commit is read back from the repository config when not given."""
        repo = Path(repo)
        if not await anyio.Path(repo).is_dir():
            raise RepoError(
                f"{repo}: the run's repository is gone (it held branch {branch})",
                data={"repo": str(repo), "reason": "missing"},
            )
        res = await git(
            ["rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
            cwd=repo, timeout_s=timeout_s, check=False, error=RepoError,
        )
        if not res.ok:
            raise RepoError(
                f"{repo}: branch {branch} no longer exists; was it deleted? Submit the spec "
                "again to start a new run",
                data={"repo": str(repo), "reason": "branch_missing", "branch": branch},
            )
        if base_commit is None:
            cfg = await git(
                ["config", "--get", _BASE_KEY.format(branch=branch)],
                cwd=repo, timeout_s=timeout_s, check=False, error=RepoError,
            )
            base_commit = cfg.stdout.strip() or res.stdout.strip()
        return cls(repo, branch, base_commit, timeout_s=timeout_s)

    async def head(self) -> str:
        """The run branch's current commit."""
        res = await git(
            ["rev-parse", "--verify", self.ref], cwd=self.repo, timeout_s=self.timeout_s,
            what=f"reading branch {self.branch}",
        )
        self._head_hint = res.stdout.strip()
        return self._head_hint

    async def worktree_head(self, worktree: Path) -> str:
        """The commit a worktree is at (before a batch commits: the commit it started from,
        which :func:`verify` takes as ``base_commit``). For a worktree :meth:`acquire_worktree`
        just handed out, the commit it put it at (the first call only)."""
        started = self._started.pop(Path(worktree), None)
        if started is not None:
            return started
        opts = await worktree_git(Path(worktree), timeout_s=self.timeout_s)
        res = await git([*opts, "rev-parse", "HEAD"], cwd=Path(worktree),
                        timeout_s=self.timeout_s,
                        what=f"reading the commit of worktree {worktree}")
        return res.stdout.strip()

    async def add_worktree(self, root: Path, name: str, commit: str | None = None) -> Path:
        """A fresh worktree at ``root/name`` of ``commit`` (default: the run branch's current
        head), detached, so the branch itself is never checked out anywhere. A leftover at
        that path is removed."""
        path = Path(root) / name
        await anyio.Path(root).mkdir(parents=True, exist_ok=True)
        # Only the daemon's uid may reach a worktree: what the model writes there is its
        # (a root daemon's sandbox can leave a setuid-root program there; see docs/security.md).
        await anyio.Path(root).chmod(0o700)
        if await anyio.Path(path).exists():
            await self.remove_worktree(path)
        await _add_worktree(self.repo, path, commit or self.ref, timeout_s=self.timeout_s,
                            what=f"creating worktree {path}")
        await self._record_folders(path, commit or self.ref)
        self._clean[path] = await clean_point(Path(root))
        return path

    async def _record_folders(self, path: Path, commit: str) -> None:
        """The inode of each tracked folder of ``path``, a checkout of ``commit`` right now:
        what the next reuse compares a changed folder with (:mod:`._reuse`)."""
        shape = known_tree_shape(commit)
        if shape is None:
            shape = tree_shape(await commit_tree(self.repo, commit, timeout_s=self.timeout_s),
                               known_tree_id(commit))
        self._folders[path] = await anyio.to_thread.run_sync(
            folder_inodes, path, shape.folders)

    def clean_since(self, worktree: Path) -> CleanPoint | None:
        """The clean point of a worktree this run made (see :mod:`._touched`), or None: a
        copy, which verification's restore moves on. The reuse keeps its own, the last time
        the worktree was exactly a checkout: verification's restore leaves untracked files
        where they are, so only from there does the list hold everything that differs."""
        clean = self._clean.get(Path(worktree))
        return None if clean is None else CleanPoint(clean.ns)

    async def rollback(self, commit: str, previous: str) -> bool:
        """Move the branch back from ``commit`` to ``previous`` (a merge whose head failed
        verification), with the same compare-and-swap as a merge: False when the branch is no
        longer at ``commit``, and then nothing is changed."""
        async with self._merge_lock:
            res = await git(
                ["update-ref", "-m", "buildrunner: roll back a merge that broke the branch",
                 self.ref, previous, commit],
                cwd=self.repo, timeout_s=self.timeout_s, check=False,
            )
            if res.ok:
                self._head_hint = previous
            return res.ok

    async def remove_worktree(self, path: Path) -> None:
        """Remove a worktree (with any uncommitted changes) and forget it in git."""
        self._started.pop(Path(path), None)
        self._clean.pop(Path(path), None)
        self._folders.pop(Path(path), None)
        await _remove_worktree(self.repo, Path(path), timeout_s=self.timeout_s)

    async def acquire_worktree(self, root: Path, *, at: str | None = None) -> Path:
        """A worktree at the run branch's current head (or at the commit ``at``), for one
        batch attempt or one check of the branch.

        An idle worktree of this run (see :meth:`release_worktree`) is put back as the head's
        checkout from the list of what changed since its clean point (:mod:`._reuse`), or,
        for anything that list does not cover, reset whole (``git reset --hard``, ``git clean
        -ffdx``, which then must show no change at all); one whose ``.git`` was rewritten, or
        that does not come back clean, is removed instead. Otherwise a new worktree is made.
        Every name is new (``w<n>-<random>``), so a conversation resumed after a restart
        always sees that its worktree moved."""
        while self._idle:
            path = self._idle.pop()
            head = at or await self._settled_head()
            try:
                touched = await self._find_touched(path)  # before git writes anything
                await self._reset_worktree(path, head, touched)
            except WorkspaceError as exc:
                _log.warning("worktree.reuse_refused", path=str(path), error=str(exc))
                await self.remove_worktree(path)
                continue
            self._started[path] = head
            return path
        self._made += 1
        head = at or await self._settled_head()
        path = await self.add_worktree(Path(root), f"w{self._made}-{secrets.token_hex(3)}",
                                       head)
        self._started[path] = head
        return path

    async def _settled_head(self) -> str:
        """The run branch's head, once a fast-forward about to move it has (one
        ``update-ref``): the batch that gave its worker back just before its merge would
        otherwise hand the next batch the head before it, and that batch's own merge would
        then be a real one (``merge-tree``, ``commit-tree``, and ``read-tree`` at the next
        reset) instead of a fast-forward."""
        moving = self._fast_forward
        if moving is not None:
            with anyio.move_on_after(self.timeout_s):
                await moving.wait()
        return await self.head()

    @contextmanager
    def merge_coming(self, made: BatchCommit) -> Iterator[None]:
        """Around a merge of ``made`` that starts now, with nothing ahead of it: when it will
        fast-forward the branch (its parent is the head as last seen), a worktree acquired
        meanwhile waits for that move and starts from the new head. The wait ends when the
        branch has moved (or not), never after the branch's check."""
        if (made.commit is None or made.parent is None or made.parent != self._head_hint
                or self._fast_forward is not None):
            yield
            return
        self._fast_forward = anyio.Event()
        try:
            yield
        finally:
            self._moved()

    def _moved(self) -> None:
        if self._fast_forward is not None:
            self._fast_forward.set()
            self._fast_forward = None

    async def release_worktree(self, path: Path, *, reuse: bool = True) -> None:
        """The batch is done with ``path``: keep it for the next batch (``reuse``, and room in
        the pool), else remove it."""
        self._started.pop(Path(path), None)
        if reuse and len(self._idle) < self.max_idle and await anyio.Path(path).is_dir():
            self._idle.append(Path(path))
        else:
            await self.remove_worktree(path)

    async def close(self) -> None:
        """Remove the idle worktrees (the run has ended): all gone when this returns."""
        idle, self._idle = self._idle, []
        for path in idle:
            self._started.pop(path, None)
            self._clean.pop(path, None)
            self._folders.pop(path, None)
        await _remove_worktrees(self.repo, idle, timeout_s=self.timeout_s)

    def _clean_point_of(self, path: Path) -> CleanPoint:
        clean = self._clean.get(path)
        if clean is None:
            raise WorkspaceError(f"worktree {path}: not made by this run (no clean point); not "
                                 "reused", data={"worktree": str(path)})
        return clean

    async def _find_touched(self, path: Path) -> Touched:
        """Before the reset: what changed since the worktree's clean point (the batch's work,
        its tests), with the inodes, so the files the reset then writes anew are known."""
        return await find_touched(path, root=path.parent, clean=self._clean_point_of(path))

    async def _restore_touched(self, path: Path, touched: Touched) -> None:
        """After the whole-tree reset: what the batch changed that git does not see and did
        not write again (mode bits, mtimes, links, attributes, FIFOs, sockets, empty folders)
        put back as a checkout writes it (:func:`._touched.restore_touched`); the clean point
        moves."""
        t = self.timeout_s
        opts = await worktree_git(path, timeout_s=t)
        await restore_touched(path, opts, root=path.parent, clean=self._clean_point_of(path),
                              tracked=await staged_tree(path, opts, timeout_s=t), timeout_s=t,
                              touched=touched)

    async def _reset_worktree(self, path: Path, head: str, touched: Touched) -> None:
        """Put ``path`` back as a checkout of ``head``: from the list of what changed
        (``touched``, listed before any git call) when it covers everything
        (:meth:`_reset_by_list`), else the whole tree (``reset --hard``, ``clean -ffdx``, a
        status that must be empty, then what git does not see put back from the list)."""
        t = self.timeout_s
        opts = await worktree_git(path, timeout_s=t)  # raises when .git was rewritten
        if await self._reset_by_list(path, head, opts, touched):
            return
        # The touched folders as a checkout makes them before git writes into them: a file
        # the reset writes takes its folder's default ACL and group.
        await restore_folders(path, touched)
        try:
            # git never lists, cleans or commits an entry named .git below the top, so one
            # the model left (a file naming the user's repository, a repository in a tracked
            # folder) would outlive reset and clean: removed first, before git looks at the
            # folders, in every folder (links not followed).
            await anyio.to_thread.run_sync(remove_nested_dotgits, path)
        except (OSError, RecursionError) as exc:
            raise WorkspaceError(f"worktree {path}: cannot remove a .git the batch left "
                                 f"({exc}); not reused", data={"worktree": str(path)}) from exc
        await git([*opts, "reset", "--quiet", "--hard", head], cwd=path, timeout_s=t,
                  what=f"resetting worktree {path} for the next batch")
        await git([*opts, "clean", "-ffdxq"], cwd=path, timeout_s=t, check=False)
        # A nested repository (a gitlink) keeps its own content and config across reset and
        # clean, and checking it would run `git status` inside it, with its config: filters
        # and textconv drivers the model chose, unconfined. Such a worktree is never reused,
        # and the check never looks into one.
        if await _gitlinks(path, opts, timeout_s=t):
            raise WorkspaceError(f"worktree {path} holds a nested repository: not reused",
                                 data={"worktree": str(path)})
        left = await git([*opts, "status", "--porcelain", "--ignored", "--untracked-files=all",
                          "--ignore-submodules=all"],
                         cwd=path, timeout_s=t, what=f"checking worktree {path} is clean")
        if left.stdout.strip():
            raise WorkspaceError(
                f"worktree {path} is not clean after reset and clean: "
                f"{left.stdout.strip().splitlines()[0]}", data={"worktree": str(path)})
        await self._restore_touched(path, touched)
        await self._record_folders(path, head)

    async def _reset_by_list(self, path: Path, head: str, opts: Sequence[str],
                             touched: Touched) -> bool:
        """Put ``path`` back as a checkout of ``head`` from ``touched`` alone (every entry
        whose ctime is not older than its clean point): True when done, False to reset the
        whole tree (with what was put back so far left so).

        1. :func:`._reuse.put_back` makes the worktree its index's checkout but for the
           tracked files it deleted: untracked entries and every ``.git`` below the top
           deleted, the listed tracked files deleted, the listed tracked folders compared
           with the index's and given a checkout's mode.
        2. ``read-tree -m -u`` moves the index and the files from the index's tree to
           ``head``'s, writing only the paths where the two differ (a deleted file is none
           of its business: git finds it missing, which it allows); not run when the index
           already holds ``head``'s tree (the batch's own commit was fast-forwarded, or the
           worktree was reset to ``head`` for the branch's check).
        3. ``checkout-index -f -u`` writes the deleted files ``head`` holds as the index did
           (read-tree wrote the others, or removed them).
        4. The worktree's ``HEAD`` is moved with ``update-ref``; the tracked folders' inodes
           and the clean point are taken anew.

        Not taken (False) where the list cannot tell everything: a file system whose rename
        keeps a ctime, a nested repository in either tree, anything :func:`put_back` does not
        expect, a failed step."""
        t = self.timeout_s
        inodes = self._folders.get(path)
        if inodes is None or not await rename_moves_ctime(path.parent):
            return False
        index = await staged_tree(path, opts, timeout_s=t)
        target = await commit_tree(self.repo, head, timeout_s=t)
        held, target_id = index_tree_id(opts), known_tree_id(head)
        shape, target_shape = tree_shape(index, held), tree_shape(target, target_id)
        if shape.gitlinks or target_shape.gitlinks:
            return False
        try:
            done = await anyio.to_thread.run_sync(
                put_back, path, touched, index, shape.folders, inodes)
        except (OSError, NotCoveredError, RecursionError) as exc:
            # RecursionError: shutil.rmtree of a folder nested deeper than Python's stack
            # (git's clean, in C, removes it).
            _log.info("worktree.reset_whole", path=str(path), why=repr(exc))
            return False
        rewrite = done.deleted
        # Asked again: the index must still be the one that held it (nothing above wrote it;
        # anything else that did makes the id unknown).
        if held is None or held != target_id or index_tree_id(opts) != held:
            moved = await git([*opts, "read-tree", "-m", "-u", head], cwd=path, timeout_s=t,
                              check=False)
            if not moved.ok:
                return False
            remember_index_listing(opts, target, target_id)
            rewrite = [rel for rel in rewrite
                       if rel in target and index.get(rel) == target[rel]]
        else:
            remember_index_listing(opts, target, target_id)
        if rewrite:
            # -u: the index's stat data becomes the new files', so the next look (a
            # read-tree, a status) finds them as the index records them.
            with same_entries(opts):
                written = await git(
                    [*opts, "checkout-index", "-f", "-u", "-z", "--stdin"], cwd=path,
                    timeout_s=t, check=False,
                    input=b"\0".join(os.fsencode(rel) for rel in rewrite))
            if not written.ok:
                return False
        await git([*opts, "update-ref", "--no-deref", "HEAD", head], cwd=path, timeout_s=t,
                  what=f"moving worktree {path} to {head[:12]} for the next batch")
        self._folders[path] = await anyio.to_thread.run_sync(
            folder_inodes, path, target_shape.folders)
        # After the update-ref (one process): what git wrote above is most often in an
        # earlier tick of the file system's clock, so the next list does not hold it.
        self._clean_point_of(path).ns = (await clean_point(path.parent)).ns
        return True

    async def commit_and_merge(self, worktree: Path, message: str, *,
                               verified_from: str | None = None) -> MergeResult:
        """Commit everything in ``worktree`` and merge it into the run branch: :meth:`commit_batch`
        then :meth:`merge_batch` (a merge worktree, on git < 2.38, goes beside ``worktree``)."""
        made = await self.commit_batch(worktree, message, verified_from=verified_from)
        return await self.merge_batch(made, merge_root=Path(worktree).parent)

    async def commit_batch(self, worktree: Path, message: str, *,
                           verified_from: str | None = None) -> BatchCommit:
        """Commit everything in ``worktree``, not merged yet (:meth:`merge_batch`); after this
        the worktree may be reused (the commit is in the repository's objects, on no branch).

        With ``verified_from`` (the commit the worktree started from, given when the batch's
        verification passed) the commit holds exactly the tree verification staged, checked
        and wrote, when the worktree's index is still the one it wrote (:func:`written_tree`):
        ``commit-tree`` of that tree, no new staging, so nothing the disk holds now and
        verification did not see can enter the commit. Otherwise everything in the worktree
        is staged and committed. ``commit=None``: nothing to commit.
        """
        worktree = Path(worktree)
        t = self.timeout_s
        # Checked (and computed) before every call: the model's bash runs until the batch
        # ends, and its .git must not redirect the daemon's git.
        opts = await worktree_git(worktree, timeout_s=t)
        tree = written_tree(opts) if verified_from is not None else None
        if verified_from is not None and tree is not None:
            parent = verified_from
            parent_tree = known_tree_id(parent)
            if parent_tree is None:
                res = await git(["rev-parse", f"{parent}^{{tree}}"], cwd=self.repo,
                                timeout_s=t, what=f"reading the tree of {parent[:12]}")
                parent_tree = res.stdout.strip()
            if parent_tree == tree:
                return BatchCommit(message=message)
            made = await git([*BOT_IDENTITY, "commit-tree", tree, "-p", parent, "-F", "-"],
                             cwd=self.repo, timeout_s=t, what="committing the batch",
                             input=(message.rstrip() + "\n").encode())
            commit = made.stdout.strip()
        else:
            await stage_all(worktree, opts, timeout_s=t, what="staging the batch's changes")
            staged = await git([*opts, "diff", "--cached", "--quiet"], cwd=worktree,
                               timeout_s=t, check=False)
            if staged.returncode == 0:
                return BatchCommit(message=message)
            if staged.returncode != 1:
                raise WorkspaceError(
                    f"`git diff --cached --quiet` failed in {worktree}: "
                    f"{staged.stderr.strip()}", data={"worktree": str(worktree)},
                )
            await git([*BOT_IDENTITY, *opts, "commit", "--quiet", "--no-verify", "-m", message],
                      cwd=worktree, timeout_s=t, what="committing the batch")
            res = await git([*opts, "rev-parse", "HEAD", "HEAD~1", "HEAD^{tree}"],
                            cwd=worktree, timeout_s=t)
            commit, parent, tree = res.stdout.split()
        remember_commit_tree(commit, tree)
        return BatchCommit(commit=commit, parent=parent, tree=tree, message=message)

    async def merge_batch(self, made: BatchCommit, *, merge_root: Path) -> MergeResult:
        """Merge a batch's commit (:meth:`commit_batch`) into the run branch.

        Fast-forward when the branch has not moved since the batch's worktree was made;
        otherwise a real merge: in the object store with ``git merge-tree --write-tree`` (git
        >= 2.38, no worktree), else in a private, temporary merge worktree under
        ``merge_root``. A conflict is reported (``merged=False`` with the files); nothing is
        ever forced. The batch's own worktree is not needed (it may already be reused)."""
        try:
            return await self._merge_batch(made, merge_root=merge_root)
        finally:
            self._moved()  # a batch waiting for this move starts now (see merge_coming)

    async def _merge_batch(self, made: BatchCommit, *, merge_root: Path) -> MergeResult:
        commit, parent, tree, message = made.commit, made.parent, made.tree, made.message
        if commit is None or parent is None:
            return MergeResult(merged=True, commit=None)
        async with self._merge_lock:
            # Most often the branch has not moved since the worktree was made: try the
            # fast-forward first (a compare-and-swap from the parent), and read the branch
            # only when it had moved.
            hint = self._head_hint
            if parent == hint and await self._move_branch(commit, parent, check_head=False):
                return MergeResult(merged=True, commit=commit, fast_forward=True,
                                   previous=parent, tree=tree)
            for attempt in range(_MAX_REF_RACES):
                # Where this object last saw or moved the branch, unless that was just
                # refused; the compare-and-swap below refuses a stale one too.
                head = hint if attempt == 0 and hint is not None and hint != parent \
                    else await self.head()
                # The batch's commit has one parent: the branch can be fast-forwarded to it
                # only from that parent. (A branch moved back to an older ancestor, from
                # outside, gets a merge commit of the same tree instead.)
                if head == parent:
                    if await self._move_branch(commit, head):
                        return MergeResult(merged=True, commit=commit, fast_forward=True,
                                           previous=head, tree=tree)
                    continue
                if await _merge_tree_supported(self.repo, self.timeout_s):
                    result = await self._merge_in_objects(commit, head, message)
                else:
                    result = await self._merge(Path(merge_root), commit, head, message)
                if not result.merged or result.commit is None:
                    return result
                if await self._move_branch(result.commit, head):
                    return msgspec.structs.replace(result, previous=head)
        raise WorkspaceError(
            f"{self.repo}: branch {self.branch} kept moving while merging {commit[:12]}; is "
            "another process writing to it? Stop it and retry the task",
            data={"repo": str(self.repo), "branch": self.branch, "commit": commit},
        )

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` is ``descendant`` or one of its ancestors."""
        return await self._is_ancestor(ancestor, descendant)

    async def _is_ancestor(self, ancestor: str, descendant: str) -> bool:
        res = await git(["merge-base", "--is-ancestor", ancestor, descendant],
                        cwd=self.repo, timeout_s=self.timeout_s, check=False)
        if res.returncode not in (0, 1):
            raise WorkspaceError(
                f"`git merge-base --is-ancestor` failed in {self.repo}: {res.stderr.strip()}",
                data={"repo": str(self.repo)},
            )
        return res.returncode == 0

    async def _move_branch(self, new: str, old: str, *, check_head: bool = True) -> bool:
        """Compare-and-swap the branch from ``old`` to ``new``; False if it had moved.
        Without ``check_head`` any failure is False (the caller reads the branch next)."""
        res = await git(
            ["update-ref", "-m", "buildrunner: merge batch", self.ref, new, old],
            cwd=self.repo, timeout_s=self.timeout_s, check=False,
        )
        if res.ok:
            self._head_hint = new
            return True
        if not check_head or (await self.head()) != old:
            return False
        raise WorkspaceError(
            f"`git update-ref {self.ref}` failed in {self.repo}: {res.stderr.strip()}",
            data={"repo": str(self.repo), "branch": self.branch},
        )

    async def _merge_in_objects(self, commit: str, head: str, message: str) -> MergeResult:
        """Merge ``commit`` into ``head`` without a worktree (git >= 2.38): ``merge-tree
        --write-tree`` computes the merged tree, ``commit-tree`` makes the merge commit. The
        branch is not moved here (the caller's compare-and-swap does that)."""
        t = self.timeout_s
        res = await git(
            ["merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", head, commit],
            cwd=self.repo, timeout_s=t, check=False,
        )
        # -z: the tree id, then (exit 1 only) each conflicted path once, all NUL-terminated.
        fields = [f for f in res.stdout.split("\0") if f]
        if res.returncode not in (0, 1) or not fields:
            raise WorkspaceError(
                f"`git merge-tree {head[:12]} {commit[:12]}` failed in {self.repo} (exit "
                f"{res.returncode}): {(res.stderr or res.stdout).strip() or '(no output)'}",
                data={"repo": str(self.repo), "commit": commit},
            )
        tree, files = fields[0], sorted(set(fields[1:]))
        if res.returncode == 1:
            if not files:
                raise WorkspaceError(
                    f"`git merge-tree` reported a conflict merging {commit[:12]} in "
                    f"{self.repo} without naming a file; retry the task",
                    data={"repo": str(self.repo), "commit": commit},
                )
            return MergeResult(merged=False, commit=commit, conflict_files=files)
        merged = await git(
            [*BOT_IDENTITY, "commit-tree", tree, "-p", head, "-p", commit,
             "-m", _merge_message(message, commit)],
            cwd=self.repo, timeout_s=t, what=f"committing the merge of {commit[:12]}",
        )
        remember_merge(merged.stdout.strip(), head)
        # The next batch starts from this merge: its commit compares with the tree by id.
        remember_commit_tree(merged.stdout.strip(), tree)
        return MergeResult(merged=True, commit=merged.stdout.strip(), tree=tree)

    async def _merge(self, root: Path, commit: str, head: str, message: str) -> MergeResult:
        """Merge ``commit`` into ``head`` in a private merge worktree under ``root`` (git <
        2.38, which has no ``merge-tree --write-tree``; one merge of a run at a time)."""
        t = self.timeout_s
        merge_dir = root / f".merge-{commit[:12]}"
        if await anyio.Path(merge_dir).exists():
            await _remove_worktree(self.repo, merge_dir, timeout_s=t)
        await _add_worktree(self.repo, merge_dir, head, timeout_s=t,
                            what="creating the merge worktree")
        try:
            res = await git(
                [*BOT_IDENTITY, "merge", "--no-ff", "--no-edit", "--no-verify",
                 "-m", _merge_message(message, commit), commit],
                cwd=merge_dir, timeout_s=t, check=False,
            )
            if not res.ok:
                conflicts = await git(["diff", "--name-only", "--diff-filter=U", "-z"],
                                      cwd=merge_dir, timeout_s=t, check=False)
                files = sorted(f for f in conflicts.stdout.split("\0") if f)
                await git(["merge", "--abort"], cwd=merge_dir, timeout_s=t, check=False)
                if not files:
                    raise WorkspaceError(
                        f"`git merge {commit[:12]}` failed in {merge_dir} without a conflict: "
                        f"{(res.stderr or res.stdout).strip()}",
                        data={"repo": str(self.repo), "commit": commit},
                    )
                return MergeResult(merged=False, commit=commit, conflict_files=files)
            merged = await git(["rev-parse", "HEAD"], cwd=merge_dir, timeout_s=t)
            return MergeResult(merged=True, commit=merged.stdout.strip())
        finally:
            # Shielded: a cancelled batch must not leave the merge worktree registered.
            with anyio.CancelScope(shield=True):
                await _remove_worktree(self.repo, merge_dir, timeout_s=t)


def _merge_message(message: str, commit: str) -> str:
    first_line = message.strip().splitlines()[0] if message.strip() else commit[:12]
    return f"Merge {first_line}"


async def prepare_run_repo(
    repo: Path, run_id: str, *, allow_dirty: bool = False, timeout_s: float = 60.0
) -> RunRepo:
    """Check that ``repo`` can host a run and create the branch ``buildrunner/<run_id>`` at its
    HEAD, without checking it out. Raises :class:`RepoError` saying what is wrong and the fix:
    not a repository, no commits, detached HEAD, uncommitted changes (unless ``allow_dirty``;
    untracked files never count: the run starts from HEAD and never sees them)."""
    repo = Path(await anyio.Path(repo).expanduser())

    def fail(reason: str, message: str) -> RepoError:
        return RepoError(f"{repo}: {message}", data={"repo": str(repo), "reason": reason})

    if not await anyio.Path(repo).is_dir():
        raise fail("missing", "no such folder; pass --repo with an existing git repository")
    top = await git(["rev-parse", "--show-toplevel"], cwd=repo, timeout_s=timeout_s,
                    check=False, error=RepoError)
    if not top.ok:
        raise fail(
            "not_a_repository",
            "not a git repository; run `git init && git add -A && git commit -m init` there, "
            "or pass --repo with a repository",
        )
    root = Path(top.stdout.strip())
    head = await git(["rev-parse", "--verify", "-q", "HEAD"], cwd=root, timeout_s=timeout_s,
                     check=False, error=RepoError)
    if not head.ok:
        raise fail("no_commits", "the repository has no commits yet; make a first commit "
                   "(`git commit --allow-empty -m init`) and submit again")
    symbolic = await git(["symbolic-ref", "-q", "HEAD"], cwd=root, timeout_s=timeout_s,
                         check=False, error=RepoError)
    if not symbolic.ok:
        raise fail("detached_head", "HEAD is detached; check out a branch "
                   "(`git switch <branch>`) and submit again")
    if not allow_dirty:
        status = await git(["status", "--porcelain", "--untracked-files=no"], cwd=root,
                           timeout_s=timeout_s, error=RepoError, what="checking for changes")
        if status.stdout.strip():
            changed = [line[3:] for line in status.stdout.splitlines()][:5]
            raise fail(
                "dirty",
                "uncommitted changes in " + ", ".join(changed)
                + "; commit or stash them first, or submit with --allow-dirty (the run starts "
                "from HEAD and ignores them)",
            )
    branch = BRANCH_PREFIX + run_id
    base_commit = head.stdout.strip()
    created = await git(["branch", "--no-track", branch, base_commit], cwd=root,
                        timeout_s=timeout_s, check=False, error=RepoError)
    if not created.ok:
        raise fail("branch_exists" if "already exists" in created.stderr else "branch_failed",
                   f"cannot create branch {branch}: {created.stderr.strip()}; delete it "
                   f"(`git branch -D {branch}`) or use another run id")
    await git(["config", _BASE_KEY.format(branch=branch), base_commit], cwd=root,
              timeout_s=timeout_s, error=RepoError, what="recording the run's base commit")
    return RunRepo(root, branch, base_commit, timeout_s=timeout_s)


async def _add_worktree(
    repo: Path, path: Path, commit: str, *, timeout_s: float, what: str
) -> None:
    async with _worktree_lock(repo):
        await git(["worktree", "add", "--detach", "--quiet", str(path), commit],
                  cwd=repo, timeout_s=timeout_s, what=what)
    # Before anything runs in it: where its git directory is, as git itself just made it.
    res = await git(["rev-parse", "--absolute-git-dir"], cwd=path, timeout_s=timeout_s,
                    what=f"reading the git directory of worktree {path}")
    await record_worktree(path, res.stdout.strip(), repo=repo, timeout_s=timeout_s)


async def _remove_worktree(repo: Path, path: Path, *, timeout_s: float) -> None:
    forget_worktree(path)
    async with _worktree_lock(repo):
        # --force twice: a failed batch's worktree has uncommitted changes (the batch's own),
        # and a crashed one may still be locked.
        res = await git(["worktree", "remove", "--force", "--force", str(path)], cwd=repo,
                        timeout_s=timeout_s, check=False)
        if await anyio.Path(path).exists():
            # Not a registered worktree (or git could not remove it): delete the folder and
            # let ``prune`` drop any registration left behind.
            await anyio.to_thread.run_sync(shutil.rmtree, path, True)
        if not res.ok:
            await git(["worktree", "prune"], cwd=repo, timeout_s=timeout_s,
                      what=f"forgetting worktree {path}")


async def _remove_worktrees(repo: Path, paths: Sequence[Path], *, timeout_s: float) -> None:
    """Remove several worktrees at once: their folders deleted side by side, each in a worker
    thread, then ONE ``git worktree prune`` forgets every registration whose folder is gone,
    instead of a ``git worktree remove`` each, one after the other under the repository's
    worktree lock. (``shutil.rmtree`` never follows a link the model left; what it cannot
    delete is an orphan the next start removes, as after a failed ``remove``.)"""
    if not paths:
        return
    for path in paths:
        forget_worktree(path)
    async with anyio.create_task_group() as tg:
        for path in paths:
            tg.start_soon(partial(anyio.to_thread.run_sync, shutil.rmtree, path, True))
    async with _worktree_lock(repo):
        await git(["worktree", "prune"], cwd=repo, timeout_s=timeout_s,
                  what=f"forgetting {len(paths)} removed worktree(s)")


async def cleanup_orphan_worktrees(
    repo: Path, root: Path, keep: Collection[Path | str] = frozenset(), *, timeout_s: float = 60.0
) -> list[Path]:
    """Remove every folder under ``root`` not in ``keep`` (paths, or names under ``root``):
    the worktrees a crash left behind. Then ``git worktree prune``. Returns what was removed.
    A repository that no longer exists is skipped (the folders are still deleted)."""
    root = Path(root)
    repo = Path(repo)
    if not await anyio.Path(root).is_dir():
        return []

    def orphans() -> list[Path]:
        kept = {os.path.realpath(root / k if isinstance(k, str) else k) for k in keep}
        return sorted(e for e in root.iterdir()
                      if e.is_dir() and os.path.realpath(e) not in kept)

    removed: list[Path] = []
    repo_ok = await anyio.Path(repo).is_dir()
    for entry in await anyio.to_thread.run_sync(orphans):
        if repo_ok:
            await _remove_worktree(repo, entry, timeout_s=timeout_s)
        else:
            await anyio.to_thread.run_sync(shutil.rmtree, entry, True)
        removed.append(entry)
    if repo_ok:
        async with _worktree_lock(repo):
            await git(["worktree", "prune"], cwd=repo, timeout_s=timeout_s,
                      what="pruning stale worktrees")
    return removed
