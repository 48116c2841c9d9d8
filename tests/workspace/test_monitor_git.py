"""The file events of a git worktree (``GitWorkspace.watch``): what a hostile batch writes is
reported exactly, each change once, from inotify alone (the head's folders watched, the queue
read to its end at exit) or, when the kernel dropped events, from git's status."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.workspace import ChangeKind, FileChange, GitWorkspace, prepare_run_repo
from buildrunnerd.workspace._git import record_git_calls

from ._helpers import overflowable_kernel_queue, run_git, task

# Long enough that nothing is reported live before the block ends, unless a test waits.
EXIT_ONLY_MS = 5000


class Seen:
    def __init__(self) -> None:
        self.changes: list[FileChange] = []
        self._changed = anyio.Event()

    async def __call__(self, kind: ChangeKind, path: str) -> None:
        self.changes.append(FileChange(kind, path))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.changes) < count:
                await self._changed.wait()


def nested_repo(repo: Path) -> None:
    """A tracked tree of nested folders, with a committed link to / and a link to a folder."""
    for folder in ("pkg/a", "pkg/b/deep", "docs"):
        (repo / folder).mkdir(parents=True)
        (repo / folder / "mod.py").write_text("X = 1\n")
    (repo / "link").symlink_to("/")
    (repo / "pkg" / "alias").symlink_to("a")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "tree")


async def workspace(repo: Path, root: Path) -> tuple[GitWorkspace, Path]:
    run_repo = await prepare_run_repo(repo, "r1")
    ws = GitWorkspace(run_repo, run_id="r1", worktree_root=root, project_root=repo,
                      base_commit=run_repo.base_commit, test_cmd=None,
                      plan_tasks=[task("t1", "x.py")], spec_path=None)
    path, _head = await ws.acquire()
    return ws, path


async def test_exit_reports_a_new_nested_folder_and_last_writes_exactly_once(
        repo: Path, wt_root: Path) -> None:
    nested_repo(repo)
    ws, path = await workspace(repo, wt_root)
    seen = Seen()
    async with ws.watch(path, [], seen):
        (path / "new" / "sub" / "deeper").mkdir(parents=True)  # at once, before any watch
        (path / "new" / "sub" / "deeper" / "x.py").write_text("X = 1\n")
        (path / "new" / "top.py").write_text("T = 1\n")
        (path / "pkg" / "b" / "deep" / "mod.py").write_text("X = 2\n")
        (path / "pkg" / "b" / "deep" / "mod.py").write_text("X = 22\n")  # the last ms
    assert sorted(seen.changes) == [
        ("created", "new/sub/deeper/x.py"), ("created", "new/top.py"),
        ("modified", "pkg/b/deep/mod.py")]
    await ws.release(path)
    await ws.close()


async def test_a_fix_up_round_watches_the_folders_the_last_round_made(
        repo: Path, wt_root: Path) -> None:
    # The same worktree watched again (a fix-up round): folders that are not in its head yet
    # are watched too, so a write into one is reported.
    nested_repo(repo)
    ws, path = await workspace(repo, wt_root)
    first, second = Seen(), Seen()
    async with ws.watch(path, [], first):
        (path / "made" / "here").mkdir(parents=True)
        (path / "made" / "here" / "one.py").write_text("O = 1\n")
    async with ws.watch(path, [], second):
        (path / "made" / "here" / "two.py").write_text("T = 1\n")
        (path / "made" / "here" / "one.py").write_text("O = 2\n")
    assert first.changes == [("created", "made/here/one.py")]
    assert sorted(second.changes) == [("created", "made/here/two.py"),
                                      ("modified", "made/here/one.py")]
    await ws.release(path)
    await ws.close()


async def test_a_reused_worktree_watches_the_folders_of_the_head_the_daemon_made(
        repo: Path, wt_root: Path) -> None:
    # The next batch's head is the last one's commit: the folders to watch come from the
    # daemon's record of that tree (no git process), and must hold the folders that batch
    # added, or a write into one goes unreported.
    nested_repo(repo)
    ws, path = await workspace(repo, wt_root)
    config = VerifyConfig()
    head = await ws.run_repo.worktree_head(path)
    (path / "made" / "deep").mkdir(parents=True)
    (path / "made" / "deep" / "x.py").write_text("def f() -> int:\n    return 1\n")
    report = await ws.verify(path, [task("t1", "made/deep/x.py")], head=head, config=config,
                             confinement=None)
    assert report.passed, report
    done = await ws.integrate(path, "t1", report, head=head, batch_id="b1", config=config,
                              confinement=None)
    assert done.merged and done.commit is not None
    await ws.release(path)
    path, next_head = await ws.acquire()
    assert next_head == done.commit
    seen = Seen()
    with record_git_calls() as calls:
        async with ws.watch(path, [], seen):
            (path / "made" / "deep" / "x.py").write_text("def f() -> int:\n    return 2\n")
            (path / "pkg" / "b" / "deep" / "new.py").write_text("N = 1\n")
    assert "ls-tree" not in calls.subcommands(), calls.subcommands()
    assert sorted(seen.changes) == [("created", "pkg/b/deep/new.py"),
                                    ("modified", "made/deep/x.py")]
    await ws.release(path)
    await ws.close()


async def test_live_events_then_exit_never_report_a_change_twice(
        repo: Path, wt_root: Path) -> None:
    nested_repo(repo)
    ws, path = await workspace(repo, wt_root)
    seen = Seen()
    async with ws.watch(path, [], seen):
        (path / "pkg" / "a" / "new.py").write_text("N = 1\n")
        (path / "pkg" / "a" / "mod.py").write_text("X = 3\n")
        await seen.wait_for(2)  # reported live
        assert sorted(seen.changes) == [("created", "pkg/a/new.py"),
                                        ("modified", "pkg/a/mod.py")]
        (path / "pkg" / "a" / "new.py").write_text("N = 2\n")  # a second change: reported
    assert sorted(seen.changes) == [("created", "pkg/a/new.py"), ("modified", "pkg/a/mod.py"),
                                    ("modified", "pkg/a/new.py")]
    await ws.release(path)
    await ws.close()


async def test_a_folder_swapped_for_a_link_is_an_entry_and_is_not_followed(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    nested_repo(repo)
    outside = tmp_path / "outside"
    outside.mkdir()
    ws, path = await workspace(repo, wt_root)
    seen = Seen()
    async with ws.watch(path, [], seen):
        # The watched folder moves out of the tree (its watch stays on it) and a link to a
        # folder outside takes its name; writes through both must not be reported.
        (path / "pkg" / "a").rename(tmp_path / "moved")
        (path / "pkg" / "a").symlink_to(outside)
        (tmp_path / "moved" / "mod.py").write_text("X = 9\n")
        (tmp_path / "moved" / "new.py").write_text("N = 9\n")
        (outside / "through.py").write_text("T = 9\n")
        (path / "link" / "tmp").exists()  # the committed link to / is an entry, not a folder
        (path / "docs" / "mod.py").write_text("X = 5\n")
    assert sorted(seen.changes) == [("created", "pkg/a"), ("modified", "docs/mod.py")]
    await ws.release(path, reuse=False)
    await ws.close()


async def test_odd_names_and_a_forged_mtime(repo: Path, wt_root: Path) -> None:
    # A name that is not UTF-8 is reported with its bytes escaped: the event is stored as
    # JSON, which cannot carry the lone surrogates os.fsdecode gives.
    nested_repo(repo)
    ws, path = await workspace(repo, wt_root)
    seen = Seen()
    target = path / "pkg" / "a" / "mod.py"
    before = os.lstat(target)
    async with ws.watch(path, [], seen):
        (path / "new\nline.py").write_text("A = 1\n")
        os.mkdir(os.path.join(os.fsencode(path), b"caf\xe9"))
        write_bytes_name(os.path.join(os.fsencode(path), b"caf\xe9", b"\xff name.py"))
        target.write_text("X = 7\n")  # same size as before
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # the old mtime back
    assert sorted(seen.changes) == sorted([
        ("created", "new\nline.py"), ("created", "caf\\xe9/\\xff name.py"),
        ("modified", "pkg/a/mod.py")])
    await ws.release(path, reuse=False)
    await ws.close()


@pytest.mark.timeout(120)
async def test_thousands_of_files_past_the_kernel_queue_are_reported_exactly(
        repo: Path, wt_root: Path) -> None:
    # Written while the event loop is blocked, so the monitor cannot read: the kernel's
    # queue overflows and drops events. The exit then takes git's status, and each file is
    # still reported exactly once, with the right kind.
    queue = overflowable_kernel_queue()
    nested_repo(repo)
    ws, path = await workspace(repo, wt_root)
    seen = Seen()
    # Create, modify, close-write: three events a file in a watched folder (nine in ten).
    count = int(queue / 3 / 0.9) + 500
    expected = [FileChange("modified", "pkg/a/mod.py"), FileChange("created", "odd\nname.py")]
    async with ws.watch(path, [], seen) as watch:
        for n in range(count):
            rel = f"many/f{n // 500}/m{n}.py" if n % 10 == 0 else f"pkg/b/m{n}.py"
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(f"M = {n}\n")
            expected.append(FileChange("created", rel))
        (path / "pkg" / "a" / "mod.py").write_text("X = 8\n")
        (path / "odd\nname.py").write_text("O = 1\n")
    assert watch.events_dropped  # the overflow path was the one taken
    assert sorted(seen.changes) == sorted(expected)
    await ws.release(path, reuse=False)
    await ws.close()


def write_bytes_name(name: bytes) -> None:
    """Write a file whose name is not valid UTF-8."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"B = 1\n")
    finally:
        os.close(fd)


@pytest.mark.parametrize("owner", ["git", "snapshot"])
async def test_without_inotify_every_change_is_reported_at_exit(
        repo: Path, wt_root: Path, monkeypatch: pytest.MonkeyPatch, owner: str) -> None:
    # Another system (macOS under launchd) has no inotify: the monitor watches nothing and
    # reports at exit, from git's status or from the snapshot it took at entry.
    from buildrunnerd.workspace import FileMonitor, _monitor

    monkeypatch.setattr(_monitor, "_HAS_INOTIFY", False)
    nested_repo(repo)
    ws, path = await workspace(repo, wt_root)
    seen = Seen()

    def write() -> None:
        (path / "new" / "sub").mkdir(parents=True)
        (path / "new" / "sub" / "x.py").write_text("X = 1\n")
        (path / "pkg" / "a" / "mod.py").write_text("X = 2\n")

    if owner == "git":
        async with ws.watch(path, [], seen):
            write()
    else:
        async with FileMonitor(path, seen, debounce_ms=EXIT_ONLY_MS) as monitor:
            write()
        assert monitor.events_dropped
    assert sorted(seen.changes) == [("created", "new/sub/x.py"), ("modified", "pkg/a/mod.py")]
    await ws.release(path)
    await ws.close()
