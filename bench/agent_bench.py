"""Agent throughput and cache share: 32 batches with 1, 4 and 8 workers against the fake API.

Executor level: the real ``AnthropicExecutor`` (real SDK, real HTTP, real tools and bash
sandbox, real git worktrees) driven by a worker pool of this script, not through the daemon
(its scheduler, verification and merges are measured by the daemon's own benches). The fake
Messages API adds ``--latency-ms`` (default 200) to every call, as a stand-in for the model.

Each batch is a three-turn conversation: create a file with the editor, run it with bash, end
the turn. All batches share the run's stable system prompt, so later calls read it, and each
conversation's earlier turns, from the prompt cache.

    .venv/bin/python bench/agent_bench.py [--batches 32] [--latency-ms 200] [--json]

Every run also reports the fake API's own CPU while it served (``fake_user_s``,
``fake_sys_s``: its start left out) and the bench process's own during the run
(``bench_cpu_s``), apart from the agent's: the real API's work runs on Anthropic's servers.

``--through-daemon``: the same 32 batches as a wide spec (32 independent one-task batches)
submitted to a real ``buildrunnerd`` subprocess (``--backend anthropic``), one fresh daemon,
repository and fake API process per worker count. Everything a user's run pays is in the
figures: planning, worktrees, the agent loop, verification (every named file exists; no test
command), commits and merges into the run branch, the store. Speedup is measured from
``run.submit`` to the ``run.succeeded`` event; the cache share comes from ``costs.summary``.
A per-phase breakdown (from the run's stored events) shows where the time goes.

    .venv/bin/python bench/agent_bench.py --through-daemon [--json]

``--branch-check on|off|both`` (daemon level): verify the run branch's head after every merge
(``verify.branch_check``, on by default) or not; ``both`` runs each worker count with it off,
then on, side by side. ``--seed-tests``: the repository gets a seeded pytest suite and a
project ``.venv``, so every verification and every branch check runs real tests.

    .venv/bin/python bench/agent_bench.py --through-daemon --branch-check both --seed-tests

``--backend claude-code``: the same run through the daemon with ``--backend claude-code``: each
batch is a session of the real Claude Code CLI (the one bundled in ``claude-agent-sdk``), in the
sandbox, against the same fake API and latency; then the ``anthropic`` backend's run, side by
side. Also reported: the CLI's start-up per batch (the ``session.started`` event's
``startup_ms``: launcher, sandbox and CLI until its first message).

    .venv/bin/python bench/agent_bench.py --backend claude-code [--batches 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from buildrunnerd.agent import AnthropicExecutor  # noqa: E402
from buildrunnerd.agent._claude_cli import find_claude_cli  # noqa: E402
from buildrunnerd.config import AgentConfig, Config  # noqa: E402
from buildrunnerd.executor import BatchJob  # noqa: E402
from buildrunnerd.plan import Task  # noqa: E402
from buildrunnerd.prompt import BatchPrompt, default_counter  # noqa: E402
from buildrunnerd.sandbox import select_sandbox  # noqa: E402
from tests.conftest import (  # noqa: E402
    RpcClient,
    wait_run_event,
)
from tests.daemons import PYTHON_M, Daemons  # noqa: E402
from tests.executor.support import RecordingContext as Ctx  # noqa: E402
from tests.fakeapi import (  # noqa: E402
    API_KEY,
    FakeAnthropic,
    FakeRequest,
    Reply,
    agent_script,
    text,
    tool_use,
)

# A run's stable part, about the size BuildRunner's prompt builder produces (~1.5k tokens).
SYSTEM = ("You are a senior engineer working in a BuildRunner batch. Follow the project's "
          "conventions, keep changes small, write tests next to the code, and stop when the "
          "tasks' acceptance criteria are met. ") * 30


def steps(batch: str) -> list[Reply]:
    module = f"mod_{batch.lower()}"
    return [
        Reply([text(f"Creating {module}.py."),
               tool_use("str_replace_based_edit_tool", {
                   "command": "create", "path": f"{module}.py",
                   "file_text": f"def answer() -> int:\n    return {len(batch)}\n"})],
              "tool_use"),
        # The venv's interpreter: a pyenv shim alone costs ~0.4 s of CPU on this machine and
        # would measure the shim, not the agent.
        Reply([tool_use("bash", {"command": f"{sys.executable} -c 'import {module}; "
                                            f"print({module}.answer())'"})], "tool_use"),
        Reply([text(f"{module}.py is in place and runs.")], "end_turn"),
    ]


_DAEMON_BATCH = re.compile(r"# Your tasks: batch (B\d+)")
_WORKTREE = re.compile(r"repository worktree at (\S+?):")
CC_BASH = "mcp__buildrunner__bash"


def claude_code_step(req: FakeRequest) -> Reply:
    """The same three turns for a Claude Code session: its Write tool (absolute paths, in the
    worktree its system prompt names), BuildRunner's bash tool, the end."""
    if not req.body.get("tools"):
        return Reply([text("ok")], "end_turn")  # a side call of the CLI
    batch = batch_key(req)
    module = f"mod_{batch.lower()}"
    found = _WORKTREE.findall(json.dumps(req.body.get("system")))
    turn = req.assistant_turns()
    if turn == 0 and found:
        return Reply([text(f"Creating {module}.py."), tool_use("Write", {
            "file_path": f"{found[-1]}/{module}.py",
            "content": f"def answer() -> int:\n    return {len(batch)}\n"})], "tool_use")
    if turn == 1:
        return Reply([tool_use(CC_BASH, {"command": f"{sys.executable} -c 'import {module}; "
                                                    f"print({module}.answer())'"})],
                     "tool_use")
    return Reply([text(f"{module}.py is in place and runs.")], "end_turn")


