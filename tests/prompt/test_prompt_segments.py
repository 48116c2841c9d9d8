"""Counting a line in segments (cut around its numbers) gives exactly the count of the line."""

from __future__ import annotations

import random
from pathlib import Path

from buildrunnerd.prompt import PromptBuilder, TiktokenCounter, piece_segments, plan_with_prompts
from buildrunnerd.spec import parse_spec

COUNTER = TiktokenCounter()
DATA = Path(__file__).resolve().parents[1] / "data"

# Characters around the cut points that could fool a wrong proof: letters and digits outside
# ASCII, contractions, whitespace runs and line breaks, punctuation next to numbers.
_ALPHABET = (
    list("abcXYZ0123456789") + [" ", "  ", "\n", "\r\n", "\t", "'s", "'ll", "'", ".", "-", "_",
                                "/", "`", ":", "(", ")", "#", ",", "é", "ß", "漢", "²", "١",
                                "٣", "\u00a0", "\u2009", "Ⅻ", "😀"]
)


class WholeLineCounter:
    """The same encoding behind a counter type the builder does not know: whole-line counts."""

    def count(self, text: str) -> int:
        return COUNTER.count(text)

    def truncate(self, text: str, max_tokens: int) -> str:
        return COUNTER.truncate(text, max_tokens)


def _assert_exact(text: str) -> None:
    segments = piece_segments(text)
    assert "".join(segments) == text
    assert sum(COUNTER.count(s) for s in segments) == COUNTER.count(text), (text, segments)


def test_segments_cut_around_numbers_only_where_pieces_end() -> None:
    assert piece_segments("## store-files-1016.1: Store files 1016: Data model") == [
        "## store-files", "-1016", ".1", ": Store files", " 1016", ": Data model",
    ]
    assert piece_segments("Files: `src/models/store_files_1016.py`") == [
        "Files: `src/models/store_files", "_1016", ".py`",
    ]
    assert piece_segments("no digits here") == ["no digits here"]
    # A run next to a non-ASCII character is not cut there: ² and ١ are digits to the tokenizer.
    assert piece_segments("a1²x") == ["a", "1²x"]
    assert piece_segments("é12") == ["é12"]


def test_segment_counts_add_up_to_the_whole_on_random_text() -> None:
    rng = random.Random(20261124)
    for _ in range(4000):
        _assert_exact("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 30))))


def test_segment_counts_add_up_on_every_line_of_the_corpus() -> None:
    files = sorted((DATA / "realworld").iterdir()) + sorted((DATA / "seeds").iterdir())
    assert files
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            _assert_exact(line)


def test_plan_prompt_tokens_equal_whole_line_counting() -> None:
    # The builder counts new lines in segments with our tiktoken counter; a counter it does
    # not know counts whole lines. Both must give every batch the same number.
    spec = parse_spec((DATA / "realworld" / "taskmaster-prd.txt").read_bytes(),
                      path="taskmaster-prd.txt")
    plan = plan_with_prompts(spec)
    by_id = {t.id: t for t in plan.tasks}
    segmented = PromptBuilder(spec.title, test_command=spec.test_command, counter=COUNTER)
    whole = PromptBuilder(spec.title, test_command=spec.test_command,
                          counter=WholeLineCounter())
    assert plan.batches
    for batch in plan.batches:
        tasks = [by_id[t] for t in batch.task_ids]
        a = segmented.build(batch, tasks, overview=spec.overview)
        b = whole.build(batch, tasks, overview=spec.overview)
        assert a.tokens == b.tokens == batch.prompt_tokens
        assert a.user == b.user
