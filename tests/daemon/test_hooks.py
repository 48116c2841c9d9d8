"""When a run ends: the ``hooks.on_run_end`` command gets the run's summary in its environment,
runs under a timeout that kills what it started, and its failures never stop the daemon; a
desktop notification goes out where ``notify-send`` exists."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec

from buildrunnerd import protocol
from buildrunnerd.daemon._hooks import run_command, run_summary_env
from tests.conftest import DaemonFactory, wait_run_event

SPEC = """# {title}

A project for the hook tests.

## Features

### Storage

Domain: database

#### Requirements
- [ ] `app/db.py` stores things.

#### Acceptance Criteria
- [ ] Storage works.
"""

# Run by the hook command and by the stand-in notify-send: reports what it was given.
REPORTER = """\
import json, os, socket, sys
env = {k: v for k, v in os.environ.items() if k.startswith(("BUILDRUNNER_RUN_", "ANTHROPIC_"))}
message = json.dumps({"kind": sys.argv[1], "argv": sys.argv[2:], "env": env}).encode()
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(message, os.environ["HOOK_SIGNAL"])
"""


def _info(**changes: Any) -> protocol.RunInfo:
    base = protocol.RunInfo(id="r-1", state="failed", title="Demo", spec_path=None, repo=None,
                            branch=None, created_at="2026-12-01T10:00:00.000Z",
                            tasks_by_state={"succeeded": 2, "failed": 1}, task_count=3)
    return msgspec.structs.replace(base, **changes)


def test_the_summary_env_is_bounded_and_cannot_carry_nul_bytes() -> None:
    # A failure reason can quote what the model's tests printed: hostile text.
    env = run_summary_env(_info(reason="boom\x00; rm -rf ~ $(reboot)\n" + "x" * 100_000))
    assert env["BUILDRUNNER_RUN_ID"] == "r-1" and env["BUILDRUNNER_RUN_STATE"] == "failed"
    assert (env["BUILDRUNNER_RUN_TASKS"], env["BUILDRUNNER_RUN_TASKS_SUCCEEDED"],
            env["BUILDRUNNER_RUN_TASKS_FAILED"]) == ("3", "2", "1")
    assert all("\x00" not in v for v in env.values())
    assert all(len(v) <= 64_000 for v in env.values())
    assert len(env["BUILDRUNNER_RUN_REASON"]) <= 4000
    assert "\n" not in env["BUILDRUNNER_RUN_SUMMARY"]
    assert json.loads(env["BUILDRUNNER_RUN_JSON"])["id"] == "r-1"


async def test_a_timed_out_command_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code, _, timed_out = await run_command(
        ["/bin/sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"],
        env=dict(os.environ), timeout_s=1.0,
    )
    assert timed_out and code is None
    child = int(pid_file.read_text())  # noqa: ASYNC240 (a tiny file)
    # The orphaned `sleep` was killed with its group: its pidfd reports that it ended.
    try:
        pidfd = os.pidfd_open(child)
    except ProcessLookupError:
        return  # gone already
    try:
        with anyio.fail_after(5):
            await anyio.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def test_a_failing_command_reports_its_exit_code_and_stderr() -> None:
    code, stderr, timed_out = await run_command(
        ["/bin/sh", "-c", "echo it broke >&2; exit 3"], env=dict(os.environ), timeout_s=10.0)
    assert (code, stderr.strip(), timed_out) == (3, "it broke", False)


async def test_the_hook_gets_the_summary_failures_are_logged_and_notify_send_is_called(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    reporter = tmp_path / "reporter.py"
    reporter.write_text(REPORTER)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    notify_send = bin_dir / "notify-send"
    notify_send.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{reporter}" notify "$@"\n')
    notify_send.chmod(0o755)
    config = tmp_path / "config.toml"
    hook = (f'"{sys.executable}" "{reporter}" hook; case "$BUILDRUNNER_RUN_TITLE" in '
            'Broken*) echo the hook broke >&2; exit 3;; esac')
    config.write_text(f"[hooks]\non_run_end = {json.dumps(hook)}\ntimeout_s = 20.0\n")
    signal_path = tmp_path / "hook.sock"
    async with await anyio.create_unix_datagram_socket(local_path=signal_path) as inbox:
        env = daemon_factory.base_env(HOOK_SIGNAL=str(signal_path),
                                      PATH=f"{bin_dir}:{os.environ['PATH']}",
                                      ANTHROPIC_API_KEY="sk-ant-not-for-hooks")
        daemon = await daemon_factory.start("--config", str(config), env=env)

        async def next_report() -> dict[str, Any]:
            with anyio.fail_after(30):
                data, _ = await inbox.receive()
            report: dict[str, Any] = json.loads(data)
            return report

        async with daemon.client() as client:
            broken = await client.call("run.submit", spec_text=SPEC.format(title="Broken"))
            await wait_run_event(daemon.socket, broken["id"])
            first = {(r := await next_report())["kind"]: r for _ in range(2)}
            # The daemon goes on: the next run ends, with its hook and notification.
            ok = await client.call("run.submit", spec_text=SPEC.format(title="Fine"))
            await wait_run_event(daemon.socket, ok["id"])
            second = {(r := await next_report())["kind"]: r for _ in range(2)}
            assert (await client.call("daemon.ping"))["pid"] == daemon.pid
        assert await daemon.stop() == 0
    assert first["hook"]["env"]["BUILDRUNNER_RUN_ID"] == broken["id"]
    hook_env = second["hook"]["env"]
    assert hook_env["BUILDRUNNER_RUN_ID"] == ok["id"]
    assert hook_env["BUILDRUNNER_RUN_STATE"] == "succeeded"
    assert hook_env["BUILDRUNNER_RUN_TITLE"] == "Fine"
    assert hook_env["BUILDRUNNER_RUN_TASKS"] == hook_env["BUILDRUNNER_RUN_TASKS_SUCCEEDED"]
    assert int(hook_env["BUILDRUNNER_RUN_TASKS"]) > 0
    assert hook_env["BUILDRUNNER_RUN_SCRATCH_DIR"].endswith(f"/runs/{ok['id']}/scratch")
    assert json.loads(hook_env["BUILDRUNNER_RUN_JSON"])["id"] == ok["id"]
    assert not [k for k in hook_env if k.startswith("ANTHROPIC_")]  # no key for the hook
    argv = second["notify"]["argv"]
    assert f"BuildRunner: run {ok['id']} succeeded" in argv and any("Fine" in a for a in argv)
    log = [json.loads(line) for line in daemon.stderr().splitlines() if line.startswith("{")]
    failed = [e for e in log if e.get("event") == "hook.failed"]
    assert failed and failed[0]["exit_code"] == 3 and "the hook broke" in failed[0]["stderr"]
    assert failed[0]["run_id"] == broken["id"]
