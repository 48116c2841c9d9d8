"""Wire types shared by the daemon and ``brctl``: JSON-RPC codes, states, events, results.

Also the verification report (:class:`VerificationReport`): made by the workspace layer, read
by the fix-up prompt (``prompt.fix_prompt``) and the backends (``BatchJob.fix_report``), which
sit below it, kept by the store and sent (``task.get``'s ``verification``) as itself: it is
JSON only inside the store's column (``store/_reports.py``), and a stored one that does not
decode reads back as :meth:`VerificationReport.unreadable`.

One definition of every message (msgspec Structs), validated at the boundary. Light on purpose:
it must only depend on msgspec and the standard library. The codes and states are defined in
:mod:`buildrunnerd.codes` (no msgspec: ``brctl`` imports them at start-up) and re-exported here.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from buildrunnerd.codes import (
    AGENT_FAILED,
    BUDGET_EXCEEDED,
    CONFIG_INVALID,
    DAEMON_STOPPING,
    DEFAULT_MAX_FRAME_BYTES,
    FRAME_TOO_LARGE,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    INVALID_STATE,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    PARSE_ERROR,
    REPO_INVALID,
    RUN_STATES,
    SANDBOX_UNAVAILABLE,
    SPEC_INVALID,
    STORE_FAILED,
    TASK_STATES,
    TERMINAL_RUN_STATES,
    UNAUTHORIZED,
    WORKSPACE_FAILED,
)

__all__ = [
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "NOT_FOUND", "INVALID_STATE", "FRAME_TOO_LARGE", "UNAUTHORIZED", "DAEMON_STOPPING",
    "SPEC_INVALID", "REPO_INVALID", "CONFIG_INVALID", "STORE_FAILED", "WORKSPACE_FAILED",
    "AGENT_FAILED", "BUDGET_EXCEEDED", "SANDBOX_UNAVAILABLE",
    "RunState", "TaskState", "BatchState", "Complexity", "Domain",
    "RUN_STATES", "TASK_STATES", "TERMINAL_RUN_STATES",
    "Event", "RunInfo", "TaskInfo", "BatchInfo", "CostRow", "CostSummary", "PingResult",
    "Request", "Response", "ErrorObject", "Notification",
    "DEFAULT_MAX_FRAME_BYTES",
    "CheckResult", "VerificationReport", "UNREADABLE_CHECK",
]


RunState = Literal["queued", "planning", "running", "paused", "succeeded", "failed", "cancelled"]
TaskState = Literal[
    "pending", "ready", "running", "verifying", "succeeded", "failed", "blocked", "cancelled"
]
BatchState = Literal["pending", "running", "verifying", "succeeded", "failed", "cancelled"]
Complexity = Literal["simple", "medium", "complex", "critical"]
Domain = Literal["database", "backend", "frontend", "tests", "docs", "infra"]



# --- the verification report ---------------------------------------------------------------
#: The one check of a report the store kept but this version cannot read.
UNREADABLE_CHECK = "report"


class CheckResult(msgspec.Struct, omit_defaults=True):
    """One check's outcome (or one problem it found)."""

    name: str  # files | compile | protected | stubs | scope | import | tests | secrets
    passed: bool
    message: str
    file: str | None = None
    line: int | None = None
    output_tail: str | None = None
    exit_code: int | None = None  # of a command (import, tests)

    def where(self) -> str:
        """``file:line``, ``file`` or "" (the check names no place)."""
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file or ""


class VerificationReport(msgspec.Struct):
    """All checks of one verification. ``passed`` iff every check passed."""

    passed: bool
    checks: list[CheckResult] = []  # (an early version stored ``{"passed": ...}`` alone)
    test_command: str | None = None
    # From the test report: total, passed, failed, errors, skipped, protected,
    # protected_passed (None: no report was read).
    test_counts: dict[str, int] | None = None
    # ``classname::name`` of the protected tests that passed (the next baseline).
    passed_tests: list[str] = []
    # The tree the tests ran on, when the disk held exactly the staged files (nothing ignored,
    # no cache): a merge that commits this very tree needs no second test run.
    tree: str | None = None

    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> CheckResult | None:
        """The first check called ``name``, if any."""
        return next((c for c in self.checks if c.name == name), None)

    def first_failure(self) -> str:
        """The first failed check in one line: ``<name> failed at <where>: <message>``."""
        for check in self.failures():
            where = check.where()
            at = f" at {where}" if where else ""
            return f"{check.name} failed{at}: {check.message or 'failed'}"
        return "verification failed"

    def failure_signature(self) -> list[tuple[str, str, str, str]]:
        """What identifies the failures (not the output tails, which hold timings): the same
        signature after a fix-up round means the round changed nothing the checks see."""
        return sorted((c.name, str(c.file), str(c.line), c.message) for c in self.failures())

    def with_tails(self, max_chars: int) -> VerificationReport:
        """The report with every check's output tail cut to its last ``max_chars``."""
        checks = [msgspec.structs.replace(c, output_tail=(c.output_tail or "")[-max_chars:])
                  for c in self.checks]
        return msgspec.structs.replace(self, checks=checks)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON types), to search a report's text. The store keeps the report as
        itself (:mod:`buildrunnerd.store`), JSON only in its column."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    @classmethod
    def unreadable(cls, why: str, *, said_passed: bool | None = None) -> VerificationReport:
        """What stands for a stored report this version cannot read (``why``): a failed
        report whose one check, :data:`UNREADABLE_CHECK`, says so, and what the row said of
        its verdict, when it said it. Not an error of the reader: the task's state and events
        still say how the task ended."""
        was = f" (it says passed: {str(said_passed).lower()})" if said_passed is not None else ""
        return cls(passed=False, checks=[CheckResult(
            UNREADABLE_CHECK, False,
            f"the stored verification report cannot be read{was}: {why}; it is kept as "
            "it was in the database, and the next verification of the task replaces it")])

    def summary(self) -> str:
        """One line per failure (or "all checks passed"), for task state reasons and logs."""
        if self.passed:
            return "all checks passed"
        return "; ".join(
            f"{c.name}: {c.file + (f':{c.line}' if c.line else '') + ': ' if c.file else ''}"
            f"{c.message.splitlines()[0] if c.message else ''}"
            for c in self.failures()
        )


