"""Contract: the daemon's life (SIGTERM/SIGINT/shutdown exit 0), the simulated backend
labelled in ping and logs, BUILDRUNNER_SIM_MS_PER_MINUTE, --backend/--workers/--log-format,
and connections from another uid refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.contract._support import (
    Daemon,
    clean_env,
    json_out,
    make_repo,
    start_daemon,
    submit,
    wait_event,
    wait_run,
)


def _env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], Path]:
    socket_path = tmp_path / "rt" / "brd.sock"
    env = clean_env(BUILDRUNNER_HOME=str(tmp_path / "state"), BUILDRUNNER_SOCKET=str(socket_path),
                    **extra)
    return env, socket_path


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))


def test_simulated_is_the_default_without_a_key_and_says_so(daemon: Daemon) -> None:
    assert "ANTHROPIC_API_KEY" not in daemon.env
    ping = daemon.rpc("daemon.ping")
    assert ping["backend"] == "simulated"
    assert "simulated" in daemon.brctl("ping").stdout.lower()
    assert "simulated" in daemon.stderr().lower(), "the log says the backend is simulated"


def test_json_logs_are_structured_and_label_simulated(tmp_path: Path) -> None:
    env, socket_path = _env(tmp_path)
    daemon = start_daemon(tmp_path, "--backend", "simulated", "--log-format", "json",
                          "--workers", "2", env=env, socket_path=socket_path)
    try:
        ping = daemon.rpc("daemon.ping")
        assert ping["backend"] == "simulated" and ping["workers"] == 2
    finally:
        assert daemon.stop_sync() == 0
    lines = [line for line in daemon.stderr().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every stderr line is one JSON record
    assert all(isinstance(r, dict) for r in records)
    assert any("simulated" in json.dumps(r).lower() for r in records)


def test_console_logs_label_simulated(tmp_path: Path) -> None:
    env, socket_path = _env(tmp_path)
    daemon = start_daemon(tmp_path, "--log-format", "console", env=env, socket_path=socket_path)
    try:
        assert daemon.rpc("daemon.ping")["backend"] == "simulated"
    finally:
        assert daemon.stop_sync() == 0
    assert "simulated" in daemon.stderr().lower()


def test_sigterm_with_work_in_flight_exits_0_and_the_run_continues(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\ngrace_period_s = 1.0\n", encoding="utf-8")
    env, socket_path = _env(tmp_path, BUILDRUNNER_SIM_MS_PER_MINUTE="1000000",
                            BUILDRUNNER_CONFIG=str(config))
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path, name="first")
    try:
        repo = tmp_path / "repo"
        run_id = submit(daemon, make_repo(repo), repo)
        wait_event(daemon, run_id, "batch.dispatched")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_sync(30) == 0, daemon.stderr()
    finally:
        daemon.kill()
    # On start it recovers: the run that was running continues; the interrupted work is
    # retried, and no batch is completed twice.
    env["BUILDRUNNER_SIM_MS_PER_MINUTE"] = "0"
    again = start_daemon(tmp_path, env=env, socket_path=socket_path, name="second")
    try:
        assert wait_run(again, run_id)["state"] == "succeeded"
        events = again.rpc("events.list", run_id=run_id, limit=10000)
    finally:
        assert again.stop_sync() == 0
    succeeded = [e["batch_id"] for e in events if e["type"] == "batch.succeeded"]
    assert succeeded and len(succeeded) == len(set(succeeded)), succeeded


def _sigint_is_announced_and_exits_0(daemon: Daemon, after: int) -> None:
    """SIGINT: the shutdown is announced (STOPPING=1 after notify line ``after``, then a
    STATUS= line saying so) and the daemon exits 0."""
    daemon.signal(signal.SIGINT)
    stopping = daemon.wait_notify("STOPPING=1", start=after)
    daemon.wait_notify("STATUS=stopping", start=stopping)
    assert daemon.wait_sync(30) == 0, daemon.stderr()


def test_sigint_exits_0_and_notifies_readiness(tmp_path: Path) -> None:
    """systemd ``Type=notify``: READY=1 on $NOTIFY_SOCKET; SIGINT sends STOPPING=1 and a
    STATUS= line, and stops it with exit 0."""
    env, socket_path = _env(tmp_path)
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path)  # returns at READY=1
    try:
        assert f"MAINPID={daemon.proc.pid}" in daemon.notifications
        ready = daemon.notifications.index("READY=1")
        assert daemon.rpc("daemon.ping")["pid"] == daemon.proc.pid
        _sigint_is_announced_and_exits_0(daemon, after=ready)
    finally:
        daemon.kill()


def test_notify_reports_run_counts_and_stopping(tmp_path: Path) -> None:
    """systemd sees STATUS= lines that count the active runs as they change, then STOPPING=1
    (and a stopping STATUS=) when the daemon shuts down."""
    env, socket_path = _env(tmp_path, BUILDRUNNER_SIM_MS_PER_MINUTE="0")
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path)
    try:
        seen = daemon.notifications
        ready = seen.index("READY=1")
        assert any(line.startswith("STATUS=serving on") for line in seen), seen
        repo = tmp_path / "repo"
        run_id = submit(daemon, make_repo(repo), repo)
        started = daemon.wait_notify("STATUS=1 active run(s)", start=ready)
        assert wait_run(daemon, run_id)["state"] == "succeeded"
        # the run's end is counted too: back to no active run
        daemon.wait_notify("STATUS=0 active run(s)", start=started)
        _sigint_is_announced_and_exits_0(daemon, after=started)
    finally:
        daemon.kill()
    seen = daemon.notifications
    assert seen.count("STOPPING=1") == 1 and seen.count("READY=1") == 1, seen


def test_brctl_shutdown_stops_the_daemon_with_exit_0(tmp_path: Path) -> None:
    env, socket_path = _env(tmp_path)
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path)
    try:
        result = daemon.brctl("--json", "shutdown")
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)
        assert daemon.wait_sync(30) == 0, daemon.stderr()
    finally:
        daemon.kill()


def test_sim_ms_per_minute_paces_the_simulated_batches(tmp_path: Path) -> None:
    ms_per_minute = 5
    env, socket_path = _env(tmp_path, BUILDRUNNER_SIM_MS_PER_MINUTE=str(ms_per_minute))
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path)
    try:
        repo = tmp_path / "repo"
        spec = make_repo(repo)
        plan = json_out(daemon.brctl("--json", "plan", str(spec)))
        shortest = min(task["estimate_minutes"] for task in plan["tasks"])
        run_id = submit(daemon, spec, repo)
        assert wait_run(daemon, run_id)["state"] == "succeeded"
        events = daemon.rpc("events.list", run_id=run_id, limit=10000)
    finally:
        assert daemon.stop_sync() == 0
    dispatched = {e["batch_id"]: _ts(e["ts"]) for e in events if e["type"] == "batch.dispatched"}
    assert dispatched
    for batch_id, start in dispatched.items():
        written = min(_ts(e["ts"]) for e in events
                      if e["type"] in ("file.created", "file.modified")
                      and e.get("batch_id") == batch_id)
        # The stand-in waits at least ms_per_minute per estimated minute before writing.
        # (A lower bound from the daemon's own timestamps: never flaky, and 0 ms would fail.)
        waited_ms = (written - start).total_seconds() * 1000
        assert waited_ms >= shortest * ms_per_minute - 2, (batch_id, waited_ms, shortest)


NOBODY = 65534


def _connect_as_nobody(socket_path: Path) -> str:
    """Send a ping as another uid with socat; what happened ("refused: ..." or "reply:...")."""
    socat = shutil.which("socat")
    assert socat, "socat must be installed (.ci/run installs it)"
    result = subprocess.run(
        [socat, "-t", "5", "-", f"UNIX-CONNECT:{socket_path}"],
        input='{"jsonrpc":"2.0","id":1,"method":"daemon.ping"}\n', capture_output=True,
        text=True, timeout=30, user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
        env={"PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        return "refused:" + result.stderr.strip()
    return "reply:" + result.stdout


def _check_refused(outcome: str) -> None:
    if outcome.startswith("refused:"):
        return
    assert outcome.startswith("reply:"), outcome
    for line in outcome.removeprefix("reply:").splitlines():
        if line.strip():
            reply = json.loads(line)
            assert "result" not in reply, f"another uid got an answer: {reply}"
            assert "error" in reply


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_another_uid_is_refused(tmp_path: Path) -> None:
    env, socket_path = _env(tmp_path)
    daemon = start_daemon(tmp_path, env=env, socket_path=socket_path)
    try:
        # As the daemon leaves it (folder 0700): another uid cannot get in.
        for parent in (tmp_path, *tmp_path.parents):  # let nobody reach the folder itself
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        _check_refused(_connect_as_nobody(socket_path))
        # Even with the file permissions opened up, the daemon itself refuses the peer.
        os.chmod(socket_path.parent, 0o711)
        os.chmod(socket_path, 0o666)
        _check_refused(_connect_as_nobody(socket_path))
        assert daemon.rpc("daemon.ping")["pid"] == daemon.proc.pid  # still serving its owner
    finally:
        assert daemon.stop_sync() == 0
