"""Watch a worktree while the agent works and report the files it creates or modifies.

One inotify instance (``inotify_simple``) watches each real folder of the tree on its own:
the kernel queues an event for every write as the write happens, so what a batch costs
follows its change, not its tree. Nothing walks or stats the tree's files at entry or at
exit. At entry the owner names the folders (a git workspace lists its head's trees) or the
monitor lists them; at exit the events still queued are read to the end (a write in the last
millisecond before the exit is in the queue), so no change is lost to a debounce window.

The model controls the tree, so the monitor follows no symlink: each folder is opened with
``O_NOFOLLOW``, from its parent's open fd (``openat``: the owner's named folders in one walk,
and down a new subtree) or component by component from the root
(:func:`~buildrunnerd.sandbox.open_directory_in`: the root, a chain deeper than the walk
holds), and the watch is put on that open folder (``/proc/self/fd/N``), never on a path
that a swap for a link could redirect; a committed ``link -> /`` is an entry of the tree,
never a folder to watch or walk. Every reported path is checked with
:func:`~buildrunnerd.sandbox.lstat_in` (no symlink on the way), which also drops events from
a folder swapped for a symlink after it was watched.

A new folder is watched first and listed second (files written into it before the watch are
found by the listing, later ones send events; each is reported once). If the kernel's queue
overflows (``IN_Q_OVERFLOW``: events were dropped) or a folder cannot be watched (no inotify
watch or instance left), the monitor watches what it can and, at exit, asks the owner's exact
view of the change (``rescan``: a git workspace runs ``git status``) or, without one, compares
the tree with the snapshot it then took at entry.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple

import anyio
import inotify_simple
from anyio.abc import TaskGroup, TaskStatus
from watchfiles import Change, DefaultFilter

from buildrunnerd.sandbox import WorktreePathError, lstat_in, open_directory_in

__all__ = ["ChangeKind", "FileMonitor", "OnChange", "Rescan"]

ChangeKind = Literal["created", "modified"]
OnChange = Callable[[ChangeKind, str], Awaitable[None]]
# The owner's exact view of what changed since entry (kind, path relative to the root).
Rescan = Callable[[], Awaitable[Iterable[tuple[ChangeKind, str]]]]
# What a report is made of: a file replaced, re-moded, rewritten or touched (ctime cannot be
# forged: a file written and given back its old mtime still differs).
_State = tuple[int, int, int, int, int]  # (inode, mode, size, mtime_ns, ctime_ns)

_IN = inotify_simple.flags
# On each folder: what creates an entry or changes a file. Deletions are not reported.
_MASK = (_IN.CREATE | _IN.MODIFY | _IN.CLOSE_WRITE | _IN.ATTRIB | _IN.MOVED_TO
         | _IN.ONLYDIR | _IN.EXCL_UNLINK)
_NEW_ENTRY = _IN.CREATE | _IN.MOVED_TO
_PROC_FD = Path("/proc/self/fd")
# inotify is Linux's: elsewhere (macOS under launchd) the monitor reports at exit only, from
# the owner's exact view or the snapshot, as when no inotify instance is left.
_HAS_INOTIFY = sys.platform.startswith("linux")
# Folders held open at once by the entry's walk (one a level): a deeper chain is watched
# folder by folder from the root instead.
_MAX_HELD_FOLDERS = 32
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class _Event(NamedTuple):
    wd: int
    mask: int
    name: str


class FileMonitor:
    """Async context manager: while open, ``await on_change(kind, relpath)`` for every file
    created or modified under ``path``.

    Changes are debounced (grouped until ``step_ms`` pass without a new one, for at most
    ``debounce_ms``; a file created and then written within one group is reported once, as
    ``created``). ``.git``, byte-code and tool caches are ignored (watchfiles' default
    filter); deletions are not reported. An exception raised by ``on_change`` propagates out
    of the ``async with`` block. A symlink is reported as an entry of the tree (it is what
    git commits), never followed.

    ``folders``: the tree's folders at entry, relative to ``path`` (a git worktree at its
    head: the head's trees); None lists them. ``rescan``: the owner's exact list of what
    changed since entry, used only when inotify dropped events; None makes the monitor take
    a snapshot of the tree at entry instead (a walk with a ``stat`` of every file).

    A normal exit reads every event still queued and reports what it names, once: changes
    still inside the debounce window are never lost. A name that is not UTF-8 is reported
    with its bytes escaped (``caf\\xe9.py``): events are JSON.
    """

    def __init__(
        self,
        path: Path,
        on_change: OnChange,
        *,
        debounce_ms: int = 200,
        step_ms: int = 50,
        folders: Sequence[str] | None = None,
        rescan: Rescan | None = None,
    ) -> None:
        self.path = Path(path).resolve()
        self._root_text = str(self.path)
        self.on_change = on_change
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self._folders = folders
        self._rescan = rescan
        self._filter = DefaultFilter()
        # A folder of one of these names: the filter keeps no path below it (it drops every
        # path with such a component).
        self._ignored_dirs = frozenset(self._filter.ignore_dirs)
        self._inotify: inotify_simple.INotify | None = None
        self._watched: dict[int, str] = {}  # watch descriptor -> folder (relative, "." root)
        self._pending: list[_Event] = []  # read, not yet reported
        self._known: dict[str, _State] = {}  # the state of each file when last reported
        self._snapshot: dict[str, _State] | None = None  # at entry, when there is no rescan
        self._degraded = False  # events were dropped: the exit asks the exact view
        self._closing = False
        self._wait_scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None

    @property
    def events_dropped(self) -> bool:
        """Whether inotify dropped events (a full queue, no watch left for a folder) while
        the monitor was open: its exit then took the exact view (``rescan`` or the
        snapshot)."""
        return self._degraded

    async def __aenter__(self) -> FileMonitor:
        if _HAS_INOTIFY:
            try:
                self._inotify = inotify_simple.INotify(nonblocking=True)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                    raise
        # No inotify (another system, or no instance left): the exit's exact view only.
        self._degraded = self._inotify is None
        try:
            await anyio.to_thread.run_sync(self._watch_tree)
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            self._close_inotify()
            raise
        try:
            await self._tg.start(self._run)
        except BaseException:
            self._stop_waiting()
            await self._tg.__aexit__(None, None, None)
            self._close_inotify()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        # The watch loop finishes the group it is reporting (if any) and returns; what it
        # had read but not reported stays pending for the catch-up below.
        self._stop_waiting()
        tg, self._tg = self._tg, None
        try:
            suppress = await tg.__aexit__(exc_type, exc, tb)
            if exc_type is None:
                await self._catch_up()
        finally:
            # Closing an inotify instance waits for the kernel to drop each watch (several
            # ms of wall time with a few hundred folders, no CPU): off the loop, and shielded
            # so a cancelled exit does not leak the descriptor.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_inotify)
        return suppress

    def _stop_waiting(self) -> None:
        self._closing = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    def _close_inotify(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    async def _catch_up(self) -> None:
        """At exit: every event still queued (the writes are done: the kernel queued their
        events as they happened), then, if events were dropped, the exact view."""
        self._pending += self._read()
        await self._report_pending()
        if not self._degraded:
            return
        if self._rescan is not None:
            # A file reported live and changed again since is "modified", whatever git says.
            changes = sorted({rel: "modified" if rel in self._known else kind
                              for kind, rel in await self._rescan()}.items())
            found = await anyio.to_thread.run_sync(
                self._states_of, [(kind, rel) for rel, kind in changes])
        else:
            found = await anyio.to_thread.run_sync(self._changed_since_snapshot)
        for kind, rel, st in found:
            await self._emit(kind, rel, st)

    async def _emit(self, kind: ChangeKind, rel: str, st: _State) -> None:
        if self._known.get(rel) == st:
            return  # already reported as it is (two events of one write, a rescan)
        if rel in self._known:
            kind = "modified"  # reported before: a file is created once
        self._known[rel] = st
        await self.on_change(kind, _text(rel))

    # --- the watch loop ---
    async def _run(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        if self._inotify is None:
            return  # nothing to watch with: the exit reports everything
        while not self._closing:
            with anyio.CancelScope() as self._wait_scope:
                if not self._closing:
                    await self._collect()
            self._wait_scope = None
            if self._closing:
                return  # the exit's catch-up reports what is pending
            await self._report_pending()

    async def _collect(self) -> None:
        """Wait for events, then keep reading until ``step_ms`` pass without one or
        ``debounce_ms`` since the first."""
        assert self._inotify is not None
        await anyio.wait_readable(self._inotify.fileno())
        self._pending += self._read()
        deadline = anyio.current_time() + self.debounce_ms / 1000
        while (remaining := deadline - anyio.current_time()) > 0:
            with anyio.move_on_after(min(self.step_ms / 1000, remaining)) as quiet:
                await anyio.wait_readable(self._inotify.fileno())
            if quiet.cancelled_caught:
                return
            self._pending += self._read()

    def _read(self) -> list[_Event]:
        """The events queued now, without waiting."""
        if self._inotify is None:
            return []
        return [_Event(int(e.wd), int(e.mask), str(e.name))
                for e in self._inotify.read(timeout=0)]

    async def _report_pending(self) -> None:
        events, self._pending = self._pending, []
        if events:
            for kind, rel, st in await anyio.to_thread.run_sync(self._classify, events):
                await self._emit(kind, rel, st)

    def _classify(self, events: list[_Event]) -> list[tuple[ChangeKind, str, _State]]:
        # Runs in a worker thread: lstat of each named path, the listing (and watch) of each
        # new folder. Nothing else touches the monitor's state meanwhile.
        kinds: dict[str, ChangeKind] = {}
        new_folders: list[str] = []

        def note(rel: str, kind: ChangeKind) -> None:
            if kinds.get(rel) != "created":
                kinds[rel] = kind

        for event in events:
            if event.mask & _IN.Q_OVERFLOW:
                self._overflowed()
                continue
            if event.mask & _IN.IGNORED:  # the folder went away
                self._watched.pop(event.wd, None)
                continue
            folder = self._watched.get(event.wd)
            if folder is None or not event.name:
                continue
            rel = event.name if folder == "." else f"{folder}/{event.name}"
            if event.mask & _IN.ISDIR:
                if event.mask & _NEW_ENTRY:
                    new_folders.append(rel)
                continue
            note(rel, "created" if event.mask & _NEW_ENTRY else "modified")
        for rel in filter(self._keep, new_folders):
            # inotify watches a new folder only once the monitor adds it, so files written
            # into it right away (``mkdir -p pkg && echo > pkg/x.py``) send no event of
            # their own: watch it, then report what it holds.
            for found, _st in self._watch_under(rel, list_files=True):
                kinds[found] = "created"
        return self._states_of((kind, rel) for rel, kind in sorted(kinds.items()))

    def _states_of(self, changes: Iterable[tuple[ChangeKind, str]]
                   ) -> list[tuple[ChangeKind, str, _State]]:
        """The changes whose path is (still) a file or a symlink in the tree, reached with no
        symlink on the way, with its state."""
        out: list[tuple[ChangeKind, str, _State]] = []
        for kind, rel in changes:
            if not self._keep(rel):
                continue
            try:
                st = lstat_in(self.path, rel)
            except WorktreePathError:
                continue  # gone, or behind a symlink: not followed
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                out.append((kind, rel, _state(st)))
            elif stat.S_ISDIR(st.st_mode):  # a folder the rescan did not list into
                out += (("created", found, found_st) for found, found_st
                        in sorted(self._watch_under(rel, list_files=True)))
        return out

    def _overflowed(self) -> None:
        """The kernel dropped events: watch every folder (some may be new and unwatched) and
        leave the exact list of changes to the exit."""
        self._degraded = True
        for _ in self._watch_under(".", list_files=False):
            pass

    # --- folders: watched by fd, walked without following symlinks ---
    def _watch_tree(self) -> None:
        """At entry: watch the named folders (or every folder), and take the snapshot when
        there is no rescan."""
        if self._rescan is None:
            self._snapshot = dict(self._watch_under(".", list_files=True))
            return
        if self._folders is None:
            for _ in self._watch_under(".", list_files=False):
                pass
            return
        self._watch_folders(self._folders)

    def _watch_folders(self, folders: Sequence[str]) -> None:
        """Watch the root and each of ``folders`` (the tree's, at any depth), each opened from
        its parent's open fd with ``O_NOFOLLOW``: one ``openat`` a folder, not one a component
        of its path (which made a batch's entry cost grow with the tree's depth as well as its
        folders). A folder gone, not a folder, or a symlink now is not watched, nor is
        anything below it. One fd a level of the tree is open at a time, at most
        ``_MAX_HELD_FOLDERS``; a deeper chain is watched folder by folder from the root."""
        children: dict[str, set[str]] = {}
        for rel in folders:
            # Each folder with its parents, so a listing without some of them still reaches it.
            while rel not in (".", "") and ".git" not in rel.split("/"):
                parent, _, name = rel.rpartition("/")
                siblings = children.setdefault(parent or ".", set())
                if name in siblings:
                    break
                siblings.add(name)
                rel = parent
        root = open_directory_in(self.path, ".")
        stack: list[tuple[str, int, Iterator[str]]] = [
            (".", root, iter(sorted(children.get(".", ()))))]
        try:
            self._add_watch(root, ".")
            while stack:
                folder, fd, names = stack[-1]
                child_name = next(names, None)
                if child_name is None:
                    stack.pop()
                    os.close(fd)
                    continue
                if child_name in self._ignored_dirs:
                    continue  # the filter keeps nothing below it: not opened, not walked
                rel = child_name if folder == "." else f"{folder}/{child_name}"
                if len(stack) >= _MAX_HELD_FOLDERS:
                    # A chain of folders this deep (a model can commit one): the rest of it
                    # folder by folder from the root, one fd at a time, so that the fds held
                    # stay bounded whatever the tree (the daemon's other opens need them).
                    for deep in _below(children, rel):
                        if self._keep(deep):
                            self._add_watch_at(deep)
                    continue
                try:
                    child = os.open(child_name, _OPEN_DIR, dir_fd=fd)
                except OSError:
                    continue  # not a folder (any more), or a symlink: nothing to watch
                stack.append((rel, child, iter(sorted(children.get(rel, ())))))
                if self._keep(rel):
                    self._add_watch(child, rel)
        finally:
            for _, fd, _ in stack:
                os.close(fd)

    def _add_watch_at(self, rel: str) -> None:
        try:
            fd = open_directory_in(self.path, rel)
        except WorktreePathError:
            return  # not a folder (any more), or behind a symlink: nothing to watch
        try:
            self._add_watch(fd, rel)
        finally:
            os.close(fd)

    def _add_watch(self, fd: int, rel: str) -> None:
        if self._inotify is None:
            return
        try:
            wd = int(self._inotify.add_watch(_PROC_FD / str(fd), _MASK))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                self._degraded = True  # no watch left: the exit asks the exact view
                return
            if exc.errno in (errno.ENOENT, errno.ENOTDIR) and rel != ".":
                return  # removed meanwhile
            raise
        self._watched[wd] = rel  # a folder moved keeps its watch: this is its new name

    def _watch_under(self, top: str, *, list_files: bool) -> Iterator[tuple[str, _State]]:
        """Watch ``top`` and every real folder below it (a watch is added before the folder
        is listed); yield each file and symlink found when ``list_files``."""
        try:
            top_fd = open_directory_in(self.path, top)
        except WorktreePathError:
            if top == ".":
                raise
            return
        stack = [(top, top_fd)]
        while stack:
            folder, fd = stack.pop()
            try:
                self._add_watch(fd, folder)
                with os.scandir(fd) as entries:
                    for entry in entries:
                        rel = entry.name if folder == "." else f"{folder}/{entry.name}"
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                            if is_dir:
                                if entry.name == ".git" or not self._keep(rel):
                                    continue
                                child = os.open(entry.name, _OPEN_DIR, dir_fd=fd)
                                stack.append((rel, child))
                            elif list_files and self._keep(rel):
                                st = entry.stat(follow_symlinks=False)
                                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                                    yield rel, _state(st)
                        except OSError:  # removed, or swapped for a link, meanwhile
                            continue
            except OSError:
                if folder == top:
                    raise
            finally:
                os.close(fd)

    def _changed_since_snapshot(self) -> list[tuple[ChangeKind, str, _State]]:
        assert self._snapshot is not None
        before = self._snapshot
        out: list[tuple[ChangeKind, str, _State]] = []
        for rel, st in sorted(self._watch_under(".", list_files=True)):
            if before.get(rel) != st:
                out.append(("created" if rel not in before and rel not in self._known
                            else "modified", rel, st))
        return out

    def _keep(self, rel: str) -> bool:
        # ``rel`` is normalised (a git path, or a watched folder and an event's name): the
        # text join is the path pathlib's ``/`` makes, without its parse, once a folder.
        return ".git" not in rel.split("/") and self._filter(
            Change.added, self._root_text if rel in (".", "") else f"{self._root_text}/{rel}")


def _below(children: dict[str, set[str]], top: str) -> Iterator[str]:
    """``top`` and every folder below it in ``children`` (folder -> names of its folders)."""
    stack = [top]
    while stack:
        rel = stack.pop()
        yield rel
        stack += (f"{rel}/{name}" for name in children.get(rel, ()))


def _text(rel: str) -> str:
    """A path as an event can carry it: a name that is not UTF-8 (``os.fsdecode`` keeps its
    bytes as lone surrogates, which no JSON encoder takes) shows those bytes escaped."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _state(st: os.stat_result) -> _State:
    return (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