def batch_key(req: FakeRequest) -> str:
    first = req.first_user_text()
    if "[batch " in first:  # the executor-level prompt of this bench
        return first[first.index("[batch ") + 7: first.index("]")]
    found = _DAEMON_BATCH.search(first)  # the daemon's prompt builder
    assert found is not None, f"no batch id in the prompt: {first[:300]!r}"
    return found.group(1)


def job(batch: str, worktree: Path) -> BatchJob:
    task = Task(id=f"{batch}.1", feature="wide", title=f"Module for {batch}", domain="backend",
                complexity="medium", estimate_minutes=60, files=[f"mod_{batch.lower()}.py"])
    prompt = BatchPrompt(system=SYSTEM, user=f"[batch {batch}] Write the module and run it.",
                         tokens=0, context_tokens=0)
    return BatchJob(run_id="bench", batch_id=batch, attempt=1, tasks=[task], prompt=prompt,
                    worktree=str(worktree))


def serve_fake(batches: int, latency_ms: float, backend: str = "anthropic") -> None:
    """``--serve-fake``: run the fake API in this process until stdin closes. The bench runs
    it as a separate process, as the real API is: its JSON and hashing work must not compete
    with the agent for the bench process's GIL."""
    names = [f"B{i:03d}" for i in range(1, batches + 1)]
    responder = (claude_code_step if backend == "claude-code"
                 else agent_script({b: steps(b) for b in names}, batch_key))
    with FakeAnthropic(responder, latency_s=latency_ms / 1000) as fake:
        serving = resource.getrusage(resource.RUSAGE_SELF)
        print(fake.base_url, flush=True)
        sys.stdin.read()
    # Its own CPU while it served (its start and imports left out), for the report: the real
    # API's work runs on Anthropic's servers, so this is an artifact of the bench's machine.
    done = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"fake_user_s": round(done.ru_utime - serving.ru_utime, 3),
                      "fake_sys_s": round(done.ru_stime - serving.ru_stime, 3),
                      "fake_requests": len(fake.requests)}), flush=True)


