"""The real daemon with ``--backend claude-code``: the real Claude Code CLI (bundled in the
``claude-agent-sdk`` wheel), in the sandbox, against the fake Messages API.

The fake plays the model: it answers the CLI's requests with the CLI's own file tools
(``Write``, ``Read``) and BuildRunner's bash tool, reading the worktree from the system prompt
and the files from the batch prompt.
"""

from __future__ import annotations

import json
import re
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import watchfiles

from buildrunnerd.agent import CostTable
from buildrunnerd.agent._claude_cli import find_claude_cli
from buildrunnerd.agent._claude_sessions import transcript_path
from buildrunnerd.config import PricingConfig
from tests.conftest import DaemonFactory, DaemonProcess, wait_run_event
from tests.e2e.support import HeldReply, git, grep_tree, make_repo, run_to_end
from tests.fakeapi import (
    API_KEY,
    OAUTH_TOKEN,
    ErrorReply,
    FakeAnthropic,
    FakeRequest,
    Reply,
    text,
    tool_use,
    usage_limit,
)

_CLI = find_claude_cli({"PATH": ""})  # the bundled one (PATH ignored on purpose)
pytestmark = [
    pytest.mark.skipif(_CLI is None, reason="claude-agent-sdk (the claude-code extra) is not "
                       "installed: pip install -e '.[claude-code]'"),
    pytest.mark.timeout(240),
]
BASH = "mcp__buildrunner__bash"  # BuildRunner's confined bash, not the CLI's own
# Required files and the planner's suggestions, as the prompt lists them: a diligent fake
# agent writes both.
_FILES = re.compile(r"^(?:Files|Suggested files \([^)]*\)): (.*)$", re.MULTILINE)
_WORKTREE = re.compile(r"repository worktree at (\S+?):")


def _all_text(req: FakeRequest) -> str:
    return json.dumps(req.body.get("system")) + json.dumps(req.messages)


def named_files(req: FakeRequest) -> list[str]:
    """The files the batch's tasks name, as the prompt builder lists them."""
    first = json.dumps(req.messages[0]["content"]) if req.messages else ""
    first = first.encode().decode("unicode_escape", "replace")
    return list(dict.fromkeys(f for line in _FILES.findall(first)
                              for f in re.findall(r"`([^`]+)`", line)))


def worktree_of(req: FakeRequest) -> str:
    """The worktree of this session: the latest one BuildRunner named (a moved session is
    told its new one)."""
    found = _WORKTREE.findall(json.dumps(req.body.get("system")))
    moved = re.findall(r"fresh worktree \((\S+?)\)", json.dumps(req.messages))
    return str((moved or found)[-1])


def is_batch_request(req: FakeRequest) -> bool:
    return bool(req.body.get("tools")) and bool(named_files(req))


def builder(req: FakeRequest, skipped_turns: int = 0) -> Reply:
    """A model that writes each named file with Claude Code's Write tool (one per turn),
    runs Bash once, and ends; told its worktree moved, it writes them all again.
    ``skipped_turns``: turns another script played first."""
    if not is_batch_request(req):
        return Reply([text("ok")], "end_turn")  # a side call
    files = named_files(req)
    wt = worktree_of(req)
    turn = req.assistant_turns() - skipped_turns
    users = [m for m in req.messages if m.get("role") == "user"]
    last = json.dumps(users[-1]["content"]) if users else ""
    if "fresh worktree" in last:
        return Reply([text("Redoing my files."), *[write(wt, f, turn) for f in files]],
                     "tool_use")
    if "Continue with the tasks" in last or turn > len(files) + 1:
        return Reply([text("Wrote " + ", ".join(files) + ".")], "end_turn")
    if turn < len(files):
        return Reply([text(f"Writing {files[turn]}."), write(wt, files[turn], turn)],
                     "tool_use")
    if turn == len(files):
        return Reply([tool_use(BASH, {"command": "env | sort; ls -R app"})],
                     "tool_use")
    return Reply([text("Wrote " + ", ".join(files) + ".")], "end_turn")


def write(wt: str, path: str, turn: int) -> dict[str, Any]:
    body = f'"""{path}"""\n\nVALUE = {turn}\n' if path.endswith(".py") else "ok\n"
    return tool_use("Write", {"file_path": f"{wt}/{path}", "content": body})


