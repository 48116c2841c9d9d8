"""The real daemon's operational behaviour: the whole-batch timeout, the ids on every log line
of a batch, and the retention pass (prune + vacuum) on its configured schedule."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import DaemonFactory, wait_run_event

SPEC = """# Ops

A project written by the tests.

## Features

### Storage
Domain: database
Keep records in `app/store.py`.

### Reports
**Depends on:** Storage
Domain: backend
Render reports in `app/reports.py`.
"""


async def test_batch_timeout_fails_the_batch_with_a_clear_reason(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[agent]\nbatch_timeout_s = 0.3\n")
    # Every task would take days: only the timeout can end the batch.
    env = daemon_factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE="1000000")
    daemon = await daemon_factory.start("--config", str(config), env=env)
    async with daemon.client() as client:
        run = await client.call("run.submit", spec_text=SPEC)
        event = await wait_run_event(daemon.socket, run["id"], timeout_s=60)
        info = await client.call("run.get", run_id=run["id"])
        failed = await client.call("events.list", run_id=run["id"], types=["batch.failed"])
    assert await daemon.stop() == 0
    assert event["type"] == "run.failed"
    assert len(failed) == 1
    assert failed[0]["data"]["reason"].startswith("batch timed out after 0.3 s")
    states = {t["id"].split(":", 1)[1]: (t["state"], t.get("reason")) for t in info["tasks"]}
    first = [s for s in states.values() if s[0] == "failed"]
    assert first and all("batch timed out after 0.3 s" in (r or "") for _, r in first)
    assert any(s == "blocked" for s, _ in states.values())


async def test_every_log_line_of_a_batch_carries_run_batch_and_task_ids(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = await daemon_factory.start("--log-format", "json")
    async with daemon.client() as client:
        run = await client.call("run.submit", spec_text=SPEC)
        await wait_run_event(daemon.socket, run["id"], timeout_s=60)
        info = await client.call("run.get", run_id=run["id"])
    assert await daemon.stop() == 0
    assert info["state"] == "succeeded"
    tasks_of = {b["id"]: b["task_ids"] for b in info["batches"]}
    lines = [e for e in daemon.log() if "batch_id" in e]
    assert {e["batch_id"] for e in lines if e.get("event") == "batch.started"} == set(tasks_of)
    for entry in lines:
        assert entry.get("run_id") == run["id"], entry
        assert entry.get("task_id") == ",".join(tasks_of[entry["batch_id"]]), entry
    finished = [e for e in lines if e.get("event") == "batch.finished"]
    assert len(finished) == len(tasks_of) and all(e["status"] == "succeeded" for e in finished)


async def test_retention_pass_prunes_old_events_of_finished_runs_only(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    # Batches never finish by themselves: run A is cancelled (finished), run B stays active.
    env = daemon_factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE="1000000")
    quiet = tmp_path / "quiet.toml"
    quiet.write_text("[daemon]\ngrace_period_s = 0.2\n[retention]\nfirst_pass_delay_s = 3600\n")
    daemon = await daemon_factory.start("--config", str(quiet), env=env)
    async with daemon.client() as client:
        finished = (await client.call("run.submit", spec_text=SPEC))["id"]
        await client.call("run.cancel", run_id=finished)
        active = (await client.call("run.submit", spec_text=SPEC))["id"]
        await wait_run_event(daemon.socket, active, ("batch.dispatched",), timeout_s=30)
    assert await daemon.stop() == 0
    assert not daemon.log("retention.done")

    # Everything stored so far is a year old (direct SQL: the daemon is stopped).
    db = daemon.home / "buildrunner.db"
    with sqlite3.connect(db) as conn:
        aged = conn.execute("UPDATE events SET ts = '2000-01-01T00:00:00.000Z'").rowcount
    conn.close()
    assert aged > 0

    eager = tmp_path / "eager.toml"
    eager.write_text("[daemon]\ngrace_period_s = 0.2\n[retention]\nevents_days = 30\n"
                     "first_pass_delay_s = 0.1\nvacuum_interval_hours = 0.0003\n")
    daemon = await daemon_factory.start("--config", str(eager), env=env, follow_stderr=True)
    # The first pass, then one more on the interval (about a second later): the log is the
    # only signal of a background pass.
    done = await daemon.logged("retention.done", count=2)
    async with daemon.client() as client:
        gone = await client.call("events.list", run_id=finished)
        kept = await client.call("events.list", run_id=active)
        state = (await client.call("run.get", run_id=active))["state"]
    assert await daemon.stop() == 0
    assert done[0]["events"] > 0
    assert gone == []
    assert state == "running"
    # The active run keeps its whole (old) history, from its submission on.
    assert kept[0]["type"] == "run.submitted"
    assert kept[0]["ts"].startswith("2000-01-01")


async def test_a_quiet_subscriber_outlives_the_idle_timeout(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    # `brctl logs --follow` on a quiet run says nothing for hours: the idle timeout that closes
    # silent clients must not close a subscription.
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\nclient_idle_timeout_s = 0.5\n")
    daemon = await daemon_factory.start("--config", str(config))
    async with daemon.client() as subscriber, daemon.client() as idle:
        await subscriber.call("events.subscribe")
        # The silent, non-subscribed connection is closed by the timeout...
        await idle.send_raw(b"")
        try:
            await idle.read_frame(timeout_s=30)
        except EOFError:
            pass
        else:
            raise AssertionError("an idle connection was not closed by the idle timeout")
        # ...while the subscriber, silent just as long, still gets the next run's events.
        async with daemon.client() as submitter:
            run = await submitter.call("run.submit", spec_text=SPEC)
        note = await subscriber.next_notification(timeout_s=30)
        assert note["method"] == "event" and note["params"]["run_id"] == run["id"]
