"""Prompts: token counting, batch prompts within a context budget, and plans sized by them."""

from buildrunnerd.prompt._builder import (
    PromptBuilder,
    build_batch_prompt,
    build_prompt_for_tasks,
    built_window,
    fix_prompt,
    plan_with_prompts,
    system_prompt,
)
from buildrunnerd.prompt._counter import (
    ENCODING_NAME,
    LineCountCache,
    TiktokenCounter,
    TokenCounter,
    default_counter,
    line_segments,
    piece_segments,
    shared_line_cache,
)
from buildrunnerd.prompt._model import BatchPrompt

__all__ = [
    "BatchPrompt", "ENCODING_NAME", "LineCountCache", "PromptBuilder", "TiktokenCounter",
    "TokenCounter", "build_batch_prompt", "build_prompt_for_tasks", "built_window",
    "default_counter", "fix_prompt", "line_segments", "piece_segments", "plan_with_prompts",
    "shared_line_cache", "system_prompt",
]
