"""What the store holds and hands back: msgspec Structs for rows, and the inputs of writes.

Ids stored in the database are global: a run id (``"r-3f9a1c2e"``, made by the daemon), and
``f"{run_id}:{plan_id}"`` for tasks and batches (``"r-3f9a1c2e:T001"``), so two runs of the same
spec never collide. Every record also keeps the ``plan_id`` it came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple, TypeAlias, TypedDict

import msgspec

from buildrunnerd import protocol
from buildrunnerd.plan._model import Plan

__all__ = [
    "ATTEMPT_OUTCOMES", "AttemptEnd", "AttemptRecord", "BatchChange", "BatchRecord", "EventData",
    "JsonData", "NewEvent", "NewRun", "RunChange", "RunOptions", "RunRecord", "RunSpec",
    "RunUpdate", "TaskChange", "TaskRecord", "format_ts", "global_id", "parse_ts",
]

#: What the store can keep as JSON: the JSON types, any sequence as an array and any mapping
#: with string keys as an object (read-only views, so that a caller's ``list[str]`` or
#: ``dict[str, int]`` is one as it is).
JsonData: TypeAlias = (
    str | int | float | bool | None | Sequence["JsonData"] | Mapping[str, "JsonData"]
)
#: The data of an event as it is written (None: ``{}``).
EventData: TypeAlias = Mapping[str, JsonData]

#: How an attempt can end (``finish_attempt(outcome=...)``).
ATTEMPT_OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "interrupted", "conflict", "cancelled")


def global_id(run_id: str, plan_id: str) -> str:
    """The database id of a task or batch: ``"r-3f9a1c2e:T001"``."""
    return f"{run_id}:{plan_id}"


def format_ts(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds (``2026-11-24T18:24:49.123Z``); sorts as text."""
    utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    """The inverse of :func:`format_ts` (an aware UTC datetime)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class RunOptions(msgspec.Struct, kw_only=True):
    """What ``run.submit`` may set besides the spec and the repository."""

    workers: int = 1
    budget_usd: float | None = None
    test_cmd: str | None = None
    allow_dirty: bool = False
    #: A run without a repository: the folder that keeps its results (None: a git run).
    scratch_dir: str | None = None


class NewRun(msgspec.Struct, kw_only=True):
    """Input of :meth:`Store.create_run`. ``title`` defaults to the plan's spec title."""

    id: str  # "r-3f9a1c2e", made by the daemon
    spec_text: str
    spec_path: str | None = None
    repo: str | None = None
    branch: str | None = None
    base_commit: str | None = None
    options: RunOptions = msgspec.field(default_factory=RunOptions)
    title: str | None = None


class RunSpec(msgspec.Struct, kw_only=True):
    """A run's spec and plan (:meth:`Store.get_run_spec`): its biggest data, kept out of
    :class:`RunRecord`. ``plan_json`` is the :class:`Plan` as msgspec JSON, None while the run
    is planning."""

    spec_text: str
    plan_json: str | None

    def plan(self) -> Plan:
        """The run's plan, decoded (plan ids, not global ids)."""
        if self.plan_json is None:
            raise ValueError("the run has no plan yet (it is planning)")
        return msgspec.json.decode(self.plan_json, type=Plan)


class RunRecord(msgspec.Struct, kw_only=True):
    """One run as stored (its spec and plan: :class:`RunSpec`)."""

    id: str
    title: str
    state: str  # protocol.RunState
    spec_path: str | None
    repo: str | None
    branch: str | None
    base_commit: str | None
    options: RunOptions
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    reason: str | None = None
    cost_usd: float = 0.0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def to_info(
        self, *, tasks_by_state: dict[str, int] | None = None, now: datetime | None = None
    ) -> protocol.RunInfo:
        """The wire view of this run; ``elapsed_s`` runs from start to finish (or ``now``)."""
        elapsed_s = 0.0
        if self.started_at is not None:
            end = parse_ts(self.finished_at) if self.finished_at else (now or datetime.now(UTC))
            elapsed_s = max(0.0, (end - parse_ts(self.started_at)).total_seconds())
        counts = dict(tasks_by_state or {})
        return protocol.RunInfo(
            id=self.id, state=self.state, title=self.title, spec_path=self.spec_path,
            repo=self.repo, branch=self.branch, created_at=self.created_at,
            started_at=self.started_at, finished_at=self.finished_at, elapsed_s=elapsed_s,
            workers=self.options.workers, budget_usd=self.options.budget_usd,
            cost_usd=self.cost_usd, test_cmd=self.options.test_cmd, reason=self.reason,
            tasks_by_state=counts, task_count=sum(counts.values()),
            scratch_dir=self.options.scratch_dir,
        )


