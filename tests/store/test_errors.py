"""SQLite failures become StoreError with a clear message, and never a half-written state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from buildrunnerd.errors import StoreError
from buildrunnerd.store import NewEvent, Store, TaskChange

from .conftest import Clock, Recorder, make_plan, submit

BIG = "x" * 200_000


async def test_a_full_database_fails_cleanly(db_path: Path, clock: Clock) -> None:
    recorder = Recorder()
    store = await Store.open(db_path, on_event=recorder, clock=clock,
                             max_size_bytes=512 * 1024)
    try:
        await submit(store, "r-1")
        events_before = await store.list_events()
        seen_before = list(recorder.events)
        with pytest.raises(StoreError, match="database is full") as info:
            # the state changes fit; the events after them do not: all of it must go
            await store.transition(
                run=("r-1", "running", "run.started"),
                tasks=[TaskChange("r-1:T001", "running")],
                events=[NewEvent("r-1", "agent.text", {"text": f"{i}{BIG}"}) for i in range(8)],
            )
        assert str(db_path.parent) in str(info.value)
        assert info.value.data["sqlite_error"] == "SQLITE_FULL"
        assert (await store.get_run("r-1")).state == "queued"
        assert (await store.get_task("r-1:T001")).state == "pending"
        assert await store.list_events() == events_before
        assert recorder.events == seen_before
        # small writes still fit: the store is usable, nothing is corrupt
        await store.set_run_state("r-1", "running", event_type="run.started")
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


async def test_a_full_disk_fails_cleanly(tmp_path: Path, clock: Clock) -> None:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = await anyio.run_process(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); "
                    "test_a_full_database_fails_cleanly covers SQLITE_FULL")
    try:
        recorder = Recorder()
        path = mount_point / "buildrunner.db"
        store = await Store.open(path, on_event=recorder, clock=clock)
        try:
            await submit(store, "r-1", make_plan(n_batches=2))
            written = 0
            with pytest.raises(StoreError, match="database is full") as info:
                for written in range(100):  # noqa: B007  (200 kB each: 1 MiB fills up)
                    await store.append_event("r-1", "agent.text", {"text": f"{written}{BIG}"})
            assert str(mount_point) in str(info.value)
            stored = await store.list_events(types=["agent.text"])
            # every event that was reported stored is there, the failed one is not
            assert len(stored) == written and len(recorder.events) == written + 1
            assert all(e.data["text"].startswith(f"{i}x") for i, e in enumerate(stored))
            assert (await store.get_run("r-1")).state == "queued"
        finally:
            await store.close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.run_process(["umount", "-l", str(mount_point)])


async def test_a_locked_database_fails_with_advice(db_path: Path, clock: Clock) -> None:
    store = await Store.open(db_path, clock=clock, busy_timeout_s=0.05)
    try:
        await submit(store, "r-1")
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreError, match="database is locked.*another process") as info:
                await store.set_run_state("r-1", "running", event_type="run.started")
            assert info.value.data["path"] == str(db_path)
            other.execute("ROLLBACK")
        finally:
            other.close()
        # once the other writer is gone, the same change goes through
        await store.set_run_state("r-1", "running", event_type="run.started")
        assert (await store.get_run("r-1")).state == "running"
    finally:
        await store.close()


async def test_an_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the database"):
        await Store.open(blocker / "buildrunner.db")