def claude_env(daemon_factory: DaemonFactory, fake: FakeAnthropic, *, oauth: bool = False,
               **extra: str) -> dict[str, str]:
    auth = {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH_TOKEN} if oauth else {"ANTHROPIC_API_KEY": API_KEY}
    assert _CLI is not None
    return daemon_factory.base_env(**{"ANTHROPIC_BASE_URL": fake.base_url,
                                      "BUILDRUNNER_CLAUDE_CLI": str(_CLI[0]), **auth, **extra})


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text("[planner]\nplanner = \"heuristic\"\n[claude_code]\nmax_retries = 0\n"
                    + extra)
    return path


async def start(daemon_factory: DaemonFactory, env: dict[str, str], config: Path
                ) -> DaemonProcess:
    return await daemon_factory.start("--backend", "claude-code", "--config", str(config),
                                      env=env)


async def events_of(daemon: DaemonProcess, run_id: str) -> list[dict[str, Any]]:
    async with daemon.client() as client:
        events: list[dict[str, Any]] = await client.call("events.list", run_id=run_id,
                                                         limit=10000)
    return events


def failures(events: list[dict[str, Any]]) -> list[str]:
    """Why batches failed and how sessions ended: the assertion message of a failed run."""
    return [f"{e['batch_id']} {e['type']}: {json.dumps(e['data'])[:400]}" for e in events
            if e["type"] in ("batch.failed", "session.ended", "verify.failed", "run.failed")]


