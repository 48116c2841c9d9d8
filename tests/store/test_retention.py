"""Retention and backups as operations.md describes them, on the database of a real run:
online backup while the daemon runs, export, pruning of a finished run's events, vacuum."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from buildrunnerd.config import RetentionConfig
from buildrunnerd.store import Store
from tests.daemons import CONSOLE_SCRIPT, Daemon, Daemons

ROOT = Path(__file__).resolve().parents[2]
# Small on purpose: the run only has to produce a history to back up, export and prune.
SPEC = """# Notes

## Features

### Storage
Keep notes in `notes/store.py`.

### Listing
**Depends on:** Storage
List notes in `notes/cli.py`.
"""


class Env:
    """One home and socket; the daemon started on them (and again after a stop) by the
    harness, driven with brctl."""

    def __init__(self, daemons: Daemons) -> None:
        self.daemons = daemons
        self.home = daemons.home
        self.env = self.daemons.base_env(
            BUILDRUNNER_SIM_MS_PER_MINUTE="0",
            BUILDRUNNER_CONFIG=str(ROOT / "config" / "buildrunner.toml"),
            GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
            GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
        self.daemon: Daemon | None = None

    @property
    def db(self) -> Path:
        return self.home / "buildrunner.db"

    def start(self) -> None:
        self.daemon = self.daemons.start_sync(env=self.env, command=CONSOLE_SCRIPT)

    def stop(self) -> None:
        """``brctl shutdown``, and the daemon's exit."""
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.brctl("shutdown")
            assert self.daemon.wait_sync(60) == 0, self.daemon.stderr()
        self.daemon = None

    def brctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.daemon is not None
        result = self.daemon.brctl(*args, timeout_s=100)
        assert result.returncode == 0, result.stdout + result.stderr
        return result


@pytest.fixture
def env(daemon_factory: Daemons) -> Env:
    return Env(daemon_factory)


def _git(repo: Path, *args: str, env: dict[str, str]) -> None:
    subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, timeout=60,
                   capture_output=True)


def _size(db: Path) -> int:
    # The database is the file plus its write-ahead log (recent writes live in the -wal file).
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def _retention_pass(db: Path, now: datetime, retention: RetentionConfig) -> dict[str, int]:
    """What the daemon's retention task does at ``now`` (see daemon/_app.py)."""
    store = await Store.open(db)
    try:
        removed = await store.prune(
            older_than=now - timedelta(days=retention.events_days),
            api_calls_older_than=now - timedelta(days=retention.api_calls_days),
        )
        await store.vacuum()
    finally:
        await store.close()
    return removed


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_backup_export_prune_vacuum(env: Env, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main", env=env.env)
    (repo / "PROJECT_SPEC.md").write_text(SPEC)
    _git(repo, "add", "-A", env=env.env)
    _git(repo, "commit", "-q", "-m", "spec", env=env.env)

    env.start()
    run_id = json.loads(env.brctl("--json", "submit", str(repo / "PROJECT_SPEC.md"),
                                  "--repo", str(repo)).stdout)["run_id"]
    env.brctl("status", run_id, "--follow")  # returns when the run has ended
    assert json.loads(env.brctl("--json", "status", run_id).stdout)["state"] == "succeeded"

    # Online backups while the daemon runs (operations.md, "Back up the database").
    backup = tmp_path / "backup.db"
    compact = tmp_path / "compact.db"
    subprocess.run(["sqlite3", str(env.db), f".backup '{backup}'"], check=True, timeout=60)
    subprocess.run(["sqlite3", str(env.db), f"VACUUM INTO '{compact}'"], check=True, timeout=60)
    for copy in (backup, compact):
        with sqlite3.connect(copy) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert _count(copy, f"SELECT count(*) FROM runs WHERE id = '{run_id}'") == 1

    # Export before pruning: every stored event of the run as a JSON line.
    exported = [json.loads(line) for line in env.brctl("export", run_id).stdout.splitlines()]
    stored = _count(env.db, f"SELECT count(*) FROM events WHERE run_id = '{run_id}'")
    assert stored > 0 and len(exported) == stored
    assert {e["type"] for e in exported} >= {"run.submitted", "run.succeeded"}
    env.stop()

    # The daemon's retention pass, as it would run 91 days from now with the default settings.
    retention = RetentionConfig()
    later = datetime.now(UTC) + timedelta(days=retention.events_days + 1)
    size_before = _size(env.db)
    removed = anyio.run(_retention_pass, env.db, later, retention)
    assert removed["events"] == stored
    assert _count(env.db, "SELECT count(*) FROM events") == 0
    assert _size(env.db) < size_before

    # The run itself and its tasks are still there for `brctl runs` / `brctl tasks`.
    env.start()
    runs = json.loads(env.brctl("--json", "runs").stdout)
    runs = runs["runs"] if isinstance(runs, dict) else runs
    assert [r["id"] for r in runs] == [run_id]
    tasks = json.loads(env.brctl("--json", "tasks", run_id).stdout)
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    assert tasks and all(t["state"] == "succeeded" for t in tasks)