class TaskRecord(msgspec.Struct, kw_only=True):
    """One task as stored; ``depends_on`` holds global task ids."""

    id: str
    run_id: str
    plan_id: str
    feature: str
    title: str
    domain: str
    complexity: str
    estimate_minutes: int
    depends_on: list[str]
    files: list[str]
    acceptance_criteria: list[str]
    batch_id: str | None
    state: str  # protocol.TaskState
    attempts: int = 0
    model: str | None = None
    cost_usd: float = 0.0
    reason: str | None = None
    prompt: str | None = None
    verification: protocol.VerificationReport | None = None
    description: str = ""
    updated_at: str | None = None

    def to_info(self, *, full: bool = False) -> protocol.TaskInfo:
        """The wire view; ``full`` adds the prompt and the verification report (``task.get``)."""
        return protocol.TaskInfo(
            id=self.id, run_id=self.run_id, title=self.title, state=self.state,
            feature=self.feature, domain=self.domain, complexity=self.complexity,
            estimate_minutes=self.estimate_minutes, batch_id=self.batch_id,
            attempts=self.attempts, model=self.model, cost_usd=self.cost_usd,
            depends_on=list(self.depends_on), files=list(self.files),
            acceptance_criteria=list(self.acceptance_criteria), reason=self.reason,
            prompt=self.prompt if full else None,
            verification=self.verification if full else None,
        )


class BatchRecord(msgspec.Struct, kw_only=True):
    """One batch as stored; ``task_ids`` and ``depends_on`` hold global ids."""

    id: str
    run_id: str
    plan_id: str
    task_ids: list[str]
    depends_on: list[str]
    domain: str
    priority_minutes: int
    prompt_tokens: int
    state: str  # protocol.BatchState
    attempts: int = 0
    model: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    estimate_minutes: int = 0

    def to_info(self) -> protocol.BatchInfo:
        """The wire view of this batch."""
        return protocol.BatchInfo(
            id=self.id, run_id=self.run_id, task_ids=list(self.task_ids), domain=self.domain,
            state=self.state, attempts=self.attempts, model=self.model,
            started_at=self.started_at, prompt_tokens=self.prompt_tokens,
        )


class AttemptRecord(msgspec.Struct, kw_only=True):
    """One attempt at a batch. ``outcome`` is None while it is in flight."""

    id: int
    batch_id: str
    run_id: str
    number: int  # 1-based, per batch
    worktree: str | None
    model: str | None
    started_at: str
    finished_at: str | None = None
    outcome: str | None = None  # one of ATTEMPT_OUTCOMES
    reason: str | None = None
    verification: protocol.VerificationReport | None = None
    commit: str | None = None
    has_checkpoint: bool = False


class TaskChange(msgspec.Struct, frozen=True):
    """Move one task to ``to``; ``attempts_inc`` adds to its attempt count, ``model`` sets it."""

    task_id: str
    to: str
    reason: str | None = None
    attempts_inc: int = 0
    model: str | None = None


class RunChange(NamedTuple):
    """The ``run`` part of :meth:`Store.transition` (a plain tuple in this order works too)."""

    run_id: str
    to: str
    event_type: str
    reason: str | None = None
    data: EventData | None = None


class BatchChange(NamedTuple):
    """The ``batch`` part of :meth:`Store.transition` (a plain tuple in this order works too)."""

    batch_id: str
    to: str
    event_type: str | None = None
    data: EventData | None = None
    model: str | None = None


class RunUpdate(TypedDict, total=False):
    """What :meth:`Store.update_run` may set: plain fields of the run, and its options
    (:class:`RunOptions`)."""

    title: str
    repo: str | None
    branch: str | None
    base_commit: str | None
    spec_path: str | None
    reason: str | None
    workers: int
    budget_usd: float | None
    test_cmd: str | None
    allow_dirty: bool
    scratch_dir: str | None


class AttemptEnd(msgspec.Struct, frozen=True):
    """How an attempt ended, for :meth:`Store.transition` to write with the batch's result
    (as :meth:`Store.finish_attempt` would, in the same transaction)."""

    attempt_id: int
    outcome: str  # one of ATTEMPT_OUTCOMES
    reason: str | None = None
    verification: protocol.VerificationReport | None = None
    commit: str | None = None


class NewEvent(msgspec.Struct, frozen=True):
    """An extra event written by :meth:`Store.transition` in the same transaction."""

    run_id: str
    type: str
    data: EventData | None = None
    batch_id: str | None = None
    task_id: str | None = None
