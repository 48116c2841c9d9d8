"""Agent throughput and cache share: 32 batches with 1, 4 and 8 workers against the fake API.

Executor level: the real ``AnthropicExecutor`` (real SDK, real HTTP, real tools and bash
sandbox, real git worktrees) driven by a worker pool of this script, not through the daemon
(its scheduler, verification and merges are measured by the daemon's own benches). The fake
Messages API adds ``--latency-ms`` (default 200) to every call, as a stand-in for the model.

Each batch is a three-turn conversation: create a file with the editor, run it with bash, end
the turn. All batches share the run's stable system prompt, so later calls read it, and each
conversation's earlier turns, from the prompt cache.

    .venv/bin/python bench/agent_bench.py [--batches 32] [--latency-ms 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from buildrunnerd.agent import AnthropicExecutor  # noqa: E402
from buildrunnerd.agent._bash import sandbox_mode  # noqa: E402
from buildrunnerd.config import AgentConfig, Config  # noqa: E402
from buildrunnerd.executor import ApiCall, BatchJob  # noqa: E402
from buildrunnerd.plan import BatchPrompt, Task  # noqa: E402
from buildrunnerd.prompt import default_counter  # noqa: E402
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


class Ctx:
    """The daemon's side of a batch, reduced to what the bench measures."""

    def __init__(self) -> None:
        self.calls: list[ApiCall] = []

    async def emit(self, type: str, data: dict[str, Any], *, task_id: str | None = None) -> None:
        pass

    async def record_api_call(self, call: ApiCall) -> None:
        self.calls.append(call)

    async def checkpoint(self, state: bytes) -> None:
        pass

    async def check_budget(self, estimate_usd: float) -> None:
        pass


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


def batch_key(req: FakeRequest) -> str:
    first = req.first_user_text()
    return first[first.index("[batch ") + 7: first.index("]")]


def job(batch: str, worktree: Path) -> BatchJob:
    task = Task(id=f"{batch}.1", feature="wide", title=f"Module for {batch}", domain="backend",
                complexity="medium", estimate_minutes=60, files=[f"mod_{batch.lower()}.py"])
    prompt = BatchPrompt(system=SYSTEM, user=f"[batch {batch}] Write the module and run it.",
                         tokens=0, context_tokens=0)
    return BatchJob(run_id="bench", batch_id=batch, attempt=1, tasks=[task], prompt=prompt,
                    worktree=str(worktree))


def serve_fake(batches: int, latency_ms: float) -> None:
    """``--serve-fake``: run the fake API in this process until stdin closes. The bench runs
    it as a separate process, as the real API is: its JSON and hashing work must not compete
    with the agent for the bench process's GIL."""
    names = [f"B{i:03d}" for i in range(1, batches + 1)]
    responder = agent_script({b: steps(b) for b in names}, batch_key)
    with FakeAnthropic(responder, latency_s=latency_ms / 1000) as fake:
        print(fake.base_url, flush=True)
        sys.stdin.read()


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
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - started
        await executor.aclose()
    finally:
        await server.stdin.aclose()
        await server.wait()
    calls = [c for ctx in ctxs for c in ctx.calls]
    read = sum(c.cache_read_input_tokens for c in calls)
    total_in = sum(c.input_tokens + c.cache_creation_input_tokens + c.cache_read_input_tokens
                   for c in calls)
    return {"workers": workers, "seconds": round(elapsed, 2), "calls": len(calls),
            "failures": failures, "cache_read_share": round(read / total_in, 3),
            "cost_usd": round(sum(c.cost_usd for c in calls), 4),
            "mean_call_ms": round(sum(c.latency_ms for c in calls) / max(1, len(calls)))}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    batches = [f"B{i:03d}" for i in range(1, args.batches + 1)]
    # Warm the one-time costs (tokenizer load, sandbox probe) so the 1-worker run, which
    # would pay them first, is not made slower than it is.
    default_counter().count("warm up")
    await sandbox_mode("auto")
    results = []
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        for workers in args.workers:
            results.append(await run(workers, batches, args.latency_ms / 1000, Path(tmp)))
    base = results[0]["seconds"]
    for r in results:
        r["speedup"] = round(base / r["seconds"], 2)
    return {"batches": args.batches, "latency_ms": args.latency_ms, "results": results,
            "machine": f"{platform.machine()}, {platform.python_version()}, "
                       f"{__import__('os').cpu_count()} CPUs"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake(args.batches, args.latency_ms)
        return
    report = anyio.run(main_async, args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['batches']} batches, fake API +{report['latency_ms']:g} ms per call, "
          f"{report['machine']}")
    print(f"{'workers':>7} {'seconds':>8} {'speedup':>8} {'calls':>6} {'cache read':>10}")
    for r in report["results"]:
        print(f"{r['workers']:>7} {r['seconds']:>8.2f} {r['speedup']:>7.2f}x {r['calls']:>6} "
              f"{r['cache_read_share']:>9.0%}" + (f"  FAILED {r['failures']}"
                                                  if r["failures"] else ""))


if __name__ == "__main__":
    main()
