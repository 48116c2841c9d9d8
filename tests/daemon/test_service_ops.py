"""The daemon as a service manager sees it: READY/STOPPING over sd_notify (the harness's
notify socket), SIGHUP reload, --check-config, and log lines that carry no secrets. Real
processes, real sockets."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.daemons import CONSOLE_SCRIPT, Daemons

BUILDRUNNERD = CONSOLE_SCRIPT[0]
PLANTED = "sk-ant-api03-" + "Qw7" * 30


def test_notify_reload_and_stop(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nlog_level = "info"\n')
    factory = Daemons(tmp_path, socket=tmp_path / "d.sock")
    # A key in the environment must never show up in a log line (the backend is forced to
    # simulated so nothing calls out).
    env = factory.base_env(BUILDRUNNER_CONFIG=str(config), ANTHROPIC_API_KEY=PLANTED)
    daemon = factory.spawn("--log-format", "json", env=env, command=CONSOLE_SCRIPT,
                           follow_stderr=True)
    try:
        daemon.wait_ready()
        ready = daemon.notifications[daemon.notifications.index("READY=1"):]
        assert f"MAINPID={daemon.pid}" in ready
        assert any(line.startswith("STATUS=") for line in ready)
        assert daemon.socket.exists()  # READY means the control socket is listening
        # ...and the token counter's encoding is loaded: the first submit does not pay it.
        [ready_log] = daemon.wait_log("daemon.ready")
        assert ready_log["tokenizer_load_ms"] > 0
        # ...and so are the modules of a run (the workspace: ~60 ms on the first submit).
        assert ready_log["modules_load_ms"] > 0

        # SIGHUP: one key applies now, one needs a restart; the daemon says which.
        config.write_text('[daemon]\nlog_level = "debug"\nmax_frame_bytes = 1048576\n')
        daemon.signal(signal.SIGHUP)
        [reloaded] = daemon.wait_log("config.reloaded")
        assert reloaded["applied"] == ["daemon.log_level"]
        assert reloaded["needs_restart"] == ["daemon.max_frame_bytes"]

        # A broken file is refused with the key and the line; the daemon keeps running.
        config.write_text('[daemon]\nlog_level = "debug"\nworkerz = 2\n')
        daemon.signal(signal.SIGHUP)
        [failed] = daemon.wait_log("config.reload_failed")
        assert "daemon.workerz" in failed["error"] and f"{config}:3" in failed["error"]
        assert daemon.proc.poll() is None

        daemon.signal(signal.SIGTERM)
        daemon.wait_notify("STOPPING=1")
        assert daemon.wait_sync(60) == 0
    finally:
        factory.close()
    log = daemon.stderr()
    assert log.strip() and PLANTED not in log
    assert PLANTED[:24] not in log


def test_check_config_flag(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[daemon]\nworkers = 6\n")
    result = subprocess.run([str(BUILDRUNNERD), "--config", str(good), "--check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "workers = 6" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nworkers = 6\n[agent]\nsandbox = 'docker'\n")
    result = subprocess.run([str(BUILDRUNNERD), "--config", str(bad), "--check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{bad}:4" in result.stderr and "agent.sandbox" in result.stderr
