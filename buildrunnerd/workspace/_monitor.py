"""Watch a worktree while the agent works and report the files it creates or modifies.

The model controls the tree, so the monitor follows no symlink: a committed ``link -> /``
must not make it watch (or walk) the whole machine, nor report files outside. watchfiles'
recursive mode follows symlinked folders (the notify crate walks with ``follow_links``), so
the monitor watches each real folder non-recursively instead: the folders are listed with
``os.fwalk(follow_symlinks=False)``, and when a new folder appears the watcher is rebuilt
with it. Every reported path is checked with :func:`~buildrunnerd.sandbox.lstat_in` (no
symlink on the way), which also drops events from a folder swapped for a symlink between
the listing and the watch.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from types import TracebackType
from typing import Literal

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from watchfiles import Change, DefaultFilter, awatch

from buildrunnerd.sandbox import WorktreePathError, lstat_in, open_directory_in

__all__ = ["FileMonitor", "ChangeKind", "OnChange"]

ChangeKind = Literal["created", "modified"]
OnChange = Callable[[ChangeKind, str], Awaitable[None]]
_Stat = tuple[int, int]  # (mtime_ns, size)
_Group = set[tuple[Change, str]]
# Consecutive failures to build a watcher (a folder removed between the listing and the
# watch) before the monitor gives up with the error.
_MAX_WATCH_FAILURES = 5


class FileMonitor:
    """Async context manager: while open, ``await on_change(kind, relpath)`` for every file
    created or modified under ``path``.

    Changes are debounced (grouped for up to ``debounce_ms``; a file created and then written
    within one group is reported once, as ``created``). ``.git``, byte-code and tool caches are
    ignored (watchfiles' default filter); deletions are not reported. An exception raised by
    ``on_change`` propagates out of the ``async with`` block. A symlink is reported as an
    entry of the tree (it is what git commits), never followed.

    A normal exit stops the watcher and then reports, once, every file whose size or mtime
    differs from what was last reported (or seen at entry): changes still inside the debounce
    window, or written faster than inotify could watch a new folder, are never lost.
    """

    def __init__(
        self,
        path: Path,
        on_change: OnChange,
        *,
        debounce_ms: int = 200,
        step_ms: int = 50,
    ) -> None:
        self.path = Path(path).resolve()
        self.on_change = on_change
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self._stop = anyio.Event()
        self._watcher_stop = anyio.Event()  # the current watcher's own stop
        self._filter = DefaultFilter()
        self._tg: TaskGroup | None = None
        self._before: dict[str, _Stat] = {}
        self._known: dict[str, _Stat] = {}  # the state of each file when last reported
        self._reported: set[str] = set()
        self._first_folders: list[str] | None = None  # from the scan at entry: one walk

    async def __aenter__(self) -> FileMonitor:
        self._before, self._first_folders = await anyio.to_thread.run_sync(self._scan_tree)
        self._known = dict(self._before)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._watch)
        except BaseException:
            self._stop.set()
            self._watcher_stop.set()
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        # The rust watcher checks the stop event every ``step_ms``, so the task group ends
        # promptly; a cancelled exit also sets it (awatch does) before waiting for the thread.
        self._stop.set()
        self._watcher_stop.set()
        tg, self._tg = self._tg, None
        suppress = await tg.__aexit__(exc_type, exc, tb)
        if exc_type is None:
            await self._catch_up()
        return suppress

    async def _catch_up(self) -> None:
        """Report every file whose state differs from the one last reported (or seen at
        entry): after a new watcher is up, what changed while none was watching; at exit,
        what the watcher had not delivered yet."""
        now = await anyio.to_thread.run_sync(self._scan)
        for rel, st in sorted(now.items()):
            if self._known.get(rel) != st:
                kind: ChangeKind = ("created" if rel not in self._before
                                    and rel not in self._reported else "modified")
                await self._emit(kind, rel, st)

    async def _emit(self, kind: ChangeKind, rel: str, st: _Stat) -> None:
        if self._known.get(rel) == st and rel in self._reported:
            return  # seen by two watchers around a rebuild: already reported as it is
        self._reported.add(rel)
        self._known[rel] = st
        await self.on_change(kind, rel)

    # --- watching ---
    async def _watch(self, *, task_status: TaskStatus[None]) -> None:
        started = False
        failures = 0
        async with anyio.create_task_group() as tg:
            while not self._stop.is_set():
                folders, self._first_folders = self._first_folders, None
                if folders is None:
                    folders = await anyio.to_thread.run_sync(self._folders)
                stop = anyio.Event()
                send, receive = anyio.create_memory_object_stream[_Group | OSError](16)
                await tg.start(self._one_watcher, folders, stop, send)
                # The new watcher is up (see _one_watcher): only now stop the old one.
                self._watcher_stop.set()
                self._watcher_stop = stop
                if self._stop.is_set():  # the monitor was closed meanwhile
                    stop.set()
                if not started:
                    task_status.started()
                    started = True
                else:
                    await self._catch_up()
                rebuild = False
                async with receive:
                    async for item in receive:
                        if isinstance(item, OSError):
                            # A folder went away between the listing and the watch: list
                            # again (a persistent failure, e.g. no inotify watches left, ends
                            # the monitor with the error).
                            failures += 1
                            if failures >= _MAX_WATCH_FAILURES:
                                raise item
                            rebuild = True
                            break
                        failures = 0
                        events, rebuild = await anyio.to_thread.run_sync(self._classify, item)
                        for kind, rel, st in events:
                            await self._emit(kind, rel, st)
                        if rebuild:
                            break
                if not rebuild:
                    return  # the watcher ended: the monitor is stopping

    async def _one_watcher(self, folders: list[str], stop: anyio.Event,
                           send: MemoryObjectSendStream[_Group | OSError], *,
                           task_status: TaskStatus[None]) -> None:
        changes = awatch(
            *folders,
            watch_filter=self._filter,
            debounce=self.debounce_ms,
            step=self.step_ms,
            stop_event=stop,
            # How long the watcher thread blocks between checks; it stops on the stop event
            # anyway, this only bounds how long a cancelled monitor keeps its thread.
            rust_timeout=1000,
            recursive=False,  # each real folder is listed: symlinks are never followed
            ignore_permission_denied=True,  # a chmod 000 folder must not end the batch
        )
        # awatch builds its inotify watcher synchronously on the first step of the iteration,
        # before its first await; the caller resumes only after that first await, so the
        # folders are already watched when ``start`` returns and no write is lost. A failure
        # to build it (a folder removed meanwhile) is sent to the caller, which lists again.
        task_status.started()
        async with send, aclosing(changes):
            try:
                async for group in changes:
                    await send.send(group)
            except OSError as exc:
                send.send_nowait(exc)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the watch loop moved on to a newer watcher
            finally:
                stop.set()

    def _classify(self, group: _Group) -> tuple[list[tuple[ChangeKind, str, _Stat]], bool]:
        # Runs in a worker thread: it stats and walks the tree. Returns the events and
        # whether a new folder appeared (the watcher is then rebuilt with it).
        kinds: dict[str, tuple[ChangeKind, _Stat]] = {}
        new_folder = False

        def note(rel: str, kind: ChangeKind, st: _Stat) -> None:
            if kind == "created" or kinds.get(rel, ("", 0))[0] != "created":
                kinds[rel] = (kind, st)

        for change, raw in group:
            if change == Change.deleted:
                continue
            try:
                rel = Path(raw).relative_to(self.path).as_posix()
            except ValueError:
                continue
            if rel == "." or ".git" in rel.split("/"):
                continue
            try:
                # No symlink on the way: drops events from a folder swapped for a link.
                st = lstat_in(self.path, rel)
            except WorktreePathError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if change == Change.added:
                    new_folder = True
                    # inotify watches a new folder only once it has seen it, so files written
                    # into it right away (``mkdir -p pkg && echo > pkg/x.py``) send no event
                    # of their own: report what the new folder holds.
                    for found, found_st in self._files_under(rel):
                        note(found, "created", found_st)
                continue
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                note(rel, "created" if change == Change.added else "modified",
                     (st.st_mtime_ns, st.st_size))
        events = [(kind, rel, st) for rel, (kind, st) in sorted(kinds.items())]
        return events, new_folder

    # --- the tree, walked without following symlinks ---
    def _scan(self) -> dict[str, _Stat]:
        """(mtime_ns, size) of every watched file (and symlink), by relative path."""
        return dict(self._files_under("."))

    def _files_under(self, rel: str) -> Iterator[tuple[str, _Stat]]:
        for folder, files in self._walk(rel):
            yield from ((f"{folder}/{name}" if folder != "." else name, st)
                        for name, st in files)

    def _folders(self) -> list[str]:
        """Every real folder of the tree the filter keeps, as absolute paths to watch."""
        return self._scan_tree()[1]

    def _scan_tree(self) -> tuple[dict[str, _Stat], list[str]]:
        """The scan and the folders to watch, in one walk."""
        files: dict[str, _Stat] = {}
        folders: list[str] = []
        for folder, entries in self._walk("."):
            folders.append(str(self.path) if folder == "." else str(self.path / folder))
            files.update((f"{folder}/{name}" if folder != "." else name, st)
                         for name, st in entries)
        return files, folders

    def _walk(self, rel: str) -> Iterator[tuple[str, list[tuple[str, _Stat]]]]:
        """(folder, [(name, stat)]) for ``rel`` and every real folder below it, relative to
        the root. ``os.fwalk(follow_symlinks=False)`` opens each folder from its parent's fd
        and checks it is the folder it listed, so a swap for a symlink is not followed."""
        try:
            top_fd = open_directory_in(self.path, rel)
        except WorktreePathError:
            return
        try:
            for dirpath, dirnames, filenames, dir_fd in os.fwalk(
                    ".", dir_fd=top_fd, follow_symlinks=False):
                folder = os.path.normpath(os.path.join(rel, dirpath))
                entries: list[tuple[str, _Stat]] = []
                keep: list[str] = []
                for name in dirnames:
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISLNK(st.st_mode):  # a link to a folder: an entry, not a folder
                        if self._keep(folder, name):
                            entries.append((name, (st.st_mtime_ns, st.st_size)))
                    elif name != ".git" and self._keep(folder, name):
                        keep.append(name)
                dirnames[:] = keep
                for name in filenames:
                    if not self._keep(folder, name):
                        continue
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except OSError:  # deleted while walking
                        continue
                    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                        entries.append((name, (st.st_mtime_ns, st.st_size)))
                yield folder, entries
        finally:
            os.close(top_fd)

    def _keep(self, folder: str, name: str) -> bool:
        return self._filter(Change.added, str(self.path / folder / name))

