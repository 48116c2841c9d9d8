"""Crash recovery for real: SIGKILL a daemon at random points of a run, restart it, and the
run still ends with every task succeeded exactly once."""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path

import anyio

from tests.conftest import DaemonFactory, all_events, wait_run_event, write_spec

# Eight features in a diamond-ish DAG; the heuristic planner turns each into a few tasks.
FEATURES = [
    ("Core", "backend", [], ["core/base.py", "core/util.py"]),
    ("Storage", "database", ["Core"], ["store/db.py", "store/schema.sql"]),
    ("Accounts", "backend", ["Storage"], ["app/accounts.py"]),
    ("Billing", "backend", ["Storage"], ["app/billing.py"]),
    ("Search", "backend", ["Storage"], ["app/search.py"]),
    ("Admin", "frontend", ["Accounts"], ["web/admin.html"]),
    ("Dashboard", "frontend", ["Billing", "Search"], ["web/dash.html"]),
    ("Docs", "docs", ["Admin", "Dashboard"], ["docs/guide.md"]),
]


async def test_kill_9_at_random_points_then_every_task_succeeds_exactly_once(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    rng = random.Random(20261124)
    spec = write_spec(tmp_path / "spec.md", FEATURES)
    # ~1 s of simulated work per 60-minute task: a kill lands mid-batch most of the time.
    env = daemon_factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE="4")
    daemon = await daemon_factory.start("--workers", "3", env=env)
    async with daemon.client() as client:
        run = await client.call("run.submit", spec_path=str(spec), scratch=True, workers=3)
    run_id = run["id"]
    kills = 0
    for _ in range(4):
        # Wait for a random amount of progress (events, not time), then kill -9.
        target = rng.randint(3, 12)
        async with daemon.client() as client:
            await client.call("events.subscribe", run_id=run_id,
                              since=(await client.call("events.list", run_id=run_id,
                                                       limit=10000))[-1]["id"])
            seen = 0
            finished = False
            with anyio.fail_after(60):
                while seen < target:
                    note = await client.next_notification()
                    seen += 1
                    if note["params"]["type"] in ("run.succeeded", "run.failed"):
                        finished = True
                        break
        if finished:
            break
        assert await daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        kills += 1
        daemon = await daemon_factory.start("--workers", "3", env=env)
    assert kills >= 3  # several restarts, not one lucky one
    event = await wait_run_event(daemon.socket, run_id, timeout_s=90)
    async with daemon.client() as client:
        info = await client.call("run.get", run_id=run_id)
        events = await all_events(client, run_id)
    assert event["type"] == "run.succeeded", info
    assert {t["state"] for t in info["tasks"]} == {"succeeded"}
    succeeded = Counter(
        e["task_id"] for e in events
        if e["type"] == "task.state_changed" and e["data"]["to"] == "succeeded"
    )
    assert set(succeeded) == {t["id"] for t in info["tasks"]}
    assert set(succeeded.values()) == {1}, succeeded
    assert [e["type"] for e in events].count("run.succeeded") == 1
    # The kills really interrupted work: some batch was re-queued by recovery.
    assert any(e["type"] == "batch.requeued" for e in events)
    assert await daemon.stop() == 0


async def test_sigterm_mid_run_interrupts_within_the_grace_and_a_restart_finishes(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "spec.md", FEATURES[:3])
    # 60-minute tasks take ~3 s each: SIGTERM lands while batches are in flight.
    env = daemon_factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE="50",
                                  BUILDRUNNER_GRACE_PERIOD_S="0.2")
    daemon = await daemon_factory.start(env=env)
    async with daemon.client() as client:
        run = await client.call("run.submit", spec_path=str(spec), scratch=True)
    await wait_run_event(daemon.socket, run["id"], ("batch.dispatched",))
    assert await daemon.stop(signal.SIGTERM, timeout_s=20) == 0
    assert not daemon.socket.exists()
    fast = daemon_factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE="0")
    daemon = await daemon_factory.start(env=fast)
    assert (await wait_run_event(daemon.socket, run["id"]))["type"] == "run.succeeded"
    async with daemon.client() as client:
        events = await all_events(client, run["id"])
        info = await client.call("run.get", run_id=run["id"])
    requeued = [e for e in events if e["type"] == "batch.requeued"]
    assert requeued and all("interrupted" in e["data"]["reason"] for e in requeued)
    succeeded = Counter(e["task_id"] for e in events if e["type"] == "task.state_changed"
                        and e["data"]["to"] == "succeeded")
    assert set(succeeded.values()) == {1} and len(succeeded) == info["task_count"]
