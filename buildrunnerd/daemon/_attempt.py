"""The prompt of one attempt: the batch's tasks and the files they touch, within the budget.

The prompt is built per attempt from the worktree as it is then (a re-run after a conflict
sees the new head). Every file read for it goes through ``sandbox._fs``: the model may have
planted a symlink, a FIFO or a huge file, and this text is sent to the model API.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from buildrunnerd.daemon._active import ActiveRun
from buildrunnerd.plan._model import Batch, Task
from buildrunnerd.prompt._model import BatchPrompt
from buildrunnerd.sandbox import WorktreePathError, read_bytes_in

if TYPE_CHECKING:
    from buildrunnerd.config import Config

__all__ = ["prompt_for_attempt"]
_MAX_CONTEXT_FILES = 40
_MAX_CONTEXT_FILE_BYTES = 64 * 1024


def _relevant_files(run: ActiveRun, tasks: list[Task], root: Path) -> dict[str, str]:
    """Existing files the batch's tasks or their dependencies name (the prompt builder keeps
    what fits its budget, the batch's own files first)."""
    wanted: list[str] = []
    for task in tasks:
        wanted += task.files
    for task in tasks:
        for dep in task.depends_on:
            dep_task = run.tasks_by_plan_id.get(dep)
            if dep_task is not None:
                wanted += dep_task.files
    found: dict[str, str] = {}
    for rel in dict.fromkeys(wanted):
        if len(found) >= _MAX_CONTEXT_FILES:
            break
        # This text goes to the model API: a model-made symlink to ~/.ssh/id_rsa, a FIFO or a
        # huge file must never be read (sandbox._fs follows no symlink and bounds the read).
        try:
            data = read_bytes_in(root, rel, max_bytes=_MAX_CONTEXT_FILE_BYTES)
            found[rel] = data.decode("utf-8")
        except (WorktreePathError, UnicodeDecodeError):
            continue  # missing, refused, too large or binary: not useful as prompt context
    return found


def prompt_for_attempt(
    run: ActiveRun, batch: Batch, tasks: list[Task], root: Path, config: Config,
    built: list[str],
) -> BatchPrompt:
    """Runs in a worker thread: relevant files from the worktree, then the prompt."""
    from buildrunnerd.prompt import build_prompt_for_tasks

    # The batch's tasks are at hand: ``build_batch_prompt`` would index every task of the
    # plan again, a cost per batch that grows with the run (0.4 ms at 10,000 tasks).
    prompt: BatchPrompt = build_prompt_for_tasks(
        run.plan.spec_title, batch, tasks, overview=run.overview, built=built,
        files=_relevant_files(run, tasks, root),
        test_command=run.test_cmd, budget_tokens=config.planner.context_budget_tokens,
    )
    return prompt