# --- JSON-RPC envelopes ---------------------------------------------------------------------
class ErrorObject(msgspec.Struct, omit_defaults=True):
    """The ``error`` member of a failed response: a JSON-RPC ``code``, a readable ``message``
    and ``data`` with details (e.g. spec problems)."""

    code: int
    message: str
    data: Any = None


class Request(msgspec.Struct, omit_defaults=True):
    """A request (``id`` set) or a notification (``id`` unset)."""

    method: str
    jsonrpc: str = "2.0"
    params: dict[str, Any] | list[Any] | None = None
    id: int | str | None = None


class Response(msgspec.Struct, omit_defaults=False):
    """The reply to a request: exactly one of ``result`` and ``error`` is meaningful."""

    id: int | str | None
    jsonrpc: str = "2.0"
    result: Any = None
    error: ErrorObject | None = None


class Notification(msgspec.Struct):
    """A message from the daemon that expects no reply (``event`` on a subscribed connection)."""

    method: str
    params: Any
    jsonrpc: str = "2.0"


# --- Domain records as they cross the wire --------------------------------------------------
class Event(msgspec.Struct):
    """One stored event; ``id`` increases and is the cursor for ``since``. Every field is always
    on the wire (``data`` is ``{}`` when empty; ``batch_id``/``task_id`` may be null)."""

    id: int
    ts: str  # RFC 3339, UTC
    run_id: str
    type: str
    data: dict[str, Any] = {}
    batch_id: str | None = None
    task_id: str | None = None


class TaskInfo(msgspec.Struct):
    """A task as ``run.get``, ``task.list`` and ``task.get`` return it (``task.get`` adds the
    prompt, verification and events)."""

    id: str
    run_id: str
    title: str
    state: str
    feature: str = ""
    domain: str = ""
    complexity: str = "medium"
    estimate_minutes: int = 60
    batch_id: str | None = None
    attempts: int = 0
    model: str | None = None
    cost_usd: float = 0.0
    depends_on: list[str] = []
    files: list[str] = []
    acceptance_criteria: list[str] = []
    reason: str | None = None  # why failed/blocked/cancelled
    # Only in task.get:
    prompt: str | None = None
    verification: VerificationReport | None = None
    events: list[Event] | None = None


class BatchInfo(msgspec.Struct):
    """A batch of tasks that one agent conversation works on, as ``run.get`` returns it."""

    id: str
    run_id: str
    task_ids: list[str]
    domain: str
    state: str
    attempts: int = 0
    model: str | None = None
    started_at: str | None = None
    prompt_tokens: int = 0


class RunInfo(msgspec.Struct):
    """A run as ``run.list`` and ``run.get`` return it (``run.get`` adds tasks and batches)."""

    id: str
    state: str
    title: str
    spec_path: str | None
    repo: str | None
    branch: str | None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    elapsed_s: float = 0.0
    workers: int = 1
    budget_usd: float | None = None
    cost_usd: float = 0.0
    test_cmd: str | None = None
    reason: str | None = None
    tasks_by_state: dict[str, int] = {}
    task_count: int = 0
    tasks: list[TaskInfo] | None = None  # in run.get
    batches: list[BatchInfo] | None = None  # in run.get
    scratch_dir: str | None = None  # a run without a repository: where its results are kept


class CostRow(msgspec.Struct):
    """Spend and tokens of one group of ``costs.summary`` (a model, a day or a run)."""

    key: str  # model name, day (YYYY-MM-DD) or run id, per ``by``
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float


class CostSummary(msgspec.Struct):
    """The result of ``costs.summary``: totals, and one row per group of ``by``."""

    by: str
    total_usd: float
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    rows: list[CostRow]
    run_id: str | None = None
    backends: list[str] = msgspec.field(default_factory=list)  # that made the calls
    # True when some calls were made through a Claude Code subscription: their dollars are
    # what the tokens would cost at API list prices, not what the user was billed.
    api_equivalent: bool = False


class PingResult(msgspec.Struct):
    """The result of ``daemon.ping``: who is answering, and with which backend and workers."""

    version: str
    pid: int
    uptime_s: float
    backend: str  # "anthropic" | "claude-code" | "simulated"
    simulated: bool
    workers: int
    socket: str
    home: str
    # How worktree content is confined: "bwrap" | "sandbox-exec" | "off" (explicit opt-out) |
    # "unavailable" (no working sandbox: model work is refused; sandbox_detail says why).
    sandbox: str = "unavailable"
    sandbox_detail: str = ""
    active_runs: int = 0
    backend_reason: str = ""  # why this backend was chosen (flag, config, or what auto found)
