"""The Claude planner: a spec's features become tasks through a forced ``submit_tasks`` tool.

Large specs are sent in chunks of whole features within ``planner.chunk_tokens`` (every chunk
also lists all feature ids, so dependencies across chunks can be named). The answer is
validated with msgspec against the task schema; a dependency on an unknown task is dropped
with a warning; an invalid answer or a dependency cycle is sent back once with the problem
named; if the second answer is no better, the heuristic planner takes over, with a warning.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import anthropic
import msgspec
import structlog

from buildrunnerd.agent._calls import CallSettings, call_with_retries
from buildrunnerd.agent._pricing import CostTable
from buildrunnerd.agent._retry import RateLimiter
from buildrunnerd.config import Config
from buildrunnerd.errors import AgentError
from buildrunnerd.executor import ApiCall
from buildrunnerd.plan import HeuristicPlanner, Task, find_cycle, hold_files_to_spec
from buildrunnerd.prompt import TokenCounter, default_counter
from buildrunnerd.spec._model import Feature, Spec

__all__ = ["ClaudePlanner", "SUBMIT_TASKS_TOOL", "choose_planner"]

_log = structlog.get_logger("buildrunnerd.agent.planner")

_DOMAINS = ["database", "backend", "frontend", "tests", "docs", "infra"]
_COMPLEXITIES = ["simple", "medium", "complex", "critical"]

SUBMIT_TASKS_TOOL: dict[str, Any] = {
    "name": "submit_tasks",
    "description": "Submit the implementation tasks for the features you were given.",
    "input_schema": {
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "unique, '<feature id>.<n>'"},
                "feature": {"type": "string", "description": "the feature id it belongs to"},
                "title": {"type": "string"},
                "domain": {"type": "string", "enum": _DOMAINS},
                "complexity": {"type": "string", "enum": _COMPLEXITIES},
                "estimate_minutes": {"type": "integer", "minimum": 5, "maximum": 240},
                "depends_on": {"type": "array", "items": {"type": "string"},
                               "description": "ids of tasks that must be done first"},
                "files": {"type": "array", "items": {"type": "string"},
                          "description": "files the spec names that this task creates or "
                                         "changes (verification requires them)"},
                "suggested_files": {"type": "array", "items": {"type": "string"},
                                    "description": "other files you expect it to touch"},
                "acceptance_criteria": {"type": "array", "items": {"type": "string"}},
                "description": {"type": "string"},
            },
            "required": ["id", "feature", "title", "domain", "complexity", "estimate_minutes",
                         "depends_on", "files", "acceptance_criteria"],
        }}},
        "required": ["tasks"],
    },
}

_SYSTEM = (
    "You are the planner of BuildRunner. Break the product features you are given into "
    "implementation tasks of 30 to 120 minutes for a coding agent. Each task names the files "
    "it creates or changes and testable acceptance criteria. A task depends only on tasks it "
    "really needs; dependencies must not form cycles. Use task ids '<feature id>.<n>'. Answer "
    "by calling submit_tasks once with every task of these features."
)


class _TaskIn(msgspec.Struct, forbid_unknown_fields=False):
    id: str
    feature: str
    title: str
    domain: Literal["database", "backend", "frontend", "tests", "docs", "infra"]
    complexity: Literal["simple", "medium", "complex", "critical"]
    estimate_minutes: int
    depends_on: list[str] = []
    files: list[str] = []
    suggested_files: list[str] = []
    acceptance_criteria: list[str] = []
    description: str = ""


class _Invalid(Exception):
    """The model's answer broke the schema or the plan's rules (message names the problem)."""


RecordCall = Callable[[ApiCall], Awaitable[None]]


class ClaudePlanner:
    """A :class:`buildrunnerd.plan.Planner` that asks Claude (``config.models.medium``).

    ``record_call`` receives every billed call (``purpose="planner"``); ``warnings`` holds the
    last decomposition's warnings for the plan."""

    def __init__(self, config: Config, *, api_key: str | None = None,
                 base_url: str | None = None, limiter: RateLimiter | None = None,
                 record_call: RecordCall | None = None, counter: TokenCounter | None = None,
                 model: str | None = None) -> None:
        self.config = config
        self.model = model or config.models.medium
        self.client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url,
                                               max_retries=0,
                                               timeout=config.agent.request_timeout_s)
        self.limiter = limiter or RateLimiter()
        self.costs = CostTable(config.pricing)
        self.counter = counter or default_counter()
        self.record_call = record_call
        self.warnings: list[str] = []
        #: Why the last decomposition fell back to the heuristic planner (None: it did not).
        self.fallback_reason: str | None = None
        settings = CallSettings.from_config(config.agent, config.models.fallback)
        settings.stream = False  # one forced tool call: nothing to show while it runs
        self._settings = settings

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.close()

    async def decompose(self, spec: Spec) -> list[Task]:
        """The spec's tasks; see the module docstring for the fallbacks."""
        self.warnings = []
        self.fallback_reason = None
        heuristic = HeuristicPlanner()
        if spec.tasks or not spec.features:
            return await heuristic.decompose(spec)  # explicit task lists are used as written
        try:
            try:
                return await self._plan(spec, note=None)
            except _Invalid as first:
                self._warn(f"Claude planner answer rejected ({first}); asking once more")
                return await self._plan(spec, note=str(first))
        except _Invalid as second:
            self.fallback_reason = f"Claude's answer was rejected twice ({second})"
            self._warn(f"Claude planner answer rejected again ({second}); using the heuristic "
                       "planner instead")
        except AgentError as exc:
            if exc.data.get("status") == 401:
                raise
            self.fallback_reason = f"the Claude planner failed ({exc})"
            self._warn(f"Claude planner failed ({exc}); using the heuristic planner instead")
        return await heuristic.decompose(spec)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        _log.warning(message)

    async def _plan(self, spec: Spec, *, note: str | None) -> list[Task]:
        features = {f.id: f for f in spec.features}
        index = "\n".join(f"- {f.id}: {f.name}" for f in spec.features)
        tasks: list[Task] = []
        for chunk in self._chunks(spec):
            tasks.extend(await self._ask(spec, chunk, index, features, note))
        ids = [t.id for t in tasks]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise _Invalid(f"task ids are not unique: {', '.join(dupes)}")
        known = set(ids)
        for task in tasks:
            unknown = [d for d in task.depends_on if d not in known]
            if unknown:
                self._warn(f"task {task.id} depends on unknown task(s) {', '.join(unknown)}; "
                           "dependency dropped")
                task.depends_on = [d for d in task.depends_on if d in known]
        cycle = find_cycle({t.id: t.depends_on for t in tasks})
        if cycle:
            raise _Invalid("the dependencies form a cycle: " + " -> ".join([*cycle, cycle[0]])
                           + "; remove one of these dependencies")
        # The same rule as the heuristic planner: verification requires only files the spec
        # names; the model's other paths are suggestions (and unsafe paths are dropped).
        moved = hold_files_to_spec(tasks, spec)
        if moved:
            self._warn(f"{moved} file path(s) of the Claude planner's tasks are not named by the "
                       "spec: kept as suggested files, not required")
        return tasks

    def _chunks(self, spec: Spec) -> list[list[Feature]]:
        budget = self.config.planner.chunk_tokens
        chunks: list[list[Feature]] = []
        current: list[Feature] = []
        used = 0
        for feature in spec.features:
            size = self.counter.count(_render(feature))
            if current and used + size > budget:
                chunks.append(current)
                current, used = [], 0
            current.append(feature)  # a feature larger than the budget goes alone, whole
            used += size
        if current:
            chunks.append(current)
        return chunks

    async def _ask(self, spec: Spec, chunk: list[Feature], index: str,
                   features: dict[str, Feature], note: str | None) -> list[Task]:
        text = (f"Project: {spec.title}\n\n{spec.overview[:4000]}\n\nAll features (ids you "
                f"may depend on):\n{index}\n\nPlan these features:\n\n"
                + "\n\n".join(_render(f) for f in chunk))
        if note:
            text += f"\n\nYour previous answer was rejected: {note}. Submit corrected tasks."
        params: dict[str, Any] = {
            "model": self.model, "max_tokens": self.config.models.max_tokens,
            "system": [{"type": "text", "text": _SYSTEM, "cache_control": {"type": "ephemeral"}}],
            "tools": [SUBMIT_TASKS_TOOL],
            "tool_choice": {"type": "tool", "name": "submit_tasks"},
            "messages": [{"role": "user", "content": text}],
        }
        turn = await call_with_retries(self.client, params, settings=self._settings,
                                       limiter=self.limiter, emit=_no_event)
        if self.record_call is not None:
            u = turn.usage
            await self.record_call(ApiCall(
                model=turn.model, input_tokens=u.get("input_tokens", 0),
                output_tokens=u.get("output_tokens", 0),
                cache_creation_input_tokens=u.get("cache_creation_input_tokens", 0),
                cache_read_input_tokens=u.get("cache_read_input_tokens", 0),
                cost_usd=self.costs.cost_usd(turn.model, u), latency_ms=turn.latency_ms,
                request_id=turn.request_id, stop_reason=turn.stop_reason, purpose="planner",
                backend="anthropic"))
        calls = [b for b in turn.content
                 if b.get("type") == "tool_use" and b.get("name") == "submit_tasks"]
        if not calls:
            raise _Invalid("no submit_tasks call in the answer")
        try:
            raw = msgspec.convert(calls[0].get("input", {}).get("tasks"), list[_TaskIn])
        except msgspec.ValidationError as exc:
            raise _Invalid(f"submit_tasks input does not match the schema: {exc}") from exc
        chunk_ids = {f.id for f in chunk}
        tasks: list[Task] = []
        for t in raw:
            if t.feature not in features:
                raise _Invalid(f"task {t.id} names unknown feature {t.feature!r}")
            if t.feature not in chunk_ids:
                raise _Invalid(f"task {t.id} belongs to feature {t.feature!r}, which was not "
                               "in this request")
            tasks.append(Task(
                id=t.id, feature=t.feature, title=t.title, domain=t.domain,
                complexity=t.complexity, estimate_minutes=max(5, min(t.estimate_minutes, 240)),
                depends_on=list(t.depends_on), files=list(t.files),
                suggested_files=list(t.suggested_files),
                acceptance_criteria=list(t.acceptance_criteria), description=t.description,
                line=features[t.feature].line))
        missing = chunk_ids - {t.feature for t in tasks}
        if missing:
            raise _Invalid(f"no tasks for feature(s) {', '.join(sorted(missing))}")
        return tasks


