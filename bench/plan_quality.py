"""Planning quality on the labelled corpus of real specs, new planner beside an old one.

    .venv/bin/python bench/plan_quality.py                      # new vs the issue-11 baseline
    .venv/bin/python bench/plan_quality.py --old REF --json     # any git commit as "old"

The corpus is ``tests/data/corpus/`` (25 specs from public repositories, each one's source,
license note and labels in ``labels.json``). Each planner runs in its own process (the old one
from ``git archive REF buildrunnerd`` in a temporary directory) and prints its plans as JSON;
this script scores them against the labels:

- features right: the plan has exactly the labelled number of features;
- stated edges found: a labelled "A waits for B" (feature names) holds in the plan, directly
  or through other features or tasks;
- required-file precision: required files (``Task.files``) the spec names, over all required
  files; "invented" ones appear nowhere in the spec, "wrong-language" ones have a source
  extension of another language than the labelled one;
- done items left out: labelled done tasks and features the plan does not plan again;
- parallelism: total minutes over the critical path, for tasks and for batches (median over
  the specs with tasks), and tasks per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "corpus"
BASELINE = "b524723"  # main before issue 11
_EXT_FAMILY = {
    "py": "python", "pyi": "python", "ts": "js", "tsx": "js", "js": "js", "jsx": "js",
    "mjs": "js", "cjs": "js", "swift": "swift", "rs": "rust", "go": "go", "kt": "kotlin",
    "java": "java", "rb": "ruby", "cs": "csharp",
}
_FAMILY = {"typescript": "js", "javascript": "js"}


def dump(corpus: Path) -> dict[str, Any]:
    """Plan every corpus file with whichever ``buildrunnerd`` is importable."""
    from buildrunnerd.errors import BuildRunnerError
    from buildrunnerd.spec import parse_spec_file

    def plan(path: Path) -> Any:
        try:
            from buildrunnerd.prompt import plan_with_prompts
        except ImportError:  # before issue 11, build_plan sized the prompts itself
            from buildrunnerd.plan import build_plan

            return build_plan(parse_spec_file(path))
        return plan_with_prompts(parse_spec_file(path))

    out: dict[str, Any] = {}
    for path in sorted(corpus.iterdir()):
        if path.name == "labels.json":
            continue
        try:
            out[path.name] = plan(path).to_json_dict()
        except BuildRunnerError as exc:
            out[path.name] = {"error": str(exc)[:300]}
    return out


def _run(pythonpath: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--dump", str(CORPUS)],
        check=True, capture_output=True, text=True, env=env, cwd=str(pythonpath),
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _reaches(graph: dict[str, list[str]], start: str, goal: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def _feature(plan: dict[str, Any], needle: str) -> str | None:
    low = needle.lower()
    return next((f["id"] for f in plan["features"] if low in f["name"].lower()), None)


def _edge_found(plan: dict[str, Any], after: str, before: str) -> bool:
    a, b = _feature(plan, after), _feature(plan, before)
    if a is None or b is None:
        return False
    features = {f["id"]: f["depends_on"] for f in plan["features"]}
    if _reaches(features, a, b):
        return True
    tasks = {t["id"]: t["depends_on"] for t in plan["tasks"]}
    of_b = {t["id"] for t in plan["tasks"] if t["feature"] == b}
    return any(_reaches(tasks, t["id"], goal) for t in plan["tasks"] if t["feature"] == a
               for goal in of_b)


def score(plans: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """The scorecard of one planner's plans."""
    features_right = edges_total = edges_found = 0
    required = named = invented = wrong_lang = 0
    done_total = done_skipped = 0
    task_par: list[float] = []
    batch_par: list[float] = []
    per_batch: list[float] = []
    failed: list[str] = []
    misses: list[str] = []
    for name, label in labels.items():
        plan = plans.get(name, {"error": "missing"})
        edges_total += len(label["edges"])
        done_total += label["done"]
        if "error" in plan:
            failed.append(name)
            continue
        if len(plan["features"]) == label["features"]:
            features_right += 1
        else:
            misses.append(f"{name}: {len(plan['features'])} features, labelled {label['features']}")
        edges_found += sum(_edge_found(plan, a, b) for a, b in label["edges"])
        text = (CORPUS / name).read_text(encoding="utf-8")
        family = _FAMILY.get(label["language"], label["language"])
        for task in plan["tasks"]:
            for path in task["files"]:
                required += 1
                base = path.rsplit("/", 1)[-1]
                if path in text or base in text:
                    named += 1
                else:
                    invented += 1
                fam = _EXT_FAMILY.get(base.rsplit(".", 1)[-1].lower()) if "." in base else None
                if fam is not None and family != "any" and fam != family:
                    wrong_lang += 1
        planned_ids = {t["id"] for t in plan["tasks"]}
        planned_features = {t["feature"] for t in plan["tasks"]}
        if label["done"]:
            # A done task or feature the plan still plans counts against it.
            n_tasks = label["explicit_tasks"]
            if n_tasks:
                planned_again = max(0, len(planned_ids) - (n_tasks - label["done"]))
            else:
                planned_again = max(0, len(planned_features) - (label["features"] - label["done"]))
            done_skipped += max(0, label["done"] - planned_again)
        if plan["tasks"]:
            total = sum(t["estimate_minutes"] for t in plan["tasks"])
            task_par.append(total / max(1, plan["critical_path"]["minutes"]))
            batches = plan["batches"]
            batch_total = sum(b.get("estimate_minutes", 0) for b in batches)
            chain = max((b.get("priority_minutes", 0) for b in batches), default=0)
            if chain:
                batch_par.append(batch_total / chain)
            per_batch.append(len(plan["tasks"]) / max(1, len(batches)))
    n = len(labels)
    return {
        "specs": n,
        "planned": n - len(failed),
        "failed": failed,
        "features_right": features_right,
        "feature_misses": misses,
        "edges_total": edges_total,
        "edges_found": edges_found,
        "required_files": required,
        "required_named": named,
        "invented_required": invented,
        "wrong_language_required": wrong_lang,
        "done_total": done_total,
        "done_left_out": done_skipped,
        "median_task_parallelism": round(statistics.median(task_par), 2) if task_par else 0,
        "median_batch_parallelism": round(statistics.median(batch_par), 2) if batch_par else 0,
        "mean_tasks_per_batch": round(statistics.mean(per_batch), 2) if per_batch else 0,
    }


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "-"


