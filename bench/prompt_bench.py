"""Batch prompts of a whole run, as the daemon builds them (issue 13, part 1).

    .venv/bin/python bench/prompt_bench.py [--tasks 1000] [--repeat 3] [--json]

For every batch of a generated plan, in dependency order, the bench builds the prompt the
daemon builds at dispatch: the run's overview, the summaries of the last 50 finished batches
("already built") and the current content of the files the batch's tasks and their
dependencies name, within ``planner.context_budget_tokens``. After each batch it "runs" it as
the simulated backend does: the batch's files get new content and its summary joins the list.

Two cases:

- ``scale``: the simulated backend's files and summaries (what ``bench/daemon_scale.py`` runs);
- ``files``: each file holds a real module of the standard library (up to 64 KB, the daemon's
  cap), so the context is full and files are cut to fit; a batch rewrites its files (the next
  module in the list), so later batches see changed content.

Each case is run twice, interleaved ``--repeat`` times: **baseline**, a fresh ``PromptBuilder``
per batch counting every text with tiktoken (what the daemon did before the token-count cache),
and **cached**, the way the daemon builds prompts now. The two must produce byte-identical
prompts and token counts (checked on every batch; the bench fails otherwise). Reported: the
median over the repeats of the total time and the time per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_scale import generated_spec  # noqa: E402

from buildrunnerd.plan import Plan  # noqa: E402
from buildrunnerd.prompt import BatchPrompt, PromptBuilder, plan_with_prompts  # noqa: E402
from buildrunnerd.spec import parse_spec  # noqa: E402

_MAX_CONTEXT_FILE_BYTES = 64 * 1024  # as the daemon (daemon/_batch.py)
_BUILT_KEPT = 50


def _stdlib_sources(limit: int = 200) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()[:_MAX_CONTEXT_FILE_BYTES]
        try:
            found.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        if len(found) >= limit:
            break
    return found


def _order(plan: Plan) -> list[Any]:
    """The batches in an order the scheduler could dispatch them (dependencies first)."""
    done: set[str] = set()
    pending = list(plan.batches)
    ordered = []
    while pending:
        rest = []
        for batch in pending:
            if all(d in done for d in batch.depends_on):
                ordered.append(batch)
                done.add(batch.id)
            else:
                rest.append(batch)
        pending = rest
    return ordered


def run_case(plan: Plan, case: str, build: Callable[..., BatchPrompt],
             sources: list[str]) -> tuple[float, list[tuple[str, str, int]]]:
    tasks = {t.id: t for t in plan.tasks}
    files: dict[str, str] = {}
    built: list[str] = []
    prompts: list[tuple[str, str, int]] = []
    elapsed = 0.0
    for n, batch in enumerate(_order(plan)):
        batch_tasks = [tasks[t] for t in batch.task_ids]
        wanted = [f for t in batch_tasks for f in t.files]
        wanted += [f for t in batch_tasks for d in t.depends_on for f in tasks[d].files]
        relevant = {f: files[f] for f in dict.fromkeys(wanted) if f in files}
        start = time.perf_counter()
        prompt = build(batch, batch_tasks, built[-_BUILT_KEPT:], relevant)
        elapsed += time.perf_counter() - start
        prompts.append((prompt.system, prompt.user, prompt.tokens))
        for i, task in enumerate(batch_tasks):
            for path in [*task.files, *task.suggested_files]:
                if case == "files":
                    files[path] = sources[(n * 7 + i) % len(sources)]
                else:  # the simulated backend's file (executor/_simulated.py)
                    files[path] = (f'"""{path}: {task.title} (task {task.id}; written by the '
                                   'BuildRunner simulated backend)."""\n\nTASK_ID = '
                                   f"{task.id!r}\n\n\ndef describe() -> str:\n"
                                   '    """Say what wrote this file."""\n'
                                   f"    return {('simulated: ' + task.title)!r}\n")
        built.append("(simulated) " + "; ".join(f"{t.id} {t.title}" for t in batch_tasks))
    return elapsed, prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="scale,files")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    spec = parse_spec(generated_spec(args.tasks))
    plan = plan_with_prompts(spec)
    budget = 4000  # planner.context_budget_tokens' default
    sources = _stdlib_sources()

    def baseline(batch: Any, batch_tasks: Any, built: Any, files: Any) -> BatchPrompt:
        builder = PromptBuilder(plan.spec_title, test_command=spec.test_command,
                                budget_tokens=budget, cache_counts=False)
        return builder.build(batch, batch_tasks, overview=spec.overview, built=built,
                             files=files)

    def cached(batch: Any, batch_tasks: Any, built: Any, files: Any) -> BatchPrompt:
        # As the daemon: a builder per batch (build_batch_prompt), the counts cached across.
        builder = PromptBuilder(plan.spec_title, test_command=spec.test_command,
                                budget_tokens=budget)
        return builder.build(batch, batch_tasks, overview=spec.overview, built=built,
                             files=files)

    rows = []
    for case in args.cases.split(","):
        times: dict[str, list[float]] = {"baseline": [], "cached": []}
        reference: list[tuple[str, str, int]] | None = None
        for _ in range(args.repeat):
            for name, build in (("baseline", baseline), ("cached", cached)):
                elapsed, prompts = run_case(plan, case, build, sources)
                times[name].append(elapsed)
                if reference is None:
                    reference = prompts
                elif prompts != reference:
                    print(f"{case}: {name} prompts differ from the baseline's", file=sys.stderr)
                    return 1
        batches = len(plan.batches)
        row = {"case": case, "tasks": len(plan.tasks), "batches": batches,
               "identical_prompts": True}
        for name, values in times.items():
            total = statistics.median(values)
            row[f"{name}_s"] = round(total, 3)
            row[f"{name}_ms_per_batch"] = round(total * 1000 / batches, 3)
        row["speedup"] = round(row["baseline_s"] / row["cached_s"], 2)
        rows.append(row)
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
        return 0
    print(f"machine: {machine}")
    print("| case | tasks | batches | baseline s (ms/batch) | cached s (ms/batch) | speedup |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['tasks']:,} | {r['batches']:,} | {r['baseline_s']} "
              f"({r['baseline_ms_per_batch']}) | {r['cached_s']} ({r['cached_ms_per_batch']})"
              f" | {r['speedup']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
