"""The real daemon as a subprocess on a socket under tmp_path, driven over raw JSON-RPC."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
from pathlib import Path

import anyio
import pytest

from tests.conftest import (
    DaemonFactory,
    RpcError,
    all_events,
    wait_run_event,
    write_spec,
)
from tests.e2e.support import git, make_repo

FEATURES = [
    ("Storage", "database", [], ["app/db.py"]),
    ("Accounts", "backend", ["Storage"], ["app/accounts.py"]),
    ("Reports", "backend", ["Storage"], ["app/reports.py"]),
    ("Web", "frontend", ["Accounts", "Reports"], ["web/index.html"]),
]


async def test_submit_runs_to_success_and_says_simulated(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "PROJECT_SPEC.md", FEATURES)
    daemon = await daemon_factory.start()
    async with daemon.client() as client:
        ping = await client.call("daemon.ping")
        assert ping["backend"] == "simulated" and ping["simulated"] is True
        run = await client.call("run.submit", spec_path=str(spec), scratch=True, workers=2)
        # The reply comes at once; the run starts in the background.
        assert run["state"] in ("queued", "running", "succeeded")
        assert run["scratch_dir"] == str(daemon.home / "runs" / run["id"] / "scratch")
        await wait_run_event(daemon.socket, run["id"])
        info = await client.call("run.get", run_id=run["id"])
        assert info["state"] == "succeeded", info
        assert info["tasks_by_state"]["succeeded"] == info["task_count"] > 0
        assert {t["state"] for t in info["tasks"]} == {"succeeded"}
        events = await all_events(client, run["id"])
    types = [e["type"] for e in events]
    for expected in ("run.submitted", "run.started", "batch.dispatched", "task.state_changed",
                     "file.created", "verify.passed", "batch.succeeded", "run.succeeded"):
        assert expected in types, expected
    assert types[-1] == "run.succeeded"
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    # The scratch directory holds what the simulated backend wrote.
    scratch = daemon.home / "runs" / run["id"] / "scratch"
    assert (scratch / "app" / "db.py").read_text().startswith('"""app/db.py')
    assert "simulated" in daemon.stderr().lower()
    assert await daemon.stop() == 0


async def test_git_run_lands_on_its_branch_and_leaves_the_checkout_alone(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path, FEATURES)
    head_before = git(repo, "rev-parse", "HEAD")
    daemon = await daemon_factory.start()
    async with daemon.client() as client:
        run = await client.call("run.submit", spec_path=str(spec))
        assert run["branch"] == f"buildrunner/{run['id']}"
        event = await wait_run_event(daemon.socket, run["id"])
        assert event["type"] == "run.succeeded", await client.call("run.get", run_id=run["id"])
    files = set(git(repo, "ls-tree", "-r", "--name-only", run["branch"]).splitlines())
    assert {"app/db.py", "app/accounts.py", "app/reports.py", "web/index.html"} <= files
    assert git(repo, "rev-parse", "HEAD") == head_before
    assert git(repo, "status", "--porcelain") == ""
    assert not any((daemon.home / "worktrees" / run["id"]).glob("*"))


async def test_bad_frames_and_params_get_errors_and_the_daemon_keeps_serving(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = await daemon_factory.start()
    async with daemon.client() as bystander, daemon.client() as rude:
        await rude.send_raw(b"{this is not json\n")
        reply = await rude.read_frame()
        assert reply["error"]["code"] == -32700
        await rude.send_raw(b'{"jsonrpc":"2.0","id":7,"method":"no.such"}\n')
        assert (await rude.read_frame())["error"]["code"] == -32601
        with pytest.raises(RpcError) as bad:
            await rude.call("run.get", run_id=42)
        assert bad.value.code == -32602 and bad.value.data["param"] == "run_id"
        with pytest.raises(RpcError) as missing:
            await rude.call("run.get", run_id="r-00000000")
        assert missing.value.code == -32001
        assert missing.value.data == {"kind": "run", "id": "r-00000000"}
        with pytest.raises(RpcError) as spec_err:
            await rude.call("run.submit", spec_text="no features here")
        assert spec_err.value.code == -32010 and spec_err.value.data["errors"]
        with pytest.raises(RpcError) as both:
            await rude.call("spec.plan", spec_text="x", spec_path="/x")
        assert both.value.code == -32602
        # A frame over the limit closes that connection only.
        await rude.send_raw(b'{"pad":"' + b"x" * (9 * 1024 * 1024) + b'"}\n')
        with pytest.raises(EOFError):
            while True:
                await rude.read_frame()
        assert (await bystander.call("daemon.ping"))["pid"] == daemon.pid


async def test_spec_plan_matches_the_offline_planner(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "spec.md", FEATURES)
    daemon = await daemon_factory.start()
    async with daemon.client() as client:
        plan = await client.call("spec.plan", spec_path=str(spec))
    assert {"spec", "features", "tasks", "batches", "levels", "critical_path"} <= plan.keys()
    assert [f["name"] for f in plan["features"]] == [f[0] for f in FEATURES]


async def test_second_daemon_refuses_and_stale_socket_is_replaced(
    daemon_factory: DaemonFactory,
) -> None:
    daemon_factory.socket_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(daemon_factory.socket))  # a socket file nobody listens on (a crash's)
    stale.close()
    first = await daemon_factory.start()
    second = daemon_factory.spawn()
    assert await second.wait() == 1
    assert f"already running (pid {first.pid})" in second.stderr()
    async with first.client() as client:
        assert (await client.call("daemon.ping"))["pid"] == first.pid