async def _fake_cpu(server: anyio.abc.Process) -> dict[str, Any]:
    """What ``serve_fake`` reports on its last line when its stdin closes."""
    assert server.stdin is not None and server.stdout is not None
    await server.stdin.aclose()
    out = b""
    async for chunk in server.stdout:
        out += chunk
    await server.wait()
    lines = out.decode().strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


async def run(workers: int, batches: list[str], latency_s: float, root: Path) -> dict[str, Any]:
    server = await anyio.open_process(
        [sys.executable, __file__, "--serve-fake", "--batches", str(len(batches)),
         "--latency-ms", str(latency_s * 1000)])
    assert server.stdout is not None and server.stdin is not None
    base_url = (await server.stdout.receive()).decode().strip()
    try:
        config = Config(agent=AgentConfig(request_timeout_s=30.0))
        executor = AnthropicExecutor(config, api_key=API_KEY, base_url=base_url)
        worktrees = {}
        for b in batches:
            wt = root / f"w{workers}" / b
            wt.mkdir(parents=True)
            await anyio.run_process(["git", "init", "-q", str(wt)])
            worktrees[b] = wt
        queue = list(batches)
        ctxs: list[Ctx] = []
        failures: list[str] = []

        async def worker() -> None:
            while queue:
                b = queue.pop(0)
                ctx = Ctx()
                ctxs.append(ctx)
                outcome = await executor.run_batch(job(b, worktrees[b]), ctx)
                if outcome.status != "completed":
                    failures.append(f"{b}: {outcome.reason}")

        started = time.perf_counter()
        own = resource.getrusage(resource.RUSAGE_SELF)
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        await executor.aclose()
    finally:
        fake_cpu = await _fake_cpu(server)
    calls = [c for ctx in ctxs for c in ctx.calls]
    read = sum(c.cache_read_input_tokens for c in calls)
    total_in = sum(c.input_tokens + c.cache_creation_input_tokens + c.cache_read_input_tokens
                   for c in calls)
    return {"workers": workers, "seconds": round(elapsed, 2), "calls": len(calls),
            "failures": failures, "cache_read_share": round(read / total_in, 3),
            "cost_usd": round(sum(c.cost_usd for c in calls), 4),
            "mean_call_ms": round(sum(c.latency_ms for c in calls) / max(1, len(calls))),
            "bench_cpu_s": round(after.ru_utime - own.ru_utime + after.ru_stime - own.ru_stime,
                                 3),
            **fake_cpu}


def wide_spec(batches: list[str]) -> str:
    """A plan-format spec of independent one-task groups. Each task is estimated at the
    planner's batch limit (240 min), so each becomes a batch of its own: ids B001, B002, ..."""
    lines = ["# Wide bench project", "", "Independent modules, one batch each.", ""]
    for b in batches:
        module = f"mod_{b.lower()}.py"
        lines += [f"### Batch {b}: Module {b}", "", f"#### Task {b}.1: Module {b} (240 min)", "",
                  f"**File:** `{module}`", "", "**Acceptance Criteria:**",
                  f"- [ ] `{module}` defines answer()", ""]
    return "\n".join(lines)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


