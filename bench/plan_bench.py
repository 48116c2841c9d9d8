"""Planning benchmark: parse + plan a generated 1 MB spec, and plan 5,000-task graphs.

    .venv/bin/python bench/plan_bench.py [--repeat 5] [--json]
    .venv/bin/python bench/plan_bench.py --compare b524723   # side by side with that commit

Prints the best and median wall-clock time of each case over ``--repeat`` runs (after one
warm-up, so the one-off tokenizer load is reported separately). Target: parse + plan of the
1 MB spec under 1 second on a 2-core machine. Figures are recorded in docs/benchmarks.md.

``--compare REF`` exports ``buildrunnerd/`` of the git commit REF into a temporary directory
and runs this same script against it and against the working tree, each in a fresh process,
alternating ``--rounds`` times, then prints both medians side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from buildrunnerd.plan import Task, build_plan
from buildrunnerd.prompt import TiktokenCounter
from buildrunnerd.spec import Spec, parse_spec


def build_plan_sized(spec: Spec, tasks: list[Task] | None = None) -> Any:
    """Plan ``spec`` with every batch prompt sized, in whichever version is imported: since
    issue 11 the planner sizes prompts through a callback; before, build_plan did."""
    try:
        from buildrunnerd.prompt import plan_with_prompts
    except ImportError:  # an older checkout (--compare)
        return build_plan(spec, tasks)
    return plan_with_prompts(spec, tasks)

_VERBS = ["Store", "Validate", "Display", "Export", "Search", "Calculate", "Sync", "Render"]
_NOUNS = ["orders", "invoices", "users", "reports", "comments", "tags", "files", "events"]


_PROSE = (
    "People use this part of the product every day, so it has to be quick and predictable. "
    "It follows the conventions of the rest of the application, keeps a history of every "
    "change so that mistakes can be undone, and reports problems in plain words that say what "
    "went wrong and what to do next. Administrators can see who changed what and when. "
)


def generate_spec(target_bytes: int = 1_000_000, seed: int = 7, prose_sentences: int = 0) -> str:
    """A native-format spec of about ``target_bytes``: features with requirements, acceptance
    criteria and dependencies on earlier features. ``prose_sentences`` adds that many
    paragraphs of description per feature: 0 gives a dense spec (~540 bytes per feature),
    3 a spec closer to real ones (~1.6 KB per feature, as in /work/shared/specs)."""
    rng = random.Random(seed)
    parts = ["# Generated benchmark project\n\n",
             "A generated product used to benchmark the planner. " * 20, "\n\n## Features\n\n"]
    size = sum(len(p) for p in parts)
    n = 0
    names: list[str] = []
    while size < target_bytes:
        n += 1
        verb, noun = rng.choice(_VERBS), rng.choice(_NOUNS)
        names.append(f"{verb} {noun} {n}")
        lines = [f"### {names[-1]}\n",
                 f"The system lets people {verb.lower()} {noun} for area {n}. "
                 f"It keeps a history of every change and reports errors clearly.\n",
                 *(f"\n{_PROSE}\n" for _ in range(prose_sentences))]
        if n > 1 and rng.random() < 0.7:
            deps = sorted({rng.randint(max(1, n - 50), n - 1) for _ in range(rng.randint(1, 2))})
            lines.append(f"\n**Depends on:** {', '.join(names[d - 1] for d in deps)}\n")
        lines.append("\n#### Requirements\n")
        for _ in range(rng.randint(2, 5)):
            v, o = rng.choice(_VERBS), rng.choice(_NOUNS)
            lines.append(f"- {v} the {o} of area {n} in the database and through the API\n")
        lines.append("\n#### Acceptance Criteria\n")
        for _ in range(rng.randint(1, 3)):
            lines.append(f"- [ ] A user can {rng.choice(_VERBS).lower()} {noun} on the page\n")
        lines.append("\n")
        block = "".join(lines)
        parts.append(block)
        size += len(block)
    return "".join(parts)


def random_tasks(n: int = 5000, seed: int = 11) -> list[Task]:
    """``n`` tasks in a random DAG (each depends on up to 3 of the previous 200)."""
    rng = random.Random(seed)
    sizes = [("simple", 60), ("medium", 90), ("complex", 120), ("critical", 120)]
    tasks = []
    for i in range(n):
        complexity, minutes = rng.choice(sizes)
        deps = sorted({f"T{rng.randint(max(0, i - 200), i - 1):05d}"
                       for _ in range(rng.randint(0, 3))}) if i else []
        tasks.append(Task(
            id=f"T{i:05d}", feature=f"f{i // 5}", title=f"Task {i}",
            domain=rng.choice(["database", "backend", "frontend", "tests", "docs", "infra"]),
            complexity=complexity, estimate_minutes=minutes, depends_on=deps,
            files=[f"src/mod_{i}.py"], acceptance_criteria=[f"Task {i} does what it says"],
        ))
    return tasks


def _cold_caches() -> None:
    """Forget what earlier runs memoised (keyword analysis per sentence, token counts), so each
    timed run plans the spec as if for the first time; only the loaded tokenizer is kept."""
    from buildrunnerd.plan import _decompose
    from buildrunnerd.prompt import _counter

    cached = [getattr(_decompose, name, None) for name in ("_analyse", "_tags", "_module_name")]
    try:
        from buildrunnerd.plan import _files

        cached.append(_files.module_name)
    except ImportError:
        pass
    cached.append(getattr(_counter, "_cached_count", None))
    for fn in cached:
        if fn is not None and hasattr(fn, "cache_clear"):
            fn.cache_clear()


def _time(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Wall-clock and CPU time of ``fn``. CPU time matters on a shared machine: other load
    stretches the wall clock but not the work this process does."""
    fn()  # warm-up: imports, the tokenizer
    wall, cpu = [], []
    for _ in range(repeat):
        _cold_caches()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"best_s": min(wall), "median_s": statistics.median(wall),
            "best_cpu_s": min(cpu), "median_cpu_s": statistics.median(cpu)}