async def test_sigterm_and_shutdown_exit_zero_and_remove_the_socket(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = await daemon_factory.start()
    assert await daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket.exists()
    again = await daemon_factory.start()
    async with again.client() as client:
        assert (await client.call("daemon.shutdown"))["stopping"] is True
    assert await again.wait() == 0
    assert not again.socket.exists()
    lines = [json.loads(line) for line in again.stderr().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "daemon.stopped" for line in lines)


async def test_failed_task_blocks_dependents_then_retry_finishes_the_run(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    fail_file = tmp_path / "fail.txt"
    fail_file.write_text("storage.1\n")
    env = daemon_factory.base_env(BUILDRUNNER_SIM_FAIL_FILE=str(fail_file))
    spec = write_spec(tmp_path / "spec.md", FEATURES)
    daemon = await daemon_factory.start(env=env)
    async with daemon.client() as client:
        run = await client.call("run.submit", spec_path=str(spec), scratch=True)
        failed = await wait_run_event(daemon.socket, run["id"])
        assert failed["type"] == "run.failed"
        tasks = {t["id"].split(":")[1]: t for t in await client.call("task.list",
                                                                     run_id=run["id"])}
        assert tasks["storage.1"]["state"] == "failed"
        assert "simulated failure" in tasks["storage.1"]["reason"]
        blocked = [t for t in tasks.values() if t["state"] == "blocked"]
        assert blocked and all("storage.1" in t["reason"] for t in blocked)
        with pytest.raises(RpcError) as not_failed:
            await client.call("task.retry", task_id=blocked[0]["id"])
        assert not_failed.value.code == -32002
        fail_file.write_text("")
        await client.call("task.retry", task_id=f"{run['id']}:storage.1")
        done = await wait_run_event(daemon.socket, run["id"], ("run.succeeded",),
                                    since=failed["id"])
        assert done["type"] == "run.succeeded"
        detail = await client.call("task.get", task_id=f"{run['id']}:storage.1")
        assert detail["attempts"] == 2 and detail["prompt"] and detail["verification"]["passed"]
        assert any(e["type"] == "task.state_changed" for e in detail["events"])


async def test_pause_resume_and_cancel_over_the_socket_with_two_runs(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    env = daemon_factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE="3")
    spec = write_spec(tmp_path / "spec.md", FEATURES)
    daemon = await daemon_factory.start("--workers", "2", env=env)
    async with daemon.client() as client:
        keep = await client.call("run.submit", spec_path=str(spec), scratch=True, workers=1)
        drop = await client.call("run.submit", spec_path=str(spec), scratch=True, workers=1)
        paused = await client.call("run.pause", run_id=keep["id"])
        assert paused["state"] == "paused"
        with pytest.raises(RpcError) as again:
            await client.call("run.pause", run_id=keep["id"])
        assert again.value.code == -32002 and again.value.data["state"] == "paused"
        cancelled = await client.call("run.cancel", run_id=drop["id"])
        assert cancelled["state"] == "cancelled"
        assert (await client.call("run.get", run_id=drop["id"]))["tasks_by_state"][
            "succeeded"] < cancelled["task_count"]
        resumed = await client.call("run.resume", run_id=keep["id"])
        assert resumed["state"] == "running"
        assert (await wait_run_event(daemon.socket, keep["id"]))["type"] == "run.succeeded"
        runs = {r["id"]: r["state"] for r in await client.call("run.list")}
        assert runs == {keep["id"]: "succeeded", drop["id"]: "cancelled"}
        costs = await client.call("costs.summary", run_id=keep["id"])
        assert costs["total_usd"] == 0.0


async def test_sighup_reloads_the_configuration(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\nworkers = 2\ngrace_period_s = 30\n")
    # A reload has no RPC event of its own: its log lines are the signal.
    daemon = await daemon_factory.start("--config", str(config), follow_stderr=True)
    async with daemon.client() as client:
        assert (await client.call("daemon.ping"))["workers"] == 2
        # workers applies at once; the grace period is taken at start-up (RESTART_REQUIRED)
        config.write_text("[daemon]\nworkers = 5\ngrace_period_s = 45\n")
        daemon.proc.send_signal(signal.SIGHUP)
        [reloaded] = await daemon.logged("config.reloaded")
        assert "daemon.workers" in reloaded["applied"]
        assert reloaded["needs_restart"] == ["daemon.grace_period_s"]
        assert (await client.call("daemon.ping"))["workers"] == 5

        # A broken file is refused: logged, the daemon goes on with the old values.
        config.write_text("[daemon]\nwrkers = 3\n")
        daemon.proc.send_signal(signal.SIGHUP)
        [failed] = await daemon.logged("config.reload_failed")
        assert "daemon.wrkers" in failed["error"]
        assert failed["hint"] == "the old configuration stays"
        assert daemon.proc.poll() is None
        assert (await client.call("daemon.ping"))["workers"] == 5
        assert len(daemon.log("config.reloaded")) == 1
    assert await daemon.stop() == 0




async def test_bad_settings_exit_1_with_a_clear_message_not_a_traceback(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    bad_latency = daemon_factory.spawn(
        env=daemon_factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE="fast"))
    assert await bad_latency.wait() == 1
    assert "BUILDRUNNER_SIM_MS_PER_MINUTE" in bad_latency.stderr()
    home_is_a_file = tmp_path / "home-file"
    home_is_a_file.write_text("")
    bad_home = daemon_factory.spawn("--home", str(home_is_a_file))
    assert await bad_home.wait() == 1
    assert "cannot use the state dir" in bad_home.stderr()
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[daemon]\nwrkers = 2\n")
    config_error = daemon_factory.spawn("--config", str(bad_config))
    assert await config_error.wait() == 1
    assert "daemon.wrkers" in config_error.stderr()
    for daemon in (bad_latency, bad_home, config_error):
        assert "Traceback" not in daemon.stderr()


async def test_a_subscription_opened_mid_run_sees_every_event_once_in_order(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    env = daemon_factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE="2")
    spec = write_spec(tmp_path / "spec.md", FEATURES)
    daemon = await daemon_factory.start(env=env)
    async with daemon.client() as client, daemon.client() as watcher:
        run = await client.call("run.submit", spec_path=str(spec), scratch=True, workers=2)
        await wait_run_event(daemon.socket, run["id"], ("batch.succeeded",))
        # Subscribed while batches are being written: replay and live must join exactly.
        await watcher.call("events.subscribe", run_id=run["id"], since=0)
        seen: list[int] = []
        with anyio.fail_after(60):
            while True:
                note = await watcher.next_notification()
                seen.append(note["params"]["id"])
                if note["params"]["type"] == "run.succeeded":
                    break
        stored = [e["id"] for e in await all_events(client, run["id"])]
    assert seen == stored


async def test_task_get_reads_old_and_unreadable_stored_reports_without_failing(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "PROJECT_SPEC.md", FEATURES[:2])
    daemon = await daemon_factory.start()
    async with daemon.client() as client:
        run = await client.call("run.submit", spec_path=str(spec), scratch=True)
        await wait_run_event(daemon.socket, run["id"])
        first, second, *_ = [t["id"] for t in await client.call("task.list", run_id=run["id"])]
        fresh = (await client.call("task.get", task_id=first))["verification"]
    assert await daemon.stop() == 0
    assert fresh["passed"] is True and fresh["checks"]
    # Rows as an early version kept them, and one that no version can read.
    with sqlite3.connect(daemon.home / "buildrunner.db") as db:
        db.execute("UPDATE task_texts SET verification = ? WHERE task_id = ?",
                   ('{"passed": true}', first))
        db.execute("UPDATE task_texts SET verification = ? WHERE task_id = ?",
                   ('{"passed": true, "checks": "all of them"}', second))
    daemon = await daemon_factory.start()
    async with daemon.client() as client:
        old = (await client.call("task.get", task_id=first))["verification"]
        unreadable = (await client.call("task.get", task_id=second))["verification"]
    shown = daemon.brctl("task", second)
    assert await daemon.stop() == 0
    # The same keys as a fresh report, typed.
    assert old == {**fresh, "passed": True, "checks": [], "test_command": None,
                   "test_counts": None, "passed_tests": [], "tree": None}
    assert unreadable["passed"] is False
    [marker] = unreadable["checks"]
    assert marker["name"] == "report" and marker["passed"] is False
    assert "cannot be read (it says passed: true)" in marker["message"]
    assert shown.returncode == 0, shown.stderr
    assert "verification: failed" in shown.stdout
    assert "FAIL report  the stored verification report cannot be read" in shown.stdout
