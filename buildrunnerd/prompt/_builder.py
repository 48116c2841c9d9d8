"""Batch prompts within a token budget, and fix-up prompts from verification reports.

A batch prompt has two parts:

- ``system``: who the agent is, the rules, how work is verified and when to stop. It depends
  only on the run (its test command), so it is byte-identical for every batch and the API can
  cache it.
- ``user``: the context (project overview, what is already built, relevant files) followed by
  this batch's tasks, its verification and an explicit stop point.

``budget_tokens`` bounds the user part: the tasks come first and are never cut; the context
gets what is left and is trimmed lowest value first (unrelated files, then older summaries of
finished batches, then files the tasks name, the overview last). A batch whose tasks alone are
over the budget is a :class:`PlanError` naming the batch.

For the API's prompt cache the user part also comes in blocks (``BatchPrompt.user_blocks``):
the run's shared context first (the overview, then each "already built" summary, oldest
first, so a run's list only grows at its end), then the batch's own part (its files and
tasks). A batch's shared blocks are an earlier batch's, plus the summaries of what finished
since: the API reads that prefix from the cache instead of writing it again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from buildrunnerd.config._model import PlannerConfig
from buildrunnerd.errors import PlanError, Problem
from buildrunnerd.plan._build import build_plan
from buildrunnerd.plan._model import Batch, Plan, Task
from buildrunnerd.prompt._counter import (
    TiktokenCounter,
    TokenCounter,
    default_counter,
    piece_segments,
    shared_line_cache,
)
from buildrunnerd.prompt._model import BatchPrompt
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.spec._model import Spec

__all__ = [
    "PromptBuilder", "build_batch_prompt", "build_prompt_for_tasks", "built_window",
    "fix_prompt", "plan_with_prompts", "system_prompt",
]

# A context item cut to fewer tokens than this says too little to be worth its header.
_MIN_USEFUL_TOKENS = 40
_TRUNCATED = "\n[... truncated to fit the context budget]"
_MAX_OUTPUT_TAIL_CHARS = 4000


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def system_prompt(test_command: str | None) -> str:
    """The stable part of every batch prompt of a run (depends only on the test command)."""
    if test_command:
        tests = f"3. the test command `{test_command}` passes;"
    else:
        tests = "3. (this run has no test command; still write the tests a task asks for);"
    return f"""You are a senior software engineer, one of several agents that BuildRunner runs in \
parallel to build a project from its written spec. Each agent gets a batch of tasks in its own \
git worktree; BuildRunner verifies and merges the work when the agent stops.

# Rules
- Work only inside the current directory (your worktree). Never touch files outside it.
- Do only the tasks of your batch. Other agents build the rest of the project at the same time; \
do not implement, stub or rewrite their parts.
- Create or edit the files each task names. Change other files only when a task needs it.
- Write complete, working code: no placeholders, no TODO stubs, no pretend implementations.
- Read a file before you edit it and follow the conventions already in the project.
- Never write secrets, API keys, tokens or passwords into files; read them from the environment.
- Do not commit, branch or push: BuildRunner commits and merges your work.

