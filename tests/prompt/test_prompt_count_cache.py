"""The token-count cache of a run's prompts: exact counts, identical prompts, bounded memory."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from buildrunnerd.plan import Batch, Task
from buildrunnerd.prompt import (
    LineCountCache,
    PromptBuilder,
    TiktokenCounter,
    line_segments,
)

COUNTER = TiktokenCounter()
PACKAGE = Path(__file__).resolve().parents[2] / "buildrunnerd"
DOCS = Path(__file__).resolve().parents[2] / "docs"

# What could fool a wrong proof of the cut points: line breaks next to indentation, blank
# lines, trailing spaces, CRLF, Unicode spaces and letters, punctuation that absorbs newlines.
_ALPHABET = [
    "a", "Z", "7", "42", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", "'s", "'", ".", "`",
    "```", "#", "-", ":", "(", "é", "漢", "١", "\u00a0", "\u2028", "\u3000", "\x0b", "\x0c",
    "😀", "def f():", "    return 1",
]


def _assert_exact(text: str, cache: LineCountCache) -> None:
    segments = line_segments(text)
    assert "".join(segments) == text
    assert sum(COUNTER.count(s) for s in segments) == COUNTER.count(text), (text, segments)
    assert cache.count(text) == COUNTER.count(text)


def test_texts_are_cut_after_line_breaks_before_printable_text_only() -> None:
    assert line_segments("a\nb\n  c\n\n d\n") == ["a\n", "b\n", "  c\n\n", " d\n"]
    assert line_segments("x\n\u00a0y\n\n") == ["x\n\u00a0y\n\n"]  # not before a Unicode space
    assert line_segments("x\n \ny") == ["x\n \n", "y"]  # a blank line with spaces stays whole
    assert line_segments("") == [""]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_ALPHABET), max_size=40))
def test_line_counts_add_up_to_the_whole_on_random_text(parts: list[str]) -> None:
    _assert_exact("".join(parts), LineCountCache(COUNTER))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_line_counts_add_up_to_the_whole_on_any_text(text: str) -> None:
    _assert_exact(text.replace("\x00", "\n"), LineCountCache(COUNTER))


def test_line_counts_add_up_on_real_code_and_docs() -> None:
    cache = LineCountCache(COUNTER)
    files = sorted(PACKAGE.rglob("*.py")) + sorted(DOCS.glob("*.md"))
    assert len(files) > 50
    for path in files:
        _assert_exact(path.read_text(encoding="utf-8"), cache)


def test_truncate_is_tiktokens_cut_exactly() -> None:
    rng = random.Random(13)
    cache = LineCountCache(COUNTER)
    texts = [p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))[:20]]
    texts.append("ééé\n漢字漢字\n😀😀😀\n" * 40)
    for text in texts:
        for max_tokens in [0, 1, 2, *(rng.randint(1, 2000) for _ in range(8)), 10**6]:
            assert cache.truncate(text, max_tokens) == COUNTER.truncate(text, max_tokens)


def test_a_changed_file_is_recounted_never_stale() -> None:
    cache = LineCountCache(COUNTER)
    source = (PACKAGE / "prompt" / "_builder.py").read_text(encoding="utf-8")
    assert cache.count(source) == COUNTER.count(source)
    # One line changed, one appended, one removed: the whole text and its lines move.
    changed = source.replace("def _fence(", "def _fence_with_a_longer_name(", 1)
    changed = changed.replace("_TRUNCATED = ", "_TRUNCATED_TEXT = ", 1) + "\nx = 'é' * 3\n"
    for text in (changed, changed[: len(changed) // 2], source.replace("\n\n\n", "\n", 3)):
        assert text != source
        assert cache.count(text) == COUNTER.count(text)
    assert cache.count(source) == COUNTER.count(source)


def test_memory_is_bounded() -> None:
    cache = LineCountCache(COUNTER, max_line_bytes=20_000, max_texts=50)
    rng = random.Random(3)
    for i in range(3000):
        lines = [f"line {rng.random()} of text {i}" for _ in range(40)]
        text = "\n".join(lines)  # > 1 KB: remembered whole too
        assert cache.count(text) == COUNTER.count(text)
    # Two generations of at most 20,000 bytes of lines (>= 120 bytes each with their
    # overhead) and of 50 texts.
    assert len(cache) <= 2 * (20_000 // 120) + 2 * 50


def _task(i: int) -> Task:
    return Task(id=f"f{i}.1", feature=f"f{i}", title=f"Module {i}", domain="backend",
                complexity="simple", estimate_minutes=30,
                depends_on=[f"f{i - 1}.1"] if i else [],
                files=[f"pkg/m{i}.py", f"pkg/m{i - 1}.py"],
                acceptance_criteria=[f"`pkg/m{i}.py` works ({i})"])


def test_prompts_are_byte_identical_with_and_without_the_cache() -> None:
    # A run as the daemon builds it: every batch a new builder; summaries accumulate; files
    # get rewritten (their content changes, and sometimes grows past the budget so they are
    # cut). The cached prompts must be the reference's, byte for byte and token for token.
    sources = [p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))[:30]]
    files: dict[str, str] = {}
    built: list[str] = []
    overview = (DOCS / "architecture.md").read_text(encoding="utf-8")[:3000]
    compared = cut = 0
    for i in range(60):
        task = _task(i)
        batch = Batch(id=f"B{i:03d}", task_ids=[task.id], domain="backend",
                      estimate_minutes=30, priority_minutes=30)
        relevant = {f: files[f] for f in task.files if f in files}
        prompts = []
        for cache_counts in (False, True):
            builder = PromptBuilder("Demo", test_command="pytest -q", budget_tokens=3000,
                                    cache_counts=cache_counts)
            prompts.append(builder.build(batch, [task], overview=overview,
                                         built=built[-50:], files=relevant))
        reference, cached = prompts
        assert cached.user == reference.user and cached.system == reference.system
        assert cached.tokens == reference.tokens
        assert cached.context_tokens == reference.context_tokens
        compared += 1
        cut += "[... truncated to fit the context budget]" in reference.user
        # The batch "runs": its files change (the previous one's file too, sometimes).
        files[f"pkg/m{i}.py"] = sources[i % len(sources)]
        if i % 3 == 0 and f"pkg/m{i - 1}.py" in files:
            files[f"pkg/m{i - 1}.py"] += f"\n\ndef added_by_batch_{i}() -> int:\n    return {i}\n"
        built.append(f"B{i:03d}: wrote `pkg/m{i}.py` (module {i}); {'x' * (i % 7)}")
    assert compared == 60 and cut > 0, "the run must exercise cutting a file to fit"