_CASES = ("parse_1mb", "parse_and_plan_1mb", "parse_and_plan_1mb_typical", "plan_5000_tasks")


def _compare(ref: str, repeat: int, rounds: int) -> int:
    """This script against commit ``ref`` and against the working tree, side by side."""
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="plan-bench-old-") as old:
        archive = subprocess.run(["git", "-C", str(root), "archive", ref, "buildrunnerd"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for _ in range(rounds):
            for name, path in (("old", old), ("new", str(root))):
                env = {**os.environ, "PYTHONPATH": path}
                out = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--json",
                     "--repeat", str(repeat)],
                    check=True, capture_output=True, text=True, env=env, cwd=path,
                ).stdout
                runs[name].append(json.loads(out))
    print(f"machine: {runs['new'][0]['machine']}; {rounds} alternating rounds of {repeat} "
          f"runs each; old = {ref}, new = working tree")
    print(f"{'case':>26}  {'old median':>11}  {'new median':>11}  {'old CPU':>9}  {'new CPU':>9}")
    for case in _CASES:
        row = []
        for name in ("old", "new"):
            row.append(statistics.median(r[case]["median_s"] for r in runs[name]))
        cpu = [statistics.median(r[case]["median_cpu_s"] for r in runs[n]) for n in ("old", "new")]
        print(f"{case:>26}  {row[0] * 1000:8.0f} ms  {row[1] * 1000:8.0f} ms  "
              f"{cpu[0] * 1000:6.0f} ms  {cpu[1] * 1000:6.0f} ms")
    for name in ("old", "new"):
        r = runs[name][0]
        print(f"{name}: dense spec {r['spec_tasks']} tasks / {r['spec_batches']} batches; "
              f"5,000 tasks -> {r['plan_5000_batches']} batches")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--compare", metavar="REF", help="also run git commit REF, side by side")
    parser.add_argument("--rounds", type=int, default=2, help="alternations with --compare")
    args = parser.parse_args()
    if args.compare:
        return _compare(args.compare, args.repeat, args.rounds)

    start = time.perf_counter()
    TiktokenCounter().count("warm up")
    tokenizer_load_s = time.perf_counter() - start

    text = generate_spec()
    typical = generate_spec(prose_sentences=3)
    spec: Spec = parse_spec(text, path="generated.md")
    plan = build_plan_sized(spec)
    typical_plan = build_plan_sized(parse_spec(typical, path="typical.md"))
    tasks = random_tasks()
    big = build_plan_sized(Spec(title="5k", path=None, format="native", features=[]), list(tasks))
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}, {platform.system()}",
        "tokenizer_load_s": tokenizer_load_s,
        "spec_bytes": len(text.encode()),
        "spec_features": len(spec.features),
        "spec_tasks": len(plan.tasks),
        "spec_batches": len(plan.batches),
        "parse_1mb": _time(lambda: parse_spec(text, path="generated.md"), args.repeat),
        "parse_and_plan_1mb": _time(
            lambda: build_plan_sized(parse_spec(text, path="generated.md")), args.repeat
        ),
        "typical_spec_bytes": len(typical.encode()),
        "typical_features": len(typical_plan.features),
        "typical_tasks": len(typical_plan.tasks),
        "typical_batches": len(typical_plan.batches),
        "parse_and_plan_1mb_typical": _time(
            lambda: build_plan_sized(parse_spec(typical, path="typical.md")), args.repeat
        ),
        "plan_5000_tasks": _time(
            lambda: build_plan_sized(Spec(title="5k", path=None, format="native", features=[]),
                                     list(tasks)),
            args.repeat,
        ),
        "plan_5000_batches": len(big.batches),
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"machine: {results['machine']}")
        print(f"tokenizer load (once per process): {tokenizer_load_s * 1000:.0f} ms")
        print(f"dense 1 MB spec: {results['spec_bytes']} bytes, {results['spec_features']} "
              f"features, {results['spec_tasks']} tasks, {results['spec_batches']} batches")
        print(f"typical 1 MB spec: {results['typical_spec_bytes']} bytes, "
              f"{results['typical_features']} features, {results['typical_tasks']} tasks, "
              f"{results['typical_batches']} batches")
        for key in _CASES:
            r = results[key]
            print(f"{key:>26}: wall best {r['best_s'] * 1000:5.0f} ms, median "
                  f"{r['median_s'] * 1000:5.0f} ms; CPU best {r['best_cpu_s'] * 1000:5.0f} ms, "
                  f"median {r['median_cpu_s'] * 1000:5.0f} ms")
        print(f"5,000 tasks -> {results['plan_5000_batches']} batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