def phases(events: list[dict[str, Any]], workers: int, elapsed_s: float) -> dict[str, float]:
    """Where a batch's time goes, from its stored events: total seconds over all batches per
    phase, and the share of the workers' time (``workers * elapsed``) that no batch used.

    setup: dispatch -> the first call is sent (worktree, prompt, executor start);
    model: the calls' own latency (``api.call`` ``latency_ms``: the fake's 200 ms + HTTP);
    tools: the rest of the agent loop (tools, bash, streaming bookkeeping, store writes);
    wrap_up: the last turn -> the tasks go ``verifying`` (file monitor, file events);
    verify: -> ``verify.passed``; merge: -> ``batch.succeeded`` (commit + merge);
    idle: workers' time outside dispatch -> ``batch.succeeded`` (worktree removal, planning,
    scheduling, and the tail of the run where fewer batches than workers are left)."""
    by_batch: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("batch_id"):
            by_batch.setdefault(str(e["batch_id"]), []).append(e)
    out = dict.fromkeys(("setup", "model", "tools", "wrap_up", "verify", "merge"), 0.0)
    busy = 0.0
    for evs in by_batch.values():
        calls = [e for e in evs if e["type"] == "api.call"]
        turns = [_ts(e) for e in evs if e["type"] == "agent.turn"]
        marks: dict[str, float] = {}
        for e in evs:
            key = e["type"]
            if key == "task.state_changed":
                key = f"task.{e['data'].get('to')}"
            marks.setdefault(key, _ts(e))
        need = ("batch.dispatched", "task.verifying", "verify.passed", "batch.succeeded")
        if not calls or not turns or any(k not in marks for k in need):
            continue
        model = sum(float(e["data"].get("latency_ms") or 0) for e in calls) / 1000
        first_sent = _ts(calls[0]) - float(calls[0]["data"].get("latency_ms") or 0) / 1000
        out["setup"] += first_sent - marks["batch.dispatched"]
        out["model"] += model
        out["tools"] += max(turns) - first_sent - model
        out["wrap_up"] += marks["task.verifying"] - max(turns)
        out["verify"] += marks["verify.passed"] - marks["task.verifying"]
        out["merge"] += marks["batch.succeeded"] - marks["verify.passed"]
        busy += marks["batch.succeeded"] - marks["batch.dispatched"]
    result = {f"{k}_s": round(v, 2) for k, v in out.items()}
    result["idle_share"] = round(1 - busy / (workers * elapsed_s), 3)
    return result


def timeline(events: list[dict[str, Any]], workers: int, submitted_at: float) -> dict[str, float]:
    """The run's fixed costs, from its events (ms): ``start`` (the submit call -> the run's
    first event), ``first_dispatch`` (-> its first ``batch.dispatched``), ``ramp`` (the first
    dispatch -> the last of the first ``workers`` ones: worktrees made one at a time) and
    ``tail`` (the last ``batch.succeeded`` -> the run's end: its final check, its worktrees
    removed)."""
    dispatched = sorted(_ts(e) for e in events if e["type"] == "batch.dispatched")
    succeeded = sorted(_ts(e) for e in events if e["type"] == "batch.succeeded")
    if not events or not dispatched or not succeeded:
        return {}
    first_round = dispatched[:workers]
    return {"start_ms": round((_ts(events[0]) - submitted_at) * 1000, 1),
            "first_dispatch_ms": round((dispatched[0] - submitted_at) * 1000, 1),
            "ramp_ms": round((first_round[-1] - first_round[0]) * 1000, 1),
            "tail_ms": round((_ts(events[-1]) - succeeded[-1]) * 1000, 1)}


def queue_wait_s(events: list[dict[str, Any]]) -> float:
    """Seconds summed over batches from ready (the batch's tasks) to dispatched."""
    ready: dict[str, float] = {}
    total = 0.0
    for e in events:
        batch = e.get("batch_id")
        if not batch:
            continue
        if e["type"] == "task.state_changed" and e["data"].get("to") == "ready":
            ready.setdefault(str(batch), _ts(e))
        elif e["type"] == "batch.dispatched" and str(batch) in ready:
            total += _ts(e) - ready.pop(str(batch))
    return round(total, 2)


SEEDED_TESTS = "".join(f"def test_seed_{i}():\n    assert {i} + 1 == {i + 1}\n\n\n"
                       for i in range(20))


