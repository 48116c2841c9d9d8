"""What a new user reads, found by trying every command of the contract on a real daemon:
the ping's backend reason, a failed check's report, the commit of a batch, the idle live view,
and output that survives brctl's fast exit."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from brctl._client import all_events
from brctl._output import format_runs
from brctl._render import plain_line
from tests.brctl.brctl_support import BRCTL, Daemon, time_zone

CALL_TIMEOUT_S = 60.0


def test_ping_puts_the_backend_reason_under_the_backend(daemon: Daemon) -> None:
    shown = daemon.brctl("ping")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("backend:"))
    # Not under the sandbox line, where it read as the sandbox's reason.
    assert lines[at + 1].strip() == "(--backend = simulated)"
    assert lines[at + 2].startswith("sandbox:")


def test_a_failed_check_of_a_silent_command_is_aligned_and_says_so(
    daemon: Daemon, realworld_repo: Path
) -> None:
    submitted = daemon.brctl("--json", "submit", str(realworld_repo / "PROJECT_SPEC.md"),
                             "--test-cmd", "false")
    assert submitted.exit_code == 0, submitted.output
    run_id = json.loads(submitted.stdout)["run_id"]
    assert daemon.brctl("status", run_id, "--follow").exit_code == 1  # the run failed
    tasks = json.loads(daemon.brctl("--json", "tasks", run_id).stdout)["tasks"]
    failed = next(t["id"] for t in tasks if t["state"] == "failed")
    checks = json.loads(daemon.brctl("--json", "task", failed).stdout)["verification"]["checks"]
    shown = daemon.brctl("task", failed).stdout.splitlines()

    report = shown[shown.index("verification: failed") + 1:]
    check_lines = [line for line in report if line.startswith(("  ok ", "  FAIL "))]
    assert len(check_lines) == len(checks) >= 2
    # Every message starts in the same column, after the check names.
    assert len({line.index(c["message"]) for line, c in zip(check_lines, checks,
                                                            strict=True)}) == 1
    tests_line = next(i for i, line in enumerate(report) if line.startswith("  FAIL tests"))
    # `false` prints nothing: say so, rather than "see the output tail" above nothing.
    assert report[tests_line + 1] == "      (the command printed nothing)"


@pytest.fixture
def india_time() -> Iterator[None]:
    # A zone 5:30 ahead of UTC, as a POSIX TZ string (no tz database needed).
    with time_zone("IST-5:30"):
        yield


def test_event_lines_and_runs_show_local_time(india_time: None) -> None:
    # Stored in UTC; shown in the user's time, as the live view's own clock already was.
    event = {"id": 1, "ts": "2026-12-01T18:00:02Z", "run_id": "r-0a1b2c3d",
             "type": "run.started", "data": {}}
    assert plain_line(event, None).startswith("23:30:02 r-0a1b2c3d run started")
    runs = format_runs([{"id": "r-0a1b2c3d", "state": "running", "task_count": 4,
                         "created_at": "2026-12-01T18:00:00.000Z", "title": "Todo API"}])
    assert "2026-12-01 23:30:00" in runs and "T18:00" not in runs


def test_a_batch_success_names_its_commit_as_a_commit() -> None:
    event = {"id": 7, "ts": "2026-12-01T18:00:02Z", "run_id": "r-0a1b2c3d",
             "batch_id": "r-0a1b2c3d:B001", "type": "batch.succeeded",
             "data": {"model": "claude-haiku-5-5", "commit": "555f835a36470e1f"}}
    line = plain_line(event, None)
    assert line.endswith(" B001 succeeded by claude-haiku-5-5 (commit 555f835a3647)"), line


@pytest.mark.timeout(60)  # a missing notice blocks the readline: fail then, not in 120 s
def test_the_live_view_of_every_run_says_it_waits_when_nothing_runs(daemon: Daemon) -> None:
    process = subprocess.Popen([*BRCTL, "--socket", str(daemon.socket), "status", "--follow"],
                               env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stderr is not None
        # Before: silence, which looks like a hang. The notice goes to stderr.
        notice = process.stderr.readline()
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=CALL_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert notice == "no active runs; waiting for the next one (Ctrl-C stops)\n"
    assert process.returncode == 130 and stdout == ""


def test_long_output_is_complete_through_a_pipe_despite_the_fast_exit(
    daemon: Daemon, realworld_repo: Path
) -> None:
    submitted = daemon.brctl("--json", "submit", str(realworld_repo / "PROJECT_SPEC.md"))
    run_id = json.loads(submitted.stdout)["run_id"]
    assert daemon.brctl("status", run_id, "--follow").exit_code == 0
    with daemon.client() as client:
        events = all_events(client, run_id)
    shown = daemon.brctl_process("--json", "logs", run_id, timeout_s=CALL_TIMEOUT_S)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    # Far more than one buffer's worth, every line whole: the fast exit (os._exit) loses
    # nothing. (click.echo flushes each line; console_main flushes again before leaving.)
    assert len(shown.stdout) > 8192
    assert [json.loads(line)["id"] for line in lines] == [e["id"] for e in events]


def test_plan_lists_the_features_as_a_table(daemon: Daemon, realworld_repo: Path) -> None:
    spec = str(realworld_repo / "PROJECT_SPEC.md")
    features = json.loads(daemon.brctl("--json", "plan", spec).stdout)["features"]
    shown = daemon.brctl("plan", spec).stdout.splitlines()
    at = shown.index("features:")
    header, rows = shown[at + 1], shown[at + 2:at + 2 + len(features)]
    assert header.split() == ["FEATURE", "LINE", "AFTER", "NAME"]
    for row, feature in zip(rows, features, strict=True):
        # One row per feature, its columns under the header's (not "id  name  line N").
        assert row[header.index("FEATURE"):].split()[0] == feature["id"]
        assert row[header.index("LINE"):].split()[0] == str(feature["line"])
        after = ",".join(feature["depends_on"]) or "-"
        assert row[header.index("AFTER"):].split()[0] == after
        assert row.endswith(feature["name"])