async def _no_event(type: str, data: dict[str, Any]) -> None:
    _log.info(type, **data)


def _render(feature: Feature) -> str:
    lines = [f"## {feature.name} (id: {feature.id})"]
    if feature.depends_on:
        lines.append(f"Depends on features: {', '.join(feature.depends_on)}")
    if feature.description:
        lines.append(feature.description)
    if feature.domain:
        lines.append(f"Domain: {feature.domain}")
    lines += [f"- requirement: {item.text}" for item in feature.requirements]
    lines += [f"- acceptance: {item.text}" for item in feature.acceptance_criteria]
    if feature.files:
        lines.append("Files: " + ", ".join(feature.files))
    return "\n".join(lines)



def choose_planner(config: Config, env: Mapping[str, str], *,
                   record_call: RecordCall | None = None) -> ClaudePlanner | HeuristicPlanner:
    """The planner ``planner.planner`` asks for: ``claude``, ``heuristic``, or ``auto`` (Claude
    when ``ANTHROPIC_API_KEY`` is set in ``env``, else the heuristic planner)."""
    choice = config.planner.planner
    if choice == "claude" or (choice == "auto" and env.get("ANTHROPIC_API_KEY")):
        return ClaudePlanner(config, record_call=record_call)
    return HeuristicPlanner()