# How your work is verified
When you stop, BuildRunner checks your worktree:
1. every file your tasks name exists and is not empty;
2. the Python files you add or change compile (and the project's import check passes, if set);
{tests}
4. the diff contains no credentials.
A failed check comes back to you with its report so you can fix it.

# When to stop
Stop as soon as every task of your batch is done and its acceptance criteria hold. End with a \
short summary: the files you created or changed and what each does. This summary is what later \
batches will know about your work. Do not start anything else.
"""


def _render_task(task: Task) -> str:
    lines = [f"## {task.id}: {task.title}" + (" (optional)" if task.optional else "")]
    if task.files:
        lines.append("Files: " + ", ".join(f"`{f}`" for f in task.files))
    if task.suggested_files:
        # Guesses, not requirements: the agent follows the project's layout when it differs.
        lines.append("Suggested files (not required; follow the project's layout): "
                     + ", ".join(f"`{f}`" for f in task.suggested_files))
    if task.description:
        lines.append(f"Details: {task.description}")
    lines.append("Acceptance criteria:")
    lines.extend(f"- [ ] {c}" for c in task.acceptance_criteria)
    return "\n".join(lines)


def _render_tasks(batch: Batch, tasks: Sequence[Task], test_command: str | None) -> list[str]:
    """The batch's part of the prompt: header, one block per task, verification and stop."""
    n = len(tasks)
    checks = ["- every file named in the tasks above exists and is not empty"]
    if test_command:
        checks.append(f"- `{test_command}` passes")
    checks.append("- every acceptance criterion above holds")
    footer = (
        "# Verification of this batch\n" + "\n".join(checks) + "\n\n# Stop point\n"
        + ("Stop when the task above is done." if n == 1
           else f"Stop when all {n} tasks above are done.")
        + " Then reply with your summary and nothing else."
    )
    header = f"# Your tasks: batch {batch.id} ({batch.domain}, {n} task{'s' if n != 1 else ''})"
    ids = {t.id for t in tasks}
    if any(d in ids for t in tasks for d in t.depends_on):
        header += "\nDo them in the order written: later tasks build on earlier ones."
    return [header, *(_render_task(t) for t in tasks), footer]


class _Item:
    """One piece of optional context: rendered with a header, maybe cut to fit."""

    __slots__ = ("kind", "header", "body", "footer", "can_cut")

    def __init__(self, kind: str, header: str, body: str, *, footer: str = "",
                 can_cut: bool) -> None:
        self.kind = kind  # "overview" | "built" | "file"
        self.header = header
        self.body = body
        self.footer = footer
        self.can_cut = can_cut

    def render(self, body: str | None = None) -> str:
        return f"{self.header}{self.body if body is None else body}{self.footer}"


def _file_item(path: str, content: str) -> _Item:
    fence = _fence(content)
    return _Item("file", f"## `{path}`\n{fence}\n", content.rstrip("\n"),
                 footer=f"\n{fence}", can_cut=True)


def _context_items(
    title: str,
    overview: str,
    built: Sequence[str],
    files: Mapping[str, str],
    tasks: Sequence[Task],
) -> list[_Item]:
    """Context items, most valuable first."""
    items: list[_Item] = []
    if overview.strip() or title:
        items.append(_Item("overview", f"# Project: {title}\n", overview.strip(), can_cut=True))
    named = list(dict.fromkeys(f for t in tasks for f in t.files))
    for path in named:
        if path in files:
            items.append(_file_item(path, files[path]))
    # The newest summaries matter most: later batches usually build on the latest work.
    for summary in reversed(built):
        if summary.strip():
            items.append(_Item("built", "- ", " ".join(summary.split()), can_cut=False))
    named_set = set(named)
    for path, content in files.items():
        if path not in named_set:
            items.append(_file_item(path, content))
    return items


def _assemble(items: Sequence[tuple[_Item, str]]) -> tuple[str, list[int]]:
    """Lay the chosen items out in reading order: overview, built (oldest first), files.

    Also returns where the run's shared context can be cut into prompt-cache blocks (offsets
    into the text, each just after a line break): after the overview, then after each
    "already built" line. Every batch of a run starts with the same overview, and the list of
    summaries only grows at its end, so a later batch's blocks repeat an earlier one's."""
    overview = [text.rstrip() for item, text in items if item.kind == "overview"]
    # Chosen newest first (the newest matter most when the budget is short); read oldest
    # first, so a run's list only ever grows at its end.
    built = [text for item, text in reversed(items) if item.kind == "built"]
    files = [text for item, text in items if item.kind == "file"]
    sections = list(overview)
    cuts: list[int] = []
    pos = 0
    if overview:
        # The overview alone first: it stays the same block when the first summary comes.
        pos = len(overview[0])
        cuts.append(pos + 1)
        if built:
            pos += 2
    if built:
        sections.append(_SECTION_HEADERS["built"] + "\n".join(built))
        pos += len(_SECTION_HEADERS["built"])
        for line in built:
            pos += len(line)
            cuts.append(pos + 1)
            pos += 1
    if files:
        sections.append(_SECTION_HEADERS["file"] + "\n\n".join(files))
    return "\n\n".join(sections), cuts


_SECTION_HEADERS = {
    "built": "# Already built (by earlier batches)\n",
    "file": "# Relevant files (current content)\n\n",
}


def _fit_context(items: list[_Item], allowance: int,
                 counter: TokenCounter) -> tuple[str, int, list[int]]:
    chosen: list[tuple[_Item, str]] = []
    remaining = allowance
    headed: set[str] = set()
    for item in items:
        if remaining <= 0:
            break
        # The first item of a section also pays for the section's header: left out, a file
        # cut to fill what remains went over by the header and was dropped whole below.
        header = _SECTION_HEADERS.get(item.kind) if item.kind not in headed else None
        header_cost = counter.count(header) + 2 if header else 0
        text = item.render()
        cost = counter.count(text) + 2 + header_cost  # +2: the separators between items
        if cost <= remaining:
            chosen.append((item, text))
            remaining -= cost
            headed.add(item.kind)
            continue
        if not item.can_cut:
            continue
        frame = counter.count(item.render("")) + counter.count(_TRUNCATED) + 4 + header_cost
        room = remaining - frame
        if room < _MIN_USEFUL_TOKENS:
            continue
        cut = counter.truncate(item.body, room)
        text = item.render(cut + _TRUNCATED)
        chosen.append((item, text))
        remaining -= counter.count(text) + 2 + header_cost
        headed.add(item.kind)
    # Per-item counts are an estimate of the whole (tokens can merge across a boundary):
    # count the real text and drop the least valuable items until it really fits.
    while True:
        context, cuts = _assemble(chosen)
        tokens = counter.count(context)
        if tokens <= allowance or not chosen:
            return context, tokens, cuts
        chosen.pop()


# "Already built": at most this many of the newest summaries, from a start that moves this
# many at a time (between 25 and 50 shown): a window sliding by one would change the first
# line of every prompt after each batch, and with it the prefix the prompt cache keeps.
_BUILT_MAX = 50
_BUILT_STEP = 25


def built_window(built: Sequence[str]) -> Sequence[str]:
    """The "already built" summaries a prompt shows of ``built`` (oldest first): at most
    ``_BUILT_MAX`` of the newest, from a start that moves ``_BUILT_STEP`` at a time. A caller
    that keeps a run's growing list passes this slice (a copy of at most 50), not the list:
    ``build(built=built_window(b))`` is the prompt ``build(built=b)`` gives."""
    if len(built) <= _BUILT_MAX:
        return built
    start = ((len(built) - _BUILT_MAX) // _BUILT_STEP + 1) * _BUILT_STEP
    return built[start:]


class PromptBuilder:
    """Builds the prompts of one run's batches.

    Holds what all of them share: the stable system part (counted once) and a cache of line
    counts, so a plan of thousands of batches tokenizes each distinct line once (a feature's
    description and criteria recur in several of its tasks).

    The context (overview, "already built" summaries, files) is counted through the
    process-wide :func:`~buildrunnerd.prompt.shared_line_cache` when the counter is our
    tiktoken one: every batch of a run re-counts mostly the same context, and each distinct
    line of it is tokenized once. Those counts are exact, so the prompts are the ones counting
    every text whole gives (``cache_counts=False``, the reference the tests and the prompt
    bench compare against).
    """

    _MAX_CACHED_LINES = 200_000

    def __init__(
        self,
        title: str,
        *,
        test_command: str | None,
        budget_tokens: int = 4000,
        counter: TokenCounter | None = None,
        cache_counts: bool = True,
    ) -> None:
        self.title = title
        self.test_command = test_command
        self.budget_tokens = budget_tokens
        self.counter = counter or default_counter()
        self.system = system_prompt(test_command)
        self.system_tokens = self.counter.count(self.system)
        # Any other counter counts as it likes: its own rules may not cut where cl100k does.
        self._context_counter: TokenCounter = (
            shared_line_cache()
            if cache_counts and type(self.counter) is TiktokenCounter else self.counter
        )
        self._line_tokens: dict[str, int] = {}
        self._overview_context: dict[str, tuple[str, int, list[int]]] = {}
        # With our own tiktoken counter a new line is counted in segments (piece_segments: the
        # exact count, cut around numbers) and each distinct segment is tokenized once: task
        # lines of a big plan mostly differ only in their numbers. Any other counter counts
        # whole lines, as its own rules may not cut where cl100k does.
        self._segment_tokens: dict[str, int] | None = (
            {} if type(self.counter) is TiktokenCounter else None
        )

    def _count_line(self, line: str) -> int:
        segments = self._segment_tokens
        if segments is None:
            return self.counter.count(line)
        # Through the shared cache (when on): the daemon builds each batch's prompt with a new
        # builder, and the shared cache is what outlives it.
        counter = self._context_counter
        parts = piece_segments(line)
        if len(parts) == 1:
            return counter.count(line)
        total = 0
        for part in parts:
            n = segments.get(part)
            if n is None:
                n = counter.count(part)
                if len(segments) < self._MAX_CACHED_LINES:
                    segments[part] = n
            total += n
        return total

    def _count_lines(self, text: str) -> int:
        # Line by line, plus one token per line break: an upper bound of counting the text in
        # one go (cl100k merges some breaks), and never under it by more than a token or so.
        memo = self._line_tokens
        lines = text.split("\n")
        total = len(lines) - 1
        for line in lines:
            n = memo.get(line)
            if n is None:
                n = self._count_line(line)
                if len(memo) < self._MAX_CACHED_LINES:
                    memo[line] = n
            total += n
        return total

    def build(
        self,
        batch: Batch,
        tasks: Sequence[Task],
        *,
        overview: str,
        built: Sequence[str] = (),
        files: Mapping[str, str] | None = None,
    ) -> BatchPrompt:
        """The prompt for ``batch`` whose tasks are ``tasks`` (see :func:`build_batch_prompt`)."""
        tasks_text = "\n\n".join(_render_tasks(batch, tasks, self.test_command))
        task_tokens = self._count_lines(tasks_text)
        budget = self.budget_tokens
        if task_tokens > budget:
            raise PlanError([Problem(
                tasks[0].line if tasks else None,
                f"batch {batch.id} ({', '.join(t.id for t in tasks)}): its tasks alone take "
                f"{task_tokens} tokens, over the context budget of {budget}; split the "
                "tasks or shorten their text, or raise planner.context_budget_tokens",
            )])
        # Two tokens for the blank line between the context and the tasks.
        allowance = budget - task_tokens - 2
        if not built and not files:
            # Only the overview: the same for every batch of a plan, so fit it once and reuse
            # it wherever it fits whole.
            full = self._overview_context.get(overview)
            if full is None:
                items = _context_items(self.title, overview, (), {}, ())
                full = _fit_context(items, budget, self._context_counter)
                self._overview_context = {overview: full}
            if full[1] <= allowance and full[1] < budget:
                context, context_tokens, cuts = full
            else:
                items = _context_items(self.title, overview, (), {}, ())
                context, context_tokens, cuts = _fit_context(items, allowance,
                                                             self._context_counter)
        else:
            items = _context_items(self.title, overview, built_window(built), files or {},
                                   tasks)
            context, context_tokens, cuts = _fit_context(items, allowance,
                                                         self._context_counter)
        user = f"{context}\n\n{tasks_text}" if context else tasks_text
        tokens = self.system_tokens + context_tokens + task_tokens + (2 if context else 0)
        blocks = [user[a:b] for a, b in zip([0, *cuts], [*cuts, len(user)], strict=True)]
        return BatchPrompt(system=self.system, user=user, tokens=tokens,
                           context_tokens=context_tokens,
                           user_blocks=blocks if cuts else [])


def build_prompt_for_tasks(
    plan_title: str,
    batch: Batch,
    tasks: Sequence[Task],
    *,
    overview: str,
    built: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
    test_command: str | None = None,
    budget_tokens: int = 4000,
    counter: TokenCounter | None = None,
) -> BatchPrompt:
    """:func:`build_batch_prompt` for callers that already hold the batch's tasks."""
    builder = PromptBuilder(plan_title, test_command=test_command,
                            budget_tokens=budget_tokens, counter=counter)
    return builder.build(batch, tasks, overview=overview, built=built, files=files)


def build_batch_prompt(
    plan: Plan,
    batch: Batch,
    *,
    overview: str,
    built: list[str],
    files: dict[str, str],
    test_command: str | None,
    budget_tokens: int = 4000,
    counter: TokenCounter | None = None,
) -> BatchPrompt:
    """The prompt for ``batch`` of ``plan``.

    ``overview`` is the project's overview, ``built`` the summaries of finished batches (oldest
    first; every one of the run: the prompt shows the newest 25-50, from a start that moves 25
    at a time), ``files`` the content of relevant existing files by path. The context part never
    exceeds ``budget_tokens`` minus what the tasks take; ``BatchPrompt.system`` is identical for
    every batch with the same ``test_command``. Raises :class:`PlanError` naming the batch when
    its tasks alone do not fit the budget.
    """
    by_id = {t.id: t for t in plan.tasks}
    missing = [tid for tid in batch.task_ids if tid not in by_id]
    if missing:
        raise PlanError([Problem(None, f"batch {batch.id} names tasks that are not in the plan: "
                                       f"{', '.join(missing)}; rebuild the plan")])
    return build_prompt_for_tasks(
        plan.spec_title,
        batch,
        [by_id[tid] for tid in batch.task_ids],
        overview=overview,
        built=built,
        files=files,
        test_command=test_command,
        budget_tokens=budget_tokens,
        counter=counter,
    )


def fix_prompt(report: VerificationReport) -> str:
    """The user turn of a fix-up round, from the verifier's report: failed checks first,
    with where (``file``, ``line``) and what they printed (``output_tail``)."""
    failed = report.failures()
    passed = [c for c in report.checks if c.passed]
    parts = [
        "BuildRunner verified your work and it did not pass. Fix the problems below in this "
        "worktree. Change only what the fix needs; keep the work that passed. Then stop with a "
        "short summary of what you changed."
    ]
    if failed:
        parts.append(f"# Failed checks ({len(failed)})")
    else:
        parts.append("# Failed checks\nThe report names no failed check; re-check the "
                     "acceptance criteria of your tasks and the test command.")
    for n, check in enumerate(failed, 1):
        lines = [f"## {n}. {check.name}: {check.message or 'failed'}"]
        if check.file:
            lines.append(f"Where: `{check.file}`" + (f" line {check.line}" if check.line else ""))
        tail = (check.output_tail or "").strip()
        if tail:
            if len(tail) > _MAX_OUTPUT_TAIL_CHARS:
                tail = "[...]\n" + tail[-_MAX_OUTPUT_TAIL_CHARS:]
            fence = _fence(tail)
            lines.append(f"Output (last lines):\n{fence}\n{tail}\n{fence}")
        parts.append("\n".join(lines))
    if passed:
        parts.append("# Passed checks\n" + "\n".join(f"- {c.name}" for c in passed))
    parts.append("# Stop point\nStop when every failed check above would pass.")
    return "\n\n".join(parts)


def plan_with_prompts(
    spec: Spec,
    tasks: list[Task] | None = None,
    *,
    config: PlannerConfig | None = None,
    counter: TokenCounter | None = None,
) -> Plan:
    """:func:`~buildrunnerd.plan.build_plan` with every batch's prompt sized in tokens (the
    spec's overview as context) and checked against ``planner.context_budget_tokens``.

    Raises :class:`PlanError` as ``build_plan`` does, and for a batch whose tasks alone do not
    fit the budget.
    """
    config = config or PlannerConfig()
    builder = PromptBuilder(spec.title, test_command=spec.test_command,
                            budget_tokens=config.context_budget_tokens, counter=counter)

    def size(batch: Batch, batch_tasks: Sequence[Task]) -> int:
        return builder.build(batch, batch_tasks, overview=spec.overview).tokens

    return build_plan(spec, tasks, config=config, sizer=size)
