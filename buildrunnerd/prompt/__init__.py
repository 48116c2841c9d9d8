"""Prompts: token counting and batch prompts within a context budget."""

from buildrunnerd.prompt._builder import (
    PromptBuilder,
    build_batch_prompt,
    build_prompt_for_tasks,
    fix_prompt,
    system_prompt,
)
from buildrunnerd.prompt._counter import (
    ENCODING_NAME,
    TiktokenCounter,
    TokenCounter,
    default_counter,
    piece_segments,
)

__all__ = [
    "ENCODING_NAME",
    "PromptBuilder",
    "TiktokenCounter",
    "TokenCounter",
    "build_batch_prompt",
    "build_prompt_for_tasks",
    "default_counter",
    "fix_prompt",
    "piece_segments",
    "system_prompt",
]