async def run_daemon(workers: int, batches: list[str], latency_s: float, root: Path, *,
                     branch_check: bool = True, seed_tests: bool = False,
                     backend: str = "anthropic", spans: bool = False,
                     profile_dir: Path | None = None, cpu: bool = False) -> dict[str, Any]:
    """One run of the wide spec through a fresh ``buildrunnerd`` with ``workers`` workers."""
    base = root / f"d{workers}-{'check' if branch_check else 'nocheck'}-{backend}"
    repo = base / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "bench@example.invalid")
    _git(repo, "config", "user.name", "Bench")
    spec = repo / "PROJECT_SPEC.md"
    spec.write_text(wide_spec(batches), encoding="utf-8")
    if seed_tests:
        from tests.projectenv import give_project_env

        (repo / "tests").mkdir()
        (repo / "tests" / "test_seed.py").write_text(SEEDED_TESTS, encoding="utf-8")
        (repo / "conftest.py").write_text("# the project root on sys.path\n")
        give_project_env(repo, root)
    _git(repo, "add", "--", ".", ":(exclude).venv")
    _git(repo, "commit", "-qm", "init")
    config = base / "config.toml"
    config.write_text(
        '[planner]\nplanner = "heuristic"\n'
        f"[daemon]\nworkers = {workers}\nmax_workers_per_run = {workers}\n"
        "[agent]\nrequest_timeout_s = 30.0\n"
        f"[verify]\nbranch_check = {'true' if branch_check else 'false'}\n", encoding="utf-8")
    server = await anyio.open_process(
        [sys.executable, __file__, "--serve-fake", "--batches", str(len(batches)),
         "--latency-ms", str(latency_s * 1000), "--backend", backend])
    assert server.stdout is not None and server.stdin is not None
    base_url = (await server.stdout.receive()).decode().strip()
    spans_path = base / "spans.json"
    # With --spans the daemon starts through bench/daemon_spans.py: the same daemon, with
    # wall-clock spans around its batch steps written to spans_path when it exits.
    command: tuple[str, ...] = PYTHON_M
    if spans or cpu or profile_dir is not None:
        command = (sys.executable, str(ROOT / "bench" / "daemon_spans.py"), str(spans_path))
    if cpu and not spans:
        command += ("--cpu-only",)
    if profile_dir is not None:
        await anyio.Path(profile_dir).mkdir(parents=True, exist_ok=True)
        command += (f"--profile={profile_dir / f'daemon-w{workers}.prof'}",)
    factory = Daemons(base)
    try:
        env = factory.base_env(ANTHROPIC_API_KEY=API_KEY, ANTHROPIC_BASE_URL=base_url)
        if backend == "claude-code":
            found = find_claude_cli({"PATH": ""})
            assert found is not None, "install the extra: pip install -e '.[claude-code]'"
            env["BUILDRUNNER_CLAUDE_CLI"] = str(found[0])
        daemon = await factory.start("--config", str(config), env=env, backend=backend,
                                     command=command)
        async with daemon.client() as client:
            started = time.perf_counter()
            submitted_at = time.time()
            own = resource.getrusage(resource.RUSAGE_SELF)
            run_info = await client.call("run.submit", spec_path=str(spec), repo=str(repo),
                                         workers=workers)
            end = await wait_run_event(daemon.socket, run_info["id"], timeout_s=600)
            elapsed = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            info = await client.call("run.get", run_id=run_info["id"])
            costs = await client.call("costs.summary", run_id=run_info["id"], by="model")
        events = await _run_events(daemon.socket, run_info["id"], end["id"])
        await daemon.stop()
        # Batches whose base had moved on are merged in a private merge worktree (a merge
        # commit), the others fast-forward the run branch.
        merges = await anyio.run_process(
            ["git", "rev-list", "--merges", "--count", info["branch"]], cwd=repo)
    finally:
        factory.cleanup()
        fake_cpu = await _fake_cpu(server)
    total_in = (costs["input_tokens"] + costs["cache_creation_input_tokens"]
                + costs["cache_read_input_tokens"])
    startups = [float(e["data"]["startup_ms"]) for e in events
                if e["type"] == "session.started" and "startup_ms" in e["data"]]
    extra: dict[str, Any] = {}
    if startups:
        startups.sort()
        extra = {"cli_startup_ms_mean": round(sum(startups) / len(startups)),
                 "cli_startup_ms_median": round(startups[len(startups) // 2])}
    verified = [e["data"] for e in events if e["type"] == "run.verified"]
    if spans or cpu or profile_dir is not None:
        extra["spans"] = json.loads(spans_path.read_text(encoding="utf-8"))
        extra["spans"]["queue_wait_s"] = queue_wait_s(events)
    extra["bench_cpu_s"] = round(after.ru_utime - own.ru_utime + after.ru_stime - own.ru_stime, 3)
    return {"backend": backend, **extra, **fake_cpu,
            "workers": workers, "branch_check": branch_check, "seed_tests": seed_tests,
            "verified_counts": verified[0].get("counts") if verified else None,
            "seconds": round(elapsed, 2), "state": info["state"],
            "calls": costs["calls"], "failures": [] if end["type"] == "run.succeeded"
            else [f"{end['type']}: {end.get('data')}"],
            "cache_read_share": round(costs["cache_read_input_tokens"] / max(1, total_in), 3),
            "cost_usd": round(costs["total_usd"], 4), "merge_commits": int(merges.stdout.decode()),
            "phases": phases(events, workers, elapsed),
            "timeline": timeline(events, workers, submitted_at)}


async def _run_events(socket_path: Path, run_id: str, last_id: int) -> list[dict[str, Any]]:
    """The run's stored events up to ``last_id`` (a replay through ``events.subscribe``)."""
    events: list[dict[str, Any]] = []
    async with RpcClient.connect(socket_path) as watcher:
        await watcher.call("events.subscribe", run_id=run_id, since=0)
        while True:
            note = await watcher.next_notification(30.0)
            events.append(note["params"])
            if note["params"]["id"] >= last_id:
                return events


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    batches = [f"B{i:03d}" for i in range(1, args.batches + 1)]
    # Warm the one-time costs (tokenizer load, sandbox probe) so the 1-worker run, which
    # would pay them first, is not made slower than it is.
    default_counter().count("warm up")
    await select_sandbox("auto")
    results = []
    # claude-code is measured through the daemon, beside the anthropic backend's run.
    backends = ["claude-code", "anthropic"] if args.backend == "claude-code" else ["anthropic"]
    through_daemon = args.through_daemon or args.backend == "claude-code"
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        checks = {"on": [True], "off": [False], "both": [False, True]}[args.branch_check]
        for backend in backends:
            for workers in args.workers:
                if through_daemon:
                    for check in checks:
                        results.append(await run_daemon(
                            workers, batches, args.latency_ms / 1000, Path(tmp),
                            branch_check=check, seed_tests=args.seed_tests, backend=backend,
                            spans=args.spans, profile_dir=args.profile, cpu=args.cpu))
                else:
                    results.append(await run(workers, batches, args.latency_ms / 1000,
                                             Path(tmp)))
    for backend in backends:
        for flag in (True, False, None):
            mine = [r for r in results if r.get("backend", "anthropic") == backend
                    and r.get("branch_check") is flag]
            for r in mine:
                r["speedup"] = round(mine[0]["seconds"] / r["seconds"], 2)
    for r in results:  # what the branch check adds, against the same worker count without it
        twin = next((o for o in results if o["workers"] == r["workers"]
                     and o.get("backend") == r.get("backend")
                     and o.get("branch_check") is False), None)
        if r.get("branch_check") and twin is not None:
            r["branch_check_overhead"] = round(r["seconds"] / twin["seconds"] - 1, 3)
    return {"batches": args.batches, "latency_ms": args.latency_ms, "results": results,
            "level": "daemon" if through_daemon else "executor",
            "machine": f"{platform.machine()}, {platform.python_version()}, "
                       f"{__import__('os').cpu_count()} CPUs"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--through-daemon", action="store_true",
                        help="run the batches through a real buildrunnerd (worktrees, "
                             "verification and merges included)")
    parser.add_argument("--branch-check", choices=("on", "off", "both"), default="on",
                        help="daemon level: verify the run branch after each merge (both: "
                             "each worker count without, then with it)")
    parser.add_argument("--seed-tests", action="store_true",
                        help="daemon level: a seeded pytest suite and a project .venv")
    parser.add_argument("--backend", choices=["anthropic", "claude-code"], default="anthropic",
                        help="claude-code: through the daemon with the real Claude Code CLI, "
                             "beside the anthropic backend's run")
    parser.add_argument("--spans", action="store_true",
                        help="daemon level: run the daemon through bench/daemon_spans.py and "
                             "report the time of each batch step (summed over batches)")
    parser.add_argument("--cpu", action="store_true",
                        help="daemon level: report the daemon's CPU and its children's by "
                             "program, and the store's statements (no spans)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="daemon level: also cProfile the daemon (DIR/daemon-wN.prof) and "
                             "report its CPU and its children's by program (implies --spans)")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake(args.batches, args.latency_ms, args.backend)
        return
    if args.profile is not None:
        args.spans = True
    report = anyio.run(main_async, args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['batches']} batches, {report['level']} level, fake API "
          f"+{report['latency_ms']:g} ms per call, {report['machine']}")
    print(f"{'backend':>11} {'workers':>7} {'branch':>6} {'seconds':>8} {'speedup':>8} "
          f"{'calls':>6} {'cache read':>10} {'CLI start-up/batch':>19}")
    for r in report["results"]:
        check = {True: "on", False: "off", None: "-"}[r.get("branch_check")]
        extra = (f"  +{r['branch_check_overhead']:.0%} for the branch check"
                 if "branch_check_overhead" in r else "")
        startup = (f"{r['cli_startup_ms_mean']:>6} ms mean, {r['cli_startup_ms_median']} median"
                   if "cli_startup_ms_mean" in r else "-")
        print(f"{r.get('backend', 'anthropic'):>11} {r['workers']:>7} {check:>6} "
              f"{r['seconds']:>8.2f} {r['speedup']:>7.2f}x {r['calls']:>6} "
              f"{r['cache_read_share']:>9.0%}  {startup}" + extra
              + (f"  FAILED {r['failures']}" if r["failures"] else ""))
        if "fake_user_s" in r:
            fake_s = r["fake_user_s"] + r["fake_sys_s"]
            bench = f", the bench's own {r['bench_cpu_s']:.2f} s" if "bench_cpu_s" in r else ""
            print(f"{'':>7} CPU s of the fake API (not the agent's: the real API is remote): "
                  f"{r['fake_user_s']} + {r['fake_sys_s']} for {r['fake_requests']} requests "
                  f"({1000 * fake_s / max(1, r['fake_requests']):.1f} ms a request){bench}")
        if "phases" in r:
            print(f"{'':>7} seconds summed over batches: {r['phases']}")
        if r.get("timeline"):
            print(f"{'':>7} the run's fixed costs (ms): {r['timeline']}")
        if "spans" in r and "seconds" in r["spans"]:
            print(f"{'':>7} spans (exclusive s, summed): {r['spans']['seconds']}, "
                  f"queue wait {r['spans']['queue_wait_s']} s; calls: {r['spans']['calls']}")
            print(f"{'':>7} store calls (s, summed): {r['spans']['store_seconds']}")
        if "spans" in r:
            cpu = r["spans"].get("cpu")
            if cpu:
                kids = ", ".join(f"{k} {v['processes']}: {v['user_s'] + v['sys_s']:.2f}"
                                 for k, v in cpu["children"].items())
                print(f"{'':>7} CPU s: from the submit: daemon {cpu.get('run_daemon_s')}, its "
                      f"children {cpu.get('run_children_s')}; in all: "
                      f"daemon {cpu['daemon_user_s']} + {cpu['daemon_sys_s']}, "
                      f"children {cpu['children_user_s']} + {cpu['children_sys_s']} "
                      f"(git {cpu['git_processes']} processes, {cpu['git_cpu_s']} s); "
                      f"by program (processes: s): {kids}")
                print(f"{'':>7} statements: {cpu['statements']}")
                print(f"{'':>7} store methods [calls, statements]: "
                      f"{cpu['statements_by_method']}")


if __name__ == "__main__":
    main()
