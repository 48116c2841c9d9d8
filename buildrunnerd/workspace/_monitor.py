"""Watch a worktree while the agent works and report the files it creates or modifies."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Literal

import anyio
from anyio.abc import TaskGroup, TaskStatus
from watchfiles import Change, DefaultFilter, awatch

__all__ = ["FileMonitor", "ChangeKind", "OnChange"]

ChangeKind = Literal["created", "modified"]
OnChange = Callable[[ChangeKind, str], Awaitable[None]]


class FileMonitor:
    """Async context manager: while open, ``await on_change(kind, relpath)`` for every file
    created or modified under ``path``.

    Changes are debounced (grouped for up to ``debounce_ms``; a file created and then written
    within one group is reported once, as ``created``). ``.git``, byte-code and tool caches are
    ignored (watchfiles' default filter); deletions are not reported. An exception raised by
    ``on_change`` propagates out of the ``async with`` block.

    A normal exit stops the watcher and then reports, once, every file that differs from the
    tree at entry (by size and mtime) but was not reported live: changes still inside the
    debounce window, or written faster than inotify could watch a new folder, are never lost.
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
        self._filter = DefaultFilter()
        self._tg: TaskGroup | None = None
        self._before: dict[str, tuple[int, int]] = {}
        self._reported: set[str] = set()

    async def __aenter__(self) -> FileMonitor:
        self._before = await anyio.to_thread.run_sync(self._scan)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._watch)
        except BaseException:
            self._stop.set()
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
        tg, self._tg = self._tg, None
        suppress = await tg.__aexit__(exc_type, exc, tb)
        if exc_type is None:
            await self._report_unseen()
        return suppress

    async def _report_unseen(self) -> None:
        after = await anyio.to_thread.run_sync(self._scan)
        for rel, stat in sorted(after.items()):
            if rel in self._reported or self._before.get(rel) == stat:
                continue
            await self._emit("created" if rel not in self._before else "modified", rel)

    def _scan(self) -> dict[str, tuple[int, int]]:
        """(mtime_ns, size) of every watched file, by relative path."""
        found: dict[str, tuple[int, int]] = {}
        for path in self._files_under(self.path):
            try:
                st = path.stat()
            except OSError:  # deleted while walking
                continue
            found[path.relative_to(self.path).as_posix()] = (st.st_mtime_ns, st.st_size)
        return found

    async def _emit(self, kind: ChangeKind, rel: str) -> None:
        self._reported.add(rel)
        await self.on_change(kind, rel)

    async def _watch(self, *, task_status: TaskStatus[None]) -> None:
        changes = awatch(
            self.path,
            watch_filter=self._filter,
            debounce=self.debounce_ms,
            step=self.step_ms,
            stop_event=self._stop,
            # How long the watcher thread blocks between checks; it stops on the stop event
            # anyway, this only bounds how long a cancelled monitor keeps its thread.
            rust_timeout=1000,
        )
        # awatch builds its inotify watcher synchronously on the first step of the iteration,
        # before its first await; the caller resumes only after that first await, so the
        # directory is already watched when ``__aenter__`` returns and no early write is lost.
        task_status.started()
        async for group in changes:
            for kind, relpath in await anyio.to_thread.run_sync(self._classify, group):
                await self._emit(kind, relpath)

    def _classify(self, group: set[tuple[Change, str]]) -> list[tuple[ChangeKind, str]]:
        # Runs in a worker thread: it stats and walks the tree.
        kinds: dict[str, ChangeKind] = {}

        def note(path: Path, kind: ChangeKind) -> None:
            try:
                rel = path.relative_to(self.path)
            except ValueError:
                return
            if ".git" in rel.parts:
                return
            key = rel.as_posix()
            if kind == "created" or kinds.get(key) != "created":
                kinds[key] = kind

        for change, raw in group:
            path = Path(raw)
            if change == Change.deleted:
                continue
            if path.is_dir():
                if change == Change.added:
                    # inotify watches a new folder only once it has seen it, so files written
                    # into it right away (``mkdir -p pkg && echo > pkg/x.py``) send no event
                    # of their own: report what the new folder holds.
                    for found in self._files_under(path):
                        note(found, "created")
                continue
            note(path, "created" if change == Change.added else "modified")
        return [(kind, rel) for rel, kind in sorted(kinds.items())]

    def _files_under(self, folder: Path) -> list[Path]:
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames
                           if d != ".git" and self._filter(Change.added, str(Path(dirpath, d)))]
            found += [Path(dirpath, f) for f in filenames
                      if self._filter(Change.added, str(Path(dirpath, f)))]
        return found