async def test_claude_code_run_builds_verifies_merges_and_bills_exactly(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    with FakeAnthropic(builder) as fake:
        env = claude_env(daemon_factory, fake)
        daemon = await start(daemon_factory, env, config_file(tmp_path))
        async with daemon.client() as client:
            ping = await client.call("daemon.ping")
            run, info = await run_to_end(client, daemon.socket, spec, repo, workers=2)
            costs = await client.call("costs.summary", run_id=run["id"])
        brctl = await anyio.run_process(
            [sys.executable, "-m", "brctl", "--socket", str(daemon.socket), "costs",
             "--run", run["id"]], env=env, check=False)
        events = await events_of(daemon, run["id"])
        assert await daemon.stop() == 0
    assert ping["backend"] == "claude-code"
    assert "--backend = claude-code" in ping["backend_reason"]
    assert "logged in (api_key)" in ping["backend_reason"]
    assert info["state"] == "succeeded", failures(events)
    files = set(git(repo, "ls-tree", "-r", "--name-only", info["branch"]).splitlines())
    assert {"app/db.py", "app/accounts.py", "app/reports.py"} <= files
    types = [e["type"] for e in events]
    # One session per batch.
    assert types.count("session.started") == types.count("batch.dispatched") >= 3
    assert "verify.passed" in types
    ended = [e["data"] for e in events if e["type"] == "session.ended"]
    assert all(e["ending"] == "verify" and e["cli_cost_usd"] is not None for e in ended)
    # BuildRunner's rules went into Claude Code's system prompt, appended; its tools only.
    batch_requests = [r for r in fake.ok_requests() if is_batch_request(r)]
    assert batch_requests
    for req in batch_requests:
        assert "BuildRunner runs this session" in json.dumps(req.body["system"])
        names = {t["name"] for t in req.body["tools"]}
        assert {"Write", "Edit", "Read", "Glob", "Grep", BASH} <= names
        assert not names & {"Bash", "WebFetch", "WebSearch", "Task", "Agent"}
    # Exact tokens: the rows add up to what the API billed, priced with our table.
    billed = fake.billed_totals()
    for key, value in billed.items():
        assert costs[key] == value, (key, costs, billed)
    prices = CostTable(PricingConfig())
    assert costs["total_usd"] == pytest.approx(
        sum(prices.cost_usd(b.model, b.usage) for b in fake.billed), rel=1e-9)
    assert costs["backends"] == ["claude-code"] and costs["api_equivalent"] is True
    assert brctl.returncode == 0 and "API-equivalent cost" in brctl.stdout.decode()
    # The key reached neither the model's shell, nor the logs, nor the state dir.
    shell = [e["data"]["output"] for e in events if e["type"] == "tool.result"]
    assert any("PATH=" in out for out in shell)
    assert not any(API_KEY in out or "BUILDRUNNER_" in out for out in shell)
    assert API_KEY not in daemon.stderr()
    assert grep_tree(daemon.home / "buildrunner.db", API_KEY.encode()) == []


def escaped(tmp_path: Path, target: Path) -> list[Path]:
    """Files the attacks below would have left outside the worktree."""
    return [*tmp_path.rglob("climbed.txt"), *target.iterdir()]


async def test_a_hostile_model_cannot_leave_the_worktree_or_write_git(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    outside = tmp_path / "outside.txt"
    target = tmp_path / "target"
    target.mkdir()
    attacks = [
        tool_use("Write", {"file_path": str(outside), "content": "pwned"}),
        tool_use("Read", {"file_path": "{wt}/.git"}),  # reading is fine...
        tool_use("Write", {"file_path": "{wt}/.git", "content": "gitdir: /tmp"}),  # ...not this
        tool_use("Write", {"file_path": "{wt}/../../climbed.txt", "content": "pwned"}),
        tool_use("Read", {"file_path": "/etc/passwd"}),
        tool_use(BASH, {"command": f"ln -sfn {target} escape"}),
        tool_use("Write", {"file_path": "{wt}/escape/linked.txt", "content": "pwned"}),
        tool_use(BASH, {"command": "rm escape"}),
        tool_use("WebFetch", {"url": "http://example.invalid", "prompt": "x"}),
    ]
    refusals_per_batch = 5  # outside, .git, climbed, /etc/passwd, through the symlink

    def hostile(req: FakeRequest) -> Reply:
        turn = req.assistant_turns()
        if is_batch_request(req) and turn < len(attacks):
            block = json.loads(json.dumps(attacks[turn]).replace("{wt}", worktree_of(req)))
            block["id"] = f"toolu_attack_{req.index}"
            return Reply([block], "tool_use")
        return builder(req, len(attacks))

    with FakeAnthropic(hostile) as fake:
        env = claude_env(daemon_factory, fake)
        daemon = await start(daemon_factory, env, config_file(tmp_path))
        async with daemon.client() as client:
            run, info = await run_to_end(client, daemon.socket, spec, repo, workers=1)
        events = await events_of(daemon, run["id"])
        assert await daemon.stop() == 0
    assert info["state"] == "succeeded", failures(events)
    assert not outside.exists()
    assert escaped(tmp_path, target) == []
    refused = [e["data"] for e in events if e["type"] == "tool.call" and "refused" in e["data"]]
    batches = sum(1 for e in events if e["type"] == "batch.dispatched")
    assert len(refused) == refusals_per_batch * batches, refused
    results = [e["data"]["output"] for e in events if e["type"] == "tool.result"]
    assert not any("root:x:0:0" in r for r in results)
    assert sum("No such tool available: WebFetch" in r for r in results) == batches
    del fake


async def _saved_turn(transcript: Path, *, timeout_s: float) -> None:
    """Return once the CLI's saved conversation at ``transcript`` holds an answer of the
    model (told by the file system; re-read at least every half second)."""

    def saved() -> bool:
        return transcript.is_file() and b'"type":"assistant"' in transcript.read_bytes()

    with anyio.fail_after(timeout_s):
        async for _ in watchfiles.awatch(transcript.parents[1], debounce=50,
                                         rust_timeout=500, yield_on_timeout=True):
            if saved():
                return


@pytest.mark.parametrize("lost", [False, True], ids=["saved", "conversation-lost"])
async def test_sigkill_mid_session_resumes_the_same_session_without_repeating_batches(
    daemon_factory: DaemonFactory, tmp_path: Path, lost: bool
) -> None:
    repo, spec = make_repo(tmp_path)
    held = HeldReply()
    held_in: list[str] = []  # the worktree of the held request

    def responder(req: FakeRequest) -> Reply:
        # The Reports batch (the last one, workers=1) waits in its second turn: the daemon is
        # killed meanwhile. The held reply is let go only when the resumed session asks again,
        # so it never reaches the killed session's CLI while that is still being torn down
        # (as the real API's reply would reach nobody).
        if "app/reports.py" in named_files(req) and req.assistant_turns() == 1:
            if not held.asked.is_set():
                held_in.append(worktree_of(req))
                held.hold()
            else:
                held.release()
        return builder(req)

    with FakeAnthropic(responder) as fake:
        env = claude_env(daemon_factory, fake)
        config = config_file(tmp_path)
        daemon = await start(daemon_factory, env, config)
        async with daemon.client() as client:
            run = await client.call("run.submit", spec_path=str(spec), repo=str(repo),
                                    workers=1)
        await anyio.to_thread.run_sync(held.asked.wait, 120)
        before = await events_of(daemon, run["id"])
        done_before = {e["batch_id"] for e in before if e["type"] == "batch.succeeded"}
        [session_id] = [e["data"]["session_id"] for e in before if e["type"] == "session.started"
                        and e["batch_id"] not in done_before]
        # The CLI saves the conversation as it goes, a little after each message: the crash
        # comes once the first turn is saved (before, there is nothing to resume, and the
        # batch starts a new session: a unit test's case).
        saved = transcript_path(daemon.home / "claude", held_in[0], session_id)
        assert saved is not None
        await _saved_turn(saved, timeout_s=30)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(timeout=10)
        if lost:  # as if the CLI had been killed before it saved anything
            saved.unlink()
        daemon = await start(daemon_factory, env, config)
        await wait_run_event(daemon.socket, run["id"], timeout_s=90)
        held.release()
        async with daemon.client() as client:
            info = await client.call("run.get", run_id=run["id"])
        events = await events_of(daemon, run["id"])
        assert await daemon.stop() == 0
    assert info["state"] == "succeeded", failures(events)
    # The batches that had succeeded before the kill were not run again.
    assert done_before  # (the held batch is the second of four; workers=1)
    dispatched = [e["batch_id"] for e in events if e["type"] == "batch.dispatched"]
    for batch_id in done_before:
        assert dispatched.count(batch_id) == 1
    # The interrupted batch resumed the same conversation (same session, no new one), in a
    # worktree of another path, and was told that its worktree moved.
    interrupted = {e["batch_id"] for e in before if e["type"] == "session.started"} - done_before
    assert len(interrupted) == 1
    killed = [e for e in events if e["type"] == "session.started"
              and e["batch_id"] in interrupted]
    sessions = [(e["data"]["session_id"], e["data"]["resumed"]) for e in killed]
    assert sessions[0] == (session_id, False)
    not_found = [e for e in events if e["type"] == "session.ended"
                 and "No conversation found" in str(e["data"].get("note"))]
    resumed = [r for r in fake.requests if "app/reports.py" in named_files(r)
               and b"fresh worktree" in r.raw]
    if lost:
        # Nothing to resume (the CLI says so before it starts): the batch starts again in a
        # new session instead of failing.
        assert len(not_found) == 1 and len(sessions) == 2
        assert sessions[1][0] != session_id and sessions[1][1] is False
        assert resumed == []
    else:
        assert not_found == [] and sessions[1:] == [(session_id, True)]
        assert resumed and worktree_of(resumed[0]) != held_in[0]
        # Its first request after the crash carries the turn from before it.
        assert resumed[0].assistant_turns() >= 1
        # The conversation moved to the folder the CLI reads for the new worktree.
        moved = transcript_path(daemon.home / "claude", worktree_of(resumed[0]), session_id)
        assert moved is not None and moved.is_file() and not saved.exists()
    # The killed daemon's CLI died with it (the sandbox's --die-with-parent): no orphan went
    # on with the old session in the old worktree.
    orphan = [r.index for r in fake.requests if "app/reports.py" in named_files(r)
              and r.assistant_turns() >= 2 and worktree_of(r) == held_in[0]]
    assert orphan == []
    files = set(git(repo, "ls-tree", "-r", "--name-only", info["branch"]).splitlines())
    assert "app/reports.py" in files


async def test_a_usage_limit_pauses_the_run_then_it_resumes_by_itself(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    limited: list[tuple[str, ...]] = []  # the batches (their files) that hit a limit
    resets_at: list[float] = []

    def responder(req: FakeRequest) -> Reply | ErrorReply:
        # The second call of the first two sessions hits the subscription's usage limit.
        files = tuple(named_files(req))
        if (is_batch_request(req) and req.assistant_turns() == 1 and len(limited) < 2
                and files not in limited):
            limited.append(files)
            resets_at.append(time.time() + 4)
            return usage_limit(resets_at[-1])
        return builder(req)

    with FakeAnthropic(responder) as fake:
        env = claude_env(daemon_factory, fake, oauth=True)
        config = config_file(tmp_path)
        daemon = await start(daemon_factory, env, config)
        async with daemon.client() as client:
            ping = await client.call("daemon.ping")
            run = await client.call("run.submit", spec_path=str(spec), repo=str(repo),
                                    workers=1)
        # The first limit: paused, then resumed by the daemon at the reset time.
        paused = await wait_run_event(daemon.socket, run["id"], ("run.paused",), timeout_s=120)
        resumed = await wait_run_event(daemon.socket, run["id"], ("run.resumed",),
                                       since=paused["id"], timeout_s=60)
        # The second: the daemon restarts while the run waits, and still resumes it.
        second = await wait_run_event(daemon.socket, run["id"], ("run.paused",),
                                      since=resumed["id"], timeout_s=120)
        assert await daemon.stop() == 0
        daemon = await start(daemon_factory, env, config)
        await wait_run_event(daemon.socket, run["id"], ("run.resumed",), since=second["id"],
                             timeout_s=60)
        await wait_run_event(daemon.socket, run["id"], timeout_s=120)
        async with daemon.client() as client:
            info = await client.call("run.get", run_id=run["id"])
            tasks = await client.call("task.list", run_id=run["id"])
        events = await events_of(daemon, run["id"])
        assert await daemon.stop() == 0
    assert "logged in (oauth_token)" in ping["backend_reason"]
    assert "usage limit" in paused["data"]["reason"] and "resumes by itself" in \
        paused["data"]["reason"]
    assert info["state"] == "succeeded", failures(events)
    # No task failed on the way, and each limit's event says when it resets.
    assert all(t["state"] == "succeeded" for t in tasks)
    assert not [e for e in events if e["type"] == "task.state_changed"
                and e["data"]["to"] == "failed"]
    limits = [e["data"]["resume_at_unix"] for e in events if e["type"] == "run.usage_limited"]
    assert limits == [int(at) for at in resets_at]
    assert "rejected" in [e["data"]["status"] for e in events if e["type"] == "usage.limit"]
    # Each paused batch went on in its own session.
    sessions: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"] == "session.started":
            sessions.setdefault(e["batch_id"], []).append(e["data"])
    resumed_sessions = [s for s in sessions.values() if len(s) > 1]
    assert len(resumed_sessions) == 2
    for started in resumed_sessions:
        assert started[1]["resumed"] is True
        assert started[0]["session_id"] == started[1]["session_id"]
    del fake


def _crashing_cli(tmp_path: Path, real: Path) -> Path:
    """A ``claude`` that runs the real CLI and dies (SIGKILL) after its first assistant
    message: output cut mid-stream, no result."""
    script = tmp_path / "crashing-claude"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, subprocess, sys\n"
        f"p = subprocess.Popen([{str(real)!r}, *sys.argv[1:]], stdout=subprocess.PIPE)\n"
        "if len(sys.argv) > 1 and sys.argv[1] in ('auth', '--version'):\n"
        "    sys.stdout.buffer.write(p.stdout.read()); sys.exit(p.wait())\n"
        "for line in p.stdout:\n"
        "    if b'\"type\":\"assistant\"' in line:\n"
        "        sys.stdout.buffer.write(line[: len(line) // 2]); sys.stdout.flush()\n"
        "        p.kill(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    sys.stdout.buffer.write(line); sys.stdout.flush()\n"
        "sys.exit(p.wait())\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_a_cli_that_crashes_mid_stream_fails_the_batch_never_succeeds(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path)
    assert _CLI is not None
    crashing = _crashing_cli(tmp_path, _CLI[0])
    with FakeAnthropic(builder) as fake:
        env = claude_env(daemon_factory, fake, BUILDRUNNER_CLAUDE_CLI=str(crashing))
        daemon = await start(daemon_factory, env, config_file(tmp_path))
        async with daemon.client() as client:
            run, info = await run_to_end(client, daemon.socket, spec, repo, workers=1,
                                         timeout_s=120)
            tasks = await client.call("task.list", run_id=run["id"])
        events = await events_of(daemon, run["id"])
        assert await daemon.stop() == 0
    assert info["state"] == "failed"
    assert not [t for t in tasks if t["state"] == "succeeded"]
    assert "batch.succeeded" not in [e["type"] for e in events]
    ended = [e["data"] for e in events if e["type"] == "session.ended"]
    assert ended and all(e["ending"] == "crashed" for e in ended)
    failed = [t for t in tasks if t["state"] == "failed"]
    assert failed and "without a result" in (failed[0].get("reason") or json.dumps(events))


async def test_a_missing_or_logged_out_cli_is_a_clear_error_at_start(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    config = config_file(tmp_path)
    missing = daemon_factory.spawn("--backend", "claude-code", "--config", str(config),
                                   env=daemon_factory.base_env(
                                       BUILDRUNNER_CLAUDE_CLI=str(tmp_path / "no-claude")))
    assert await missing.wait(60) == 1
    assert "not an executable file" in missing.stderr()
    assert "pip install 'buildrunner[claude-code]'" in missing.stderr()
    assert _CLI is not None
    env = {k: v for k, v in daemon_factory.base_env(BUILDRUNNER_CLAUDE_CLI=str(_CLI[0])).items()
           if k not in ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN")}
    logged_out = daemon_factory.spawn("--backend", "claude-code", "--config", str(config),
                                      env=env)
    assert await logged_out.wait(60) == 1
    err = logged_out.stderr()
    assert "not logged in" in err and "claude auth login" in err, err
