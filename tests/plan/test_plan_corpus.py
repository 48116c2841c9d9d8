"""The labelled corpus of real specs (tests/data/corpus): every file plans, with the labelled
features, stated order, no invented or wrong-language required files, done work left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from buildrunnerd.prompt import plan_with_prompts
from buildrunnerd.spec import parse_spec_file

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
LABELS = json.loads((CORPUS / "labels.json").read_text(encoding="utf-8"))
_EXT = {"py": "python", "ts": "js", "tsx": "js", "js": "js", "jsx": "js", "swift": "swift",
        "rs": "rust", "go": "go"}


def test_the_corpus_is_complete_and_sourced() -> None:
    files = sorted(p.name for p in CORPUS.iterdir() if p.name != "labels.json")
    assert files == sorted(LABELS) and len(files) >= 25
    assert all(label["repository"] and label["commit"] and label["license"]
               for label in LABELS.values())


@pytest.mark.parametrize("name", sorted(LABELS))
def test_each_corpus_spec_plans_as_labelled(name: str) -> None:
    label = LABELS[name]
    text = (CORPUS / name).read_text(encoding="utf-8")
    plan = plan_with_prompts(parse_spec_file(CORPUS / name))
    assert len(plan.features) == label["features"], [f.name for f in plan.features]
    names = {f.id: f.name.lower() for f in plan.features}
    deps = {f.id: f.depends_on for f in plan.features}

    def reaches(start: str, goal: str) -> bool:
        stack, seen = [start], set()
        while stack:
            for nxt in deps[stack.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    for after, before in label["edges"]:
        a = next(i for i, n in names.items() if after.lower() in n)
        b = next(i for i, n in names.items() if before.lower() in n)
        assert reaches(a, b), f"{after} should wait for {before}"
    family = {"typescript": "js", "javascript": "js"}.get(label["language"], label["language"])
    for task in plan.tasks:
        for path in task.files:
            base = path.rsplit("/", 1)[-1]
            assert path in text or base in text, f"{path} is required but the spec never names it"
            ext = _EXT.get(base.rsplit(".", 1)[-1])
            assert ext is None or family == "any" or ext == family, f"{path}: wrong language"
    if label["explicit_tasks"]:
        assert len(plan.tasks) == label["explicit_tasks"] - label["done"]
        assert sum(t.optional for t in plan.tasks) == label["optional_tasks"]


def test_planning_never_imports_the_prompt_layer() -> None:
    code = ("import sys, buildrunnerd.plan, buildrunnerd.spec; "
            "assert not [m for m in sys.modules if m.startswith('buildrunnerd.prompt')], "
            "sorted(m for m in sys.modules if m.startswith('buildrunnerd'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