def render(old: dict[str, Any], new: dict[str, Any], ref: str) -> str:
    """The scorecard as a Markdown table."""
    rows = [
        ("specs planned (no error)", _pct(old["planned"], old["specs"]),
         _pct(new["planned"], new["specs"])),
        ("features right", _pct(old["features_right"], old["specs"]),
         _pct(new["features_right"], new["specs"])),
        ("stated edges found", _pct(old["edges_found"], old["edges_total"]),
         _pct(new["edges_found"], new["edges_total"])),
        ("required-file precision (named by the spec)",
         _pct(old["required_named"], old["required_files"]),
         _pct(new["required_named"], new["required_files"])),
        ("invented required files", str(old["invented_required"]),
         str(new["invented_required"])),
        ("wrong-language required files", str(old["wrong_language_required"]),
         str(new["wrong_language_required"])),
        ("done items left out of the plan", _pct(old["done_left_out"], old["done_total"]),
         _pct(new["done_left_out"], new["done_total"])),
        ("median parallelism, tasks (total min / critical path)",
         str(old["median_task_parallelism"]), str(new["median_task_parallelism"])),
        ("median parallelism, batches", str(old["median_batch_parallelism"]),
         str(new["median_batch_parallelism"])),
        ("mean tasks per batch", str(old["mean_tasks_per_batch"]),
         str(new["mean_tasks_per_batch"])),
    ]
    lines = [f"| metric | old ({ref}) | new |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--old", default=BASELINE, help="git commit of the old planner")
    parser.add_argument("--json", action="store_true", help="print both scorecards as JSON")
    parser.add_argument("--dump", metavar="CORPUS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dump:
        json.dump(dump(Path(args.dump)), sys.stdout)
        return 0
    labels = json.loads((CORPUS / "labels.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="plan-quality-old-") as old_dir:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old, "buildrunnerd"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old_dir], input=archive, check=True)
        old = score(_run(Path(old_dir)), labels)
    new = score(_run(ROOT), labels)
    if args.json:
        print(json.dumps({"old": old, "new": new}, indent=2, ensure_ascii=False))
        return 0
    print(render(old, new, args.old))
    for name, card in (("old", old), ("new", new)):
        if card["failed"]:
            print(f"\n{name}: no plan for {', '.join(card['failed'])}")
        if card["feature_misses"]:
            print(f"\n{name}: feature counts off: " + "; ".join(card["feature_misses"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
