"""FileMonitor: real inotify events from a real folder, waited for with a timeout."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from buildrunnerd.workspace import ChangeKind, FileMonitor

from ._helpers import overflowable_kernel_queue, run_git

WAIT_S = 10.0


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[ChangeKind, str]] = []
        self._changed = anyio.Event()

    async def __call__(self, kind: ChangeKind, relpath: str) -> None:
        self.events.append((kind, relpath))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, expected: tuple[ChangeKind, str]) -> None:
        with anyio.fail_after(WAIT_S):
            while expected not in self.events:
                await self._changed.wait()


async def test_reports_created_and_modified_files(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    root.mkdir()
    (root / "existing.py").write_text("A = 1\n")
    rec = Recorder()
    async with FileMonitor(root, rec, debounce_ms=100):
        (root / "pkg").mkdir()
        (root / "pkg" / "new.py").write_text("B = 2\n")
        await rec.wait_for(("created", "pkg/new.py"))
        (root / "existing.py").write_text("A = 2\n")
        await rec.wait_for(("modified", "existing.py"))
    assert ("created", "pkg") not in rec.events  # folders are not files
    assert all(kind in ("created", "modified") for kind, _ in rec.events)


async def test_ignores_git_folder(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    root.mkdir()
    run_git(root, "init", "-q")
    rec = Recorder()
    async with FileMonitor(root, rec, debounce_ms=100):
        (root / ".git" / "scratch").write_text("internal")
        run_git(root, "config", "user.name", "x")  # writes .git/config
        (root / "visible.txt").write_text("v")
        await rec.wait_for(("created", "visible.txt"))
    assert not [rel for _, rel in rec.events if rel.startswith(".git")]


async def test_stops_cleanly_and_reports_nothing_after_exit(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    root.mkdir()
    rec = Recorder()
    async with FileMonitor(root, rec, debounce_ms=50):
        (root / "during.txt").write_text("d")
        await rec.wait_for(("created", "during.txt"))
    count = len(rec.events)
    (root / "after.txt").write_text("a")
    await anyio.sleep(0.3)  # nothing is listening any more; give a stray event time to appear
    assert len(rec.events) == count


async def test_callback_error_propagates(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    root.mkdir()

    async def broken(kind: ChangeKind, relpath: str) -> None:
        raise RuntimeError(f"store down while recording {relpath}")

    with pytest.raises(ExceptionGroup) as info:
        async with FileMonitor(root, broken, debounce_ms=50):
            (root / "x.txt").write_text("x")
            await anyio.sleep(WAIT_S)
    assert info.group_contains(RuntimeError, match="store down while recording x.txt")


async def test_changes_just_before_exit_are_reported_once(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    root.mkdir()
    (root / "old.py").write_text("A = 1\n")
    (root / "same.py").write_text("S = 1\n")
    rec = Recorder()
    # A long debounce: nothing can be reported live before the block ends.
    async with FileMonitor(root, rec, debounce_ms=5000, step_ms=500):
        (root / "deep" / "er").mkdir(parents=True)
        (root / "deep" / "er" / "quick.py").write_text("Q = 1\n")
        (root / "old.py").write_text("A = 22\n")
    assert sorted(rec.events) == [("created", "deep/er/quick.py"), ("modified", "old.py")]


async def test_new_folders_are_watched_live(tmp_path: Path) -> None:
    # Folders are watched one by one (symlinks never followed): a folder made during the batch
    # must join the watch, so a later change inside it is reported live, not only at exit.
    root = tmp_path / "wt"
    root.mkdir()
    rec = Recorder()
    async with FileMonitor(root, rec, debounce_ms=50):
        (root / "pkg" / "sub").mkdir(parents=True)
        (root / "pkg" / "sub" / "a.py").write_text("A = 1\n")
        await rec.wait_for(("created", "pkg/sub/a.py"))
        (root / "gone").mkdir()
        (root / "gone").rmdir()  # removed before the watcher is rebuilt with it
        (root / "pkg" / "sub" / "a.py").write_text("A = 22\n")
        await rec.wait_for(("modified", "pkg/sub/a.py"))
        (root / "pkg" / "sub" / "b.py").write_text("B = 1\n")
        await rec.wait_for(("created", "pkg/sub/b.py"))
    assert sorted(set(rec.events)) == [("created", "pkg/sub/a.py"), ("created", "pkg/sub/b.py"),
                                       ("modified", "pkg/sub/a.py")]


async def test_symlinks_are_entries_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    root.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    rec = Recorder()
    async with FileMonitor(root, rec, debounce_ms=50):
        (root / "alias").symlink_to(target)
        (target / "outside.txt").write_text("x")
        (root / "mark.txt").write_text("m")
        await rec.wait_for(("created", "mark.txt"))
    assert sorted(rec.events) == [("created", "alias"), ("created", "mark.txt")]


@pytest.mark.timeout(120)
async def test_dropped_events_fall_back_to_the_entry_snapshot(tmp_path: Path) -> None:
    # No owner's view (no rescan): the monitor took a snapshot at entry, and when the
    # kernel's queue overflows (the loop blocked by these writes) the exit compares with it.
    queue = overflowable_kernel_queue()
    root = tmp_path / "wt"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "old.py").write_text("A = 1\n")
    (root / "same.py").write_text("S = 1\n")
    rec = Recorder()
    expected: list[tuple[ChangeKind, str]] = [("modified", "pkg/old.py")]
    async with FileMonitor(root, rec, debounce_ms=5000, step_ms=500) as monitor:
        for n in range(queue // 3 + 500):  # create, modify, close-write a file
            (root / "pkg" / f"m{n}.py").write_text(f"M = {n}\n")
            expected.append(("created", f"pkg/m{n}.py"))
        (root / "pkg" / "old.py").write_text("A = 2\n")
    assert monitor.events_dropped
    assert sorted(rec.events) == sorted(expected)


def kernel_queue_size() -> int:
    """How many events the kernel queues for one inotify instance before it drops some."""
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


async def test_named_folders_are_opened_once_each_and_a_link_is_not_followed(
        tmp_path: Path) -> None:
    # A git workspace names its head's folders: each is opened from its parent's fd, one
    # open a folder (one a component of its path made a batch's entry cost grow with the
    # tree's depth too). A folder the model swapped for a link is neither opened nor watched.
    import os
    import sys

    root = tmp_path / "wt"
    folders = [f"pkg/s{i}/sub" for i in range(10)]
    for rel in folders:
        (root / rel).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "pkg" / "s9" / "sub").rmdir()
    (root / "pkg" / "s9" / "sub").symlink_to(outside, target_is_directory=True)
    # A committed node_modules: the filter keeps nothing below it, so it is not even opened.
    ignored = ["node_modules", *(f"node_modules/p{i}" for i in range(20))]
    for rel in ignored:
        (root / rel).mkdir(parents=True, exist_ok=True)
    named = ["pkg", *(f"pkg/s{i}" for i in range(10)), *folders, *ignored]
    opened: list[str] = []
    counting = False

    def audit(event: str, args: tuple[object, ...]) -> None:
        if counting and event == "open" and isinstance(args[2], int) and (
                args[2] & os.O_DIRECTORY):
            opened.append(str(args[0]))

    sys.addaudithook(audit)

    async def nothing_changed() -> list[tuple[ChangeKind, str]]:
        return []

    rec = Recorder()
    monitor = FileMonitor(root, rec, debounce_ms=100, folders=named, rescan=nothing_changed)
    counting = True
    async with monitor:
        counting = False
        (root / "pkg" / "s3" / "sub" / "deep.py").write_text("x = 1\n")
        await rec.wait_for(("created", "pkg/s3/sub/deep.py"))
        (outside / "escaped.py").write_text("y = 1\n")
        (root / "pkg" / "s0" / "top.py").write_text("z = 1\n")
        await rec.wait_for(("created", "pkg/s0/top.py"))
    # The root (and its parents, once), then one open a folder: 21 folders, the link and
    # node_modules not among them. Before: 4 opens for each folder at depth 3.
    assert len(opened) <= len(named) - len(ignored) + 3, opened
    assert "node_modules" not in opened
    assert not any("escaped" in rel for _, rel in rec.events)


async def test_a_chain_of_folders_deeper_than_the_fds_held_is_watched_to_its_end(
        tmp_path: Path) -> None:
    # A model can commit folders 40 deep: the entry's walk holds one fd a level up to its
    # bound (so a deep tree cannot take the daemon's fds), and watches the rest folder by
    # folder from the root; a write at the bottom is still reported live.
    root = tmp_path / "wt"
    chain = "/".join(["d"] * 40)
    (root / chain).mkdir(parents=True)
    named = ["/".join(["d"] * n) for n in range(1, 41)]

    async def nothing_changed() -> list[tuple[ChangeKind, str]]:
        return []

    rec = Recorder()
    async with FileMonitor(root, rec, debounce_ms=100, folders=named, rescan=nothing_changed):
        (root / chain / "deep.py").write_text("x = 1\n")
        await rec.wait_for(("created", f"{chain}/deep.py"))
        (root / named[33] / "mid.py").write_text("y = 1\n")
        await rec.wait_for(("created", f"{named[33]}/mid.py"))
    assert ("created", f"{chain}/deep.py") in rec.events
