"""Token counting (the real bundled encoding) and batch prompts within their budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildrunnerd.errors import PlanError
from buildrunnerd.plan import Batch, Plan, Task, build_plan
from buildrunnerd.plan._model import CriticalPath
from buildrunnerd.prompt import TiktokenCounter, build_batch_prompt, fix_prompt, plan_with_prompts
from buildrunnerd.protocol import CheckResult, VerificationReport
from buildrunnerd.spec._model import Feature, Item, Spec

COUNTER = TiktokenCounter()


def test_counter_uses_the_real_cl100k_encoding() -> None:
    assert COUNTER.count("hello world") == 2  # the well-known cl100k figure
    assert COUNTER.count("") == 0
    # Special-token markers in user text are plain text, not an error.
    assert COUNTER.count("<|endoftext|>") > 1
    text = "The quick brown fox jumps over the lazy dog. " * 50
    cut = COUNTER.truncate(text, 30)
    assert text.startswith(cut) and COUNTER.count(cut) <= 30 and len(cut) < len(text)
    assert COUNTER.truncate("short", 100) == "short"
    assert COUNTER.truncate("ééé漢字漢字", 2) in ("ééé漢字漢字"[:n] for n in range(8))


def test_counter_loads_offline_without_downloading(tmp_path: Path) -> None:
    # Any HTTP fetch would go to a dead proxy and fail; an empty cache rules out a stale copy.
    cache = tmp_path / "tiktoken-cache"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "DATA_GYM_CACHE_DIR": str(cache),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    code = ("from buildrunnerd.prompt import TiktokenCounter; "
            "print(TiktokenCounter().count('a b c'))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def _plan() -> Plan:
    tasks = [
        Task(id="a.1", feature="a", title="Store notes", domain="database", complexity="simple",
             estimate_minutes=60, files=["src/models/notes.py"],
             acceptance_criteria=["Notes are saved in SQLite with a created_at column"]),
        Task(id="a.2", feature="a", title="Search notes", domain="backend", complexity="medium",
             estimate_minutes=90, depends_on=["a.1"], files=["src/search.py"],
             acceptance_criteria=["A search for 'milk' finds the note 'buy milk'"]),
    ]
    batches = [
        Batch(id="B001", task_ids=["a.1"], domain="database", estimate_minutes=60,
              priority_minutes=150),
        Batch(id="B002", task_ids=["a.2"], domain="backend", estimate_minutes=90,
              priority_minutes=90, depends_on=["B001"]),
    ]
    return Plan(spec_title="Notes", spec_path=None, features=[], tasks=tasks, batches=batches,
                levels=[["a.1"], ["a.2"]], critical_path=CriticalPath(["a.1", "a.2"], 150))


def test_prompt_holds_every_part_and_the_system_part_is_stable() -> None:
    plan = _plan()
    first = build_batch_prompt(plan, plan.batches[0], overview="A note-taking app.", built=[],
                               files={}, test_command="pytest -q")
    second = build_batch_prompt(
        plan, plan.batches[1], overview="A note-taking app.",
        built=["B001: added src/models/notes.py with a Note table"],
        files={"src/models/notes.py": "class Note: ...\n"}, test_command="pytest -q",
    )
    assert first.system == second.system, "byte-identical stable part"
    assert "pytest -q" in first.system and "When to stop" in first.system
    user = second.user
    for part in ("# Project: Notes", "A note-taking app.", "# Already built",
                 "added src/models/notes.py", "# Relevant files", "class Note: ...",
                 "## a.2: Search notes", "`src/search.py`",
                 "- [ ] A search for 'milk' finds the note 'buy milk'",
                 "# Verification of this batch", "# Stop point",
                 "Stop when the task above is done"):
        assert part in user, part
    assert user.index("# Project") < user.index("# Your tasks") < user.index("# Stop point")
    assert "a.1" not in first.user.split("# Your tasks")[0]
    tasks_part = user[user.index("# Your tasks"):]
    estimate = second.tokens - COUNTER.count(second.system) - second.context_tokens - 2
    # The tasks are counted line by line: never under counting them in one go, and over it by
    # at most a token per line break.
    exact = COUNTER.count(tasks_part)
    assert exact <= estimate <= exact + tasks_part.count("\n")


def test_context_is_trimmed_lowest_value_first_and_tasks_never() -> None:
    plan = _plan()
    batch = plan.batches[1]
    overview = "This project keeps notes. " * 400  # ~2,000 tokens on its own
    files = {
        "src/unrelated.py": "x = 1\n" * 2000,  # not named by the batch: lowest value
        "src/search.py": "def search(q):\n    return []\n" * 300,  # named by task a.2
    }
    built = [f"B{n:03d}: built part {n} of the notes app" for n in range(1, 30)]
    budget = 1500
    prompt = build_batch_prompt(plan, batch, overview=overview, built=built, files=files,
                                test_command=None, budget_tokens=budget)
    tasks_part = prompt.user[prompt.user.index("# Your tasks"):]
    assert prompt.context_tokens + COUNTER.count(tasks_part) <= budget
    assert COUNTER.count(prompt.user) <= budget
    assert "A search for 'milk' finds the note 'buy milk'" in tasks_part, "tasks are never cut"
    assert "src/unrelated.py" not in prompt.user, "the lowest-value context went first"
    assert "# Project: Notes" in prompt.user, "the overview stays (cut if need be)"
    assert "truncated to fit the context budget" in prompt.user
    # With room to spare, nothing is cut.
    roomy = build_batch_prompt(plan, batch, overview=overview, built=built, files=files,
                               test_command=None, budget_tokens=100_000)
    assert "src/unrelated.py" in roomy.user and "truncated" not in roomy.user
    assert roomy.system == prompt.system


def test_a_batch_whose_tasks_alone_do_not_fit_is_an_error_naming_it() -> None:
    plan = _plan()
    with pytest.raises(PlanError, match="batch B002 .*a.2.* over the context budget of 50"):
        build_batch_prompt(plan, plan.batches[1], overview="", built=[], files={},
                           test_command=None, budget_tokens=50)


def test_plan_with_prompts_fills_prompt_tokens_and_rejects_a_too_small_budget() -> None:
    spec = Spec(title="T", path="t.md", format="native", overview="Overview " * 50, features=[
        Feature(id="f", name="F", line=1, description="Parse a file.",
                requirements=[Item("Parse the header", 2)]),
    ])
    plan = plan_with_prompts(spec)
    assert all(b.prompt_tokens > COUNTER.count(
        build_batch_prompt(plan, b, overview="", built=[], files={}, test_command=None).system
    ) for b in plan.batches)
    from buildrunnerd.config import PlannerConfig

    with pytest.raises(PlanError, match="batch B001"):
        plan_with_prompts(spec, config=PlannerConfig(context_budget_tokens=20))


def test_fix_prompt_lists_failed_checks_with_where_and_output() -> None:
    report = VerificationReport(passed=False, checks=[
        CheckResult("files_exist", True, "ok", output_tail=""),
        CheckResult("tests", False, "2 tests failed", file="tests/test_search.py", line=14,
                    output_tail="E   assert [] == ['buy milk']\n```nested fence```"),
        CheckResult("secret_scan", False, "AWS key in the diff", file="src/config.py", line=3),
    ])
    text = fix_prompt(report)
    assert "# Failed checks (2)" in text
    assert "## 1. tests: 2 tests failed" in text
    assert "Where: `tests/test_search.py` line 14" in text
    assert "E   assert [] == ['buy milk']" in text
    assert "````" in text, "a longer fence than the output's own backticks"
    assert "## 2. secret_scan: AWS key in the diff" in text and "`src/config.py` line 3" in text
    assert "# Passed checks\n- files_exist" in text
    assert text.index("Failed checks") < text.index("Passed checks") < text.index("Stop point")
    long_tail = fix_prompt(VerificationReport(
        passed=False, checks=[CheckResult("t", False, "", output_tail="x" * 50_000)]))
    assert len(long_tail) < 6000


def test_every_batch_of_a_plan_shares_the_system_part_and_keeps_its_budget() -> None:
    from buildrunnerd.prompt import PromptBuilder
    from buildrunnerd.spec import parse_spec_file

    spec = parse_spec_file(
        Path(__file__).resolve().parents[1] / "data" / "realworld" / "taskmaster-prd.txt"
    )
    plan = build_plan(spec)
    builder = PromptBuilder(plan.spec_title, test_command="pytest -q", budget_tokens=600)
    by_id = {t.id: t for t in plan.tasks}
    prompts = [
        builder.build(b, [by_id[i] for i in b.task_ids], overview=spec.overview * 3,
                      built=[f"{b.id}: earlier work" for _ in range(5)])
        for b in plan.batches
    ]
    assert len({p.system for p in prompts}) == 1
    for prompt, batch in zip(prompts, plan.batches, strict=True):
        tasks_part = prompt.user[prompt.user.index("# Your tasks"):]
        assert prompt.context_tokens + COUNTER.count(tasks_part) <= 600
        assert all(f"## {tid}:" in tasks_part for tid in batch.task_ids)
        assert prompt.tokens > COUNTER.count(prompt.system) + prompt.context_tokens


def test_a_file_too_big_for_the_budget_is_cut_to_fit_not_dropped() -> None:
    # The budget's section headers used to be left out of the per-item estimate: a file cut to
    # fill what remained went over by the header and was dropped whole, leaving the prompt
    # without the file the task edits.
    from buildrunnerd.prompt import PromptBuilder

    plan = _plan()
    source = (Path(__file__).resolve().parents[2] / "buildrunnerd" / "prompt"
              / "_builder.py").read_text(encoding="utf-8")
    batch = plan.batches[1]
    tasks = [t for t in plan.tasks if t.id in batch.task_ids]
    for built in ([], ["B001: stored notes in `src/models/notes.py`"]):
        prompt = PromptBuilder(plan.spec_title, test_command=None, budget_tokens=2000).build(
            batch, tasks, overview="A note-taking app.", built=built,
            files={"src/search.py": source})
        assert "## `src/search.py`" in prompt.user
        assert "[... truncated to fit the context budget]" in prompt.user
        assert prompt.context_tokens <= 2000 and prompt.context_tokens > 1500
        assert COUNTER.count(prompt.user) <= 2000


def test_a_later_batch_repeats_an_earlier_ones_shared_blocks() -> None:
    # The prompt cache reads a prefix of whole blocks: the run's overview and "already built"
    # list come first, oldest summary first, so the next batch's blocks start with this
    # batch's shared ones, whatever finished in between.
    from buildrunnerd.prompt import PromptBuilder

    plan = _plan()
    builder = PromptBuilder(plan.spec_title, test_command="pytest -q")
    summaries = [f"B{i:03d}: built module {i} (`src/m{i}.py`)." for i in range(1, 80)]
    previous: list[str] | None = None
    for done in [0, 1, 2, 5, 6, 30, 49, 50, 51, 60, 74, 75, 79]:
        for batch in plan.batches:
            tasks = [t for t in plan.tasks if t.id in batch.task_ids]
            prompt = builder.build(batch, tasks, overview="A note-taking app.",
                                   built=summaries[:done], files={"src/search.py": "x = 1\n"})
            assert "".join(prompt.user_blocks) == prompt.user
            shared, own = prompt.user_blocks[:-1], prompt.user_blocks[-1]
            assert shared[0].startswith("# Project: ") and "# Your tasks" in own
            assert "## `src/search.py`" in own or batch.id == "B001"
            shown = [line for line in "".join(shared).splitlines() if line.startswith("- ")]
            assert len(shown) == done if done <= 50 else 25 <= len(shown) <= 50
            if done:
                assert shared[-1].endswith(f"- {summaries[done - 1]}\n")  # the newest, last
                assert len(shared) == 1 + len(shown)  # the overview, then one per summary
        if previous is not None and done <= 50:
            assert shared[: len(previous)] == previous
        previous = shared
    # Past 50 the window's start moves 25 at a time, so the prefix holds between the moves.
    by_done = {}
    for done in (51, 60, 74):
        by_done[done] = builder.build(plan.batches[0], plan.tasks[:1], overview="A note-taking "
                                      "app.", built=summaries[:done]).user_blocks[:-1]
    assert by_done[60][: len(by_done[51])] == by_done[51]
    assert by_done[74][: len(by_done[60])] == by_done[60]


def test_the_built_window_gives_the_prompt_of_the_whole_list_and_stays_bounded() -> None:
    # The daemon copies only the window of its run's growing "already built" list for each
    # batch (a copy of the whole list would cost a batch more the longer the run): the window
    # must give the same prompt as the list, and never hold more than 50 summaries.
    from buildrunnerd.prompt import PromptBuilder, built_window

    plan = _plan()
    builder = PromptBuilder(plan.spec_title, test_command="pytest -q")
    batch = plan.batches[0]
    tasks = [t for t in plan.tasks if t.id in batch.task_ids]
    summaries = [f"B{i:04d}: built module {i}." for i in range(1, 3001)]
    for done in (0, 1, 49, 50, 51, 74, 75, 76, 1000, 2999, 3000):
        window = list(built_window(summaries[:done]))
        assert len(window) <= 50 and window == summaries[:done][len(summaries[:done])
                                                                - len(window):]
        whole = builder.build(batch, tasks, overview="An app.", built=summaries[:done])
        cut = builder.build(batch, tasks, overview="An app.", built=window)
        assert cut == whole
    assert len(built_window(summaries)) >= 25
