"""The ``claude-code`` backend: a batch is a headless Claude Code session in its worktree.

Driven through the ``claude-agent-sdk`` package (it starts the CLI and speaks its stream-json
control protocol). Per batch: the routed model, BuildRunner's rules appended to Claude Code's
system prompt, the file tools and Bash (web tools and subagents only when configured), file
paths confined to the worktree by a ``PreToolUse`` hook (the editor tool's rules), the turn
limit and the batch deadline. A fix-up round resumes the same session with the verifier's
report.

The end of a session is only a signal; verification decides. A result that says
``success`` is not trusted more than one that says ``error_max_turns``: both go to
verification. Only three endings skip it: no result at all (the CLI crashed), a login
failure, and a usage or rate limit (the run pauses until the limit resets; nothing fails).

The session id is checkpointed as soon as the CLI announces it; after a daemon crash the
next attempt resumes the same session in its new worktree (its conversation moved to the folder
the CLI reads for that path, :mod:`._claude_sessions`) and is told it moved.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from buildrunnerd.agent._bash import BashSession
from buildrunnerd.agent._claude_cli import ClaudeCli, claude_config_dir, cli_environment
from buildrunnerd.agent._claude_launch import write_launcher
from buildrunnerd.agent._claude_sessions import move_conversation
from buildrunnerd.agent._claude_tally import TOKEN_KEYS, CallTracker, SessionTally
from buildrunnerd.agent._claude_tools import (
    BASE_TOOLS,
    BASH_TOOL,
    PATH_PARAMS,
    SUBAGENT_TOOLS,
    WEB_TOOLS,
    bash_server,
    call_summary,
    check_worktree_path,
)
from buildrunnerd.agent._conversation import format_fix_report
from buildrunnerd.agent._pricing import CostTable
from buildrunnerd.agent._routing import pick_model
from buildrunnerd.config import Config
from buildrunnerd.errors import BudgetExceededError, SandboxUnavailableError
from buildrunnerd.executor import (
    ApiCall,
    BatchJob,
    ExecutionContext,
    ExecutionOutcome,
    RecentCheckpoints,
    TurnEvent,
)
from buildrunnerd.sandbox import Confinement, WorktreePathError

__all__ = ["ClaudeCodeExecutor", "SessionState", "classify_ending"]

_log = structlog.get_logger("buildrunnerd.agent.claude_code")

BACKEND = "claude-code"
_TEXT_EVENT_CHARS = 2000
_RESULT_EVENT_CHARS = 500
_STDERR_TAIL_LINES = 20
_RULES = (
    "BuildRunner runs this session. Your working directory is the repository worktree at {wt}: "
    "every file you read or write must be inside it (relative paths are best); anything else "
    "is refused, and .git is read-only. Do not commit, push or create branches: BuildRunner "
    "verifies, commits and merges your work. Do not ask questions: nobody answers. When the "
    "tasks are done, end with a short summary of what you built."
)
_MOVED_NOTE = (
    "Note from BuildRunner: this batch was interrupted and continues in a fresh worktree "
    "({wt}) made from the run branch. Edits from earlier in this session that were not merged "
    "are gone and the old paths no longer exist: work only under {wt}, check the files you "
    "created or changed, and redo what is missing before you go on."
)
_CONTINUE = "Continue with the tasks above until they are done."


class SessionState(msgspec.Struct, kw_only=True):
    """What a batch's session checkpoint holds (JSON)."""

    session_id: str | None = None
    worktree: str = ""
    model: str = ""
    fix_round: int = 0
    invocations: int = 0
    turns: int = 0  # API calls of the session so far
    summary: str = ""
    tally: SessionTally = msgspec.field(default_factory=SessionTally)

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> SessionState:
        return msgspec.json.decode(data, type=cls)


class Ending(msgspec.Struct, kw_only=True):
    """How one invocation ended, and what the batch does about it."""

    kind: str  # "verify" | "crashed" | "auth" | "limited"
    note: str
    resume_at: float | None = None


def classify_ending(result: Any | None, *, limit_resets_at: float | None,
                    limit_type: str | None, crash: str, now: float, wait_s: float) -> Ending:
    """Decide what an invocation's end means. ``result`` is the SDK's ``ResultMessage`` (or
    None when the CLI produced none); ``limit_*`` come from a ``rate_limit_event`` whose
    status was ``rejected``."""
    if limit_resets_at is not None or (result is not None and result.is_error
                                       and result.api_error_status == 429):
        what = f"the {limit_type.replace('_', '-')} usage limit" if limit_type else (
            "a usage or rate limit")
        at = limit_resets_at if limit_resets_at and limit_resets_at > now else now + wait_s
        return Ending(kind="limited", resume_at=at,
                      note=f"Claude Code hit {what}; the run waits until it resets")
    if result is None:
        return Ending(kind="crashed", note=(
            f"the Claude Code session ended without a result ({crash or 'no result event'}); "
            "its work is not trusted"))
    status = result.api_error_status
    if result.is_error and status in (401, 403):
        return Ending(kind="auth", note=(
            f"Claude Code could not authenticate (HTTP {status}): {(result.result or '')[:200]}"
            "; log in again (docs/claude-code.md) and retry the task"))
    if result.is_error and status in (500, 502, 503, 504, 529):
        return Ending(kind="limited", resume_at=now + wait_s, note=(
            f"the API kept failing (HTTP {status}) after Claude Code's retries; the run waits "
            f"{wait_s:g} s and goes on"))
    text = (result.result or "").strip()
    if result.subtype == "error_max_turns":
        note = f"the session stopped at its turn limit ({result.num_turns} turns)"
    elif result.subtype == "error_during_execution":
        errors = "; ".join(str(e) for e in (result.errors or []))[:300]
        note = "the CLI reported an error during execution" + (f": {errors}" if errors else "")
    elif result.subtype != "success":
        note = f"the session ended with {result.subtype!r}"
    elif result.is_error:
        note = f"the session ended with an error: {text[:300] or '(no text)'}"
    elif result.stop_reason == "tool_use":
        note = "the session ended in the middle of a tool call (stop_reason tool_use)"
    elif not text:
        note = "the session ended with an empty result"
    else:
        note = "the session says it is done"
    return Ending(kind="verify", note=note + "; verification decides")


# What the CLI says when it has no conversation for a session id it is asked to resume.
_NO_CONVERSATION = "No conversation found with session ID"


@dataclass(slots=True)
class _Invocation:
    """One CLI process's worth of a session: its clocks and what it reported."""

    resumed: bool
    tracker: CallTracker = field(default_factory=CallTracker)
    limit_at: float | None = None
    limit_type: str | None = None
    started: float = field(default_factory=time.monotonic)
    turn_started: float = field(default_factory=time.monotonic)  # when the next call began

    def lap_ms(self) -> int:
        """A call's latency: from its start (the CLI's first message, or the tool results
        before it) to its final usage; then the next call starts."""
        now = time.monotonic()
        lap, self.turn_started = now - self.turn_started, now
        return int(lap * 1000)


class _Guard:
    """The ``PreToolUse`` hook and the permission callback of one session: file tools stay in
    the worktree (by :func:`resolve_in_worktree`), other tools only from the allowed set.

    A hook sees every tool call (the permission callback only those the CLI's own rules
    would ask about), so the confinement lives in the hook."""

    def __init__(self, worktree: Path, allowed: list[str], emit: Callable[..., Awaitable[None]]
                 ) -> None:
        self.root = worktree
        self.allowed = set(allowed)
        self._emit = emit

    def check(self, tool: str, params: dict[str, Any]) -> str | None:
        """None when the call may go on, else the reason (for the model)."""
        if tool not in self.allowed:
            return f"The tool {tool} is not available here; use {', '.join(sorted(self.allowed))}."
        pattern = params.get("pattern")
        if tool == "Glob" and isinstance(pattern, str) and (
                pattern.startswith(("/", "~")) or ".." in Path(pattern).parts):
            return "Glob patterns must be relative to the repository, without '..'."
        if tool in PATH_PARAMS:
            key, write = PATH_PARAMS[tool]
            raw = params.get(key)
            if raw is None and not write:
                return None  # Glob/Grep default to the working directory
            try:
                check_worktree_path(self.root, str(raw or ""), write=write)
            except WorktreePathError as exc:
                return exc.message
        return None

    async def pre_tool_use(self, input_data: Any, tool_use_id: str | None,
                           context: Any) -> Any:
        tool = str(input_data.get("tool_name", ""))
        params = input_data.get("tool_input") or {}
        reason = self.check(tool, params if isinstance(params, dict) else {})
        await self._emit("tool.call", call_summary(tool, params, refused=reason))
        if reason is None:
            return {}
        return {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                                       "permissionDecision": "deny",
                                       "permissionDecisionReason": reason}}

    async def can_use_tool(self, tool: str, params: dict[str, Any], context: Any) -> Any:
        from claude_agent_sdk import PermissionResultAllow, PermissionResultDeny

        reason = self.check(tool, params)
        if reason is not None:
            return PermissionResultDeny(message=reason)
        # What passed the guard may run: BuildRunner's bash is confined on its own.
        return PermissionResultAllow()


class ClaudeCodeExecutor:
    """Runs batches as Claude Code sessions (one CLI process per invocation).

    ``cli``: the CLI found at start-up (:func:`~._claude_cli.probe_claude_cli`); each
    invocation starts it through a launcher that confines it (:mod:`._claude_launch`)."""

    name = BACKEND

    def __init__(self, config: Config, cli: ClaudeCli, *, env: Mapping[str, str], home: Path,
                 confinement: Confinement) -> None:
        self.config = config
        self.cli = cli
        self.costs = CostTable(config.pricing)
        self.confinement = confinement
        self._config_dir = cli.config_dir or claude_config_dir(home)
        self._launch_dir = self._config_dir / "launch"
        self._env = cli_environment(env, self._config_dir)
        self._recent = RecentCheckpoints()

    async def aclose(self) -> None:
        """Nothing is held between batches (each invocation is its own process)."""

    # --- state ---
    def _initial_state(self, job: BatchJob) -> tuple[SessionState, str, str | None]:
        """The session to resume (or a new one), the prompt of this invocation, and the
        worktree the session ran in when it is another one (its conversation moves along)."""
        saved = self._recent.saved(job)
        model = pick_model(self.config.models, [t.complexity for t in job.tasks], job.escalation)
        state: SessionState | None = None
        if saved is not None:
            try:
                state = SessionState.decode(saved)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                _log.warning("checkpoint unreadable; starting a new session",
                             batch=job.batch_id, error=str(exc))
        if state is None or state.session_id is None:
            return (*self._fresh_state(job, model), None)
        moved_from = state.worktree if state.worktree not in ("", job.worktree) else None
        parts: list[str] = []
        if job.resume_state is not None or (state.worktree and state.worktree != job.worktree):
            # A checkpoint handed back by the daemon is an earlier attempt's: its worktree is
            # gone (a pooled one may even have the same path, reset to the run branch).
            parts.append(_MOVED_NOTE.format(wt=job.worktree))
        if job.fix_report is not None and job.fix_round > state.fix_round:
            parts.append(format_fix_report(job.fix_report))
        if not parts or job.fix_report is None:
            parts.append(_CONTINUE)
        state.worktree, state.model, state.fix_round = job.worktree, model, job.fix_round
        return state, "\n\n".join(parts), moved_from

    @staticmethod
    def _fresh_state(job: BatchJob, model: str) -> tuple[SessionState, str]:
        """A new session for ``job`` and its first prompt."""
        prompt = job.prompt.user
        if job.fix_report is not None:
            prompt += "\n\n" + format_fix_report(job.fix_report)
        return SessionState(worktree=job.worktree, model=model, fix_round=job.fix_round), prompt

    async def _checkpoint(self, job: BatchJob, ctx: ExecutionContext,
                          state: SessionState, *, call: ApiCall | None = None,
                          events: Sequence[TurnEvent] = ()) -> None:
        """Checkpoint the session, with a billed ``call`` and ``events`` in the same store
        transaction (one commit: a crash keeps all of them or none)."""
        await self._recent.save(job, ctx, state.encode(), call=call, events=events)

    # --- one batch ---
    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        """One invocation of the batch's session; see the module docstring."""
        state, prompt, moved_from = self._initial_state(job)
        try:
            await ctx.check_budget(self._estimate_usd(state.model, job))
            if moved_from is not None and state.session_id is not None:
                await self._move_conversation(job, state.session_id, moved_from)
            with anyio.move_on_after(self.config.agent.batch_timeout_s):
                resuming = state.session_id
                outcome = await self._invoke(job, ctx, state, prompt)
                if (resuming is not None and outcome.status == "failed"
                        and _NO_CONVERSATION in (outcome.reason or "")):
                    # The CLI saves a session's conversation as it goes: killed before it
                    # saved, it has none (in any folder). Start the batch again in a new
                    # session rather than fail it.
                    _log.warning("claude_code.session_lost", batch=job.batch_id,
                                 session_id=resuming, worktree=job.worktree)
                    state, prompt = self._fresh_state(job, state.model)
                    outcome = await self._invoke(job, ctx, state, prompt)
                return outcome
            return ExecutionOutcome(
                "failed", model=state.model, summary=state.summary,
                reason=f"batch {job.batch_id} timed out after "
                f"{self.config.agent.batch_timeout_s:g} s (agent.batch_timeout_s)")
        except BudgetExceededError as exc:
            return ExecutionOutcome("budget_exceeded", reason=str(exc), model=state.model)

    async def _move_conversation(self, job: BatchJob, session_id: str, old_worktree: str) -> None:
        """Put the session's conversation in the folder the CLI reads for the new worktree
        (the CLI keeps it per working directory), so it resumes the same conversation."""
        try:
            moved = await anyio.to_thread.run_sync(
                move_conversation, self._config_dir, session_id, old_worktree, job.worktree)
        except OSError as exc:
            moved = False
            _log.warning("claude_code.conversation_not_moved", batch=job.batch_id,
                         session_id=session_id, error=str(exc))
        _log.info("claude_code.conversation_moved" if moved else "claude_code.no_conversation",
                  batch=job.batch_id, session_id=session_id, worktree=job.worktree,
                  previous=old_worktree)

    def _estimate_usd(self, model: str, job: BatchJob) -> float:
        # Before a session: its prompt at the cache-write rate (what the first call costs).
        return self.costs.estimate_usd(model, cached_tokens=0, new_tokens=job.prompt.tokens)

    def _tools(self) -> list[str]:
        tools = list(BASE_TOOLS)
        if self.config.claude_code.web_tools:
            tools += WEB_TOOLS
        if self.config.claude_code.subagents:
            tools += SUBAGENT_TOOLS
        return tools

    async def _invoke(self, job: BatchJob, ctx: ExecutionContext, state: SessionState,
                      prompt: str) -> ExecutionOutcome:
        from claude_agent_sdk import (
            AssistantMessage,
            ClaudeAgentOptions,
            ClaudeSDKClient,
            ClaudeSDKError,
            HookMatcher,
            RateLimitEvent,
            ResultMessage,
            StreamEvent,
            SystemMessage,
            UserMessage,
        )

        worktree = Path(job.worktree)
        tools = self._tools()
        guard = _Guard(worktree, [*tools, BASH_TOOL], ctx.emit)
        bash = BashSession(worktree, confinement=self.confinement,
                           timeout_s=self.config.agent.bash_timeout_s,
                           max_chars=self.config.agent.tool_output_max_chars)
        stderr_tail: list[str] = []

        def on_stderr(line: str) -> None:
            stderr_tail.append(line.rstrip()[:500])
            del stderr_tail[:-_STDERR_TAIL_LINES]

        env = dict(self._env, CLAUDE_CODE_MAX_RETRIES=str(self.config.claude_code.max_retries))
        try:
            cli_path, cleanup = await write_launcher(self.confinement, self.cli.path, worktree,
                                                     self._config_dir, env, self._launch_dir)
        except SandboxUnavailableError as exc:
            await bash.aclose()
            return ExecutionOutcome("failed", reason=str(exc), model=state.model)
        system = "\n\n".join(p for p in (job.prompt.system, _RULES.format(wt=job.worktree)) if p)
        options = ClaudeAgentOptions(
            cwd=str(worktree), cli_path=str(cli_path), env=env, model=state.model,
            tools=tools, disallowed_tools=sorted({*WEB_TOOLS, *SUBAGENT_TOOLS} - set(tools)),
            permission_mode="acceptEdits", can_use_tool=guard.can_use_tool,
            hooks={"PreToolUse": [HookMatcher(matcher=None, hooks=[guard.pre_tool_use])]},
            system_prompt={"type": "preset", "preset": "claude_code", "append": system},
            max_turns=self.config.agent.max_turns, resume=state.session_id,
            include_partial_messages=True, setting_sources=[], skills=[],
            mcp_servers={"buildrunner": bash_server(bash)}, strict_mcp_config=True,
            stderr=on_stderr, verbatim_prompts=True,
        )
        resumed = state.session_id is not None
        state.invocations += 1
        inv = _Invocation(resumed=resumed)
        result: Any = None
        crash = ""
        client = ClaudeSDKClient(options)
        try:
            try:
                await client.connect()
                await client.query(prompt)
                async for message in client.receive_response():
                    if isinstance(message, StreamEvent):
                        call = inv.tracker.feed(message.event)
                        if call is not None and message.parent_tool_use_id is None:
                            await self._record_call(job, ctx, state, call, inv)
                    elif isinstance(message, SystemMessage):
                        await self._system(job, ctx, state, message, inv)
                    elif isinstance(message, AssistantMessage):
                        await _emit_assistant(ctx, message)
                    elif isinstance(message, UserMessage):
                        inv.turn_started = time.monotonic()  # tool results: a call follows
                        await _emit_tool_results(ctx, message)
                    elif isinstance(message, RateLimitEvent):
                        await self._rate_limit(ctx, message, inv)
                    elif isinstance(message, ResultMessage):
                        result = message
            except ClaudeSDKError as exc:
                # After an error result the SDK raises too (the CLI exits 1): the result
                # already read is what counts. Without one, this is the crash.
                crash = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(20.0):
                    await client.disconnect()
                await cleanup()
                await bash.aclose()
        if result is None and stderr_tail:
            crash += " | stderr: " + " / ".join(stderr_tail[-5:])
        return await self._finish(job, ctx, state, result, inv.limit_at, inv.limit_type, crash)

    async def _rate_limit(self, ctx: ExecutionContext, message: Any, inv: _Invocation) -> None:
        info = message.rate_limit_info
        await ctx.emit("usage.limit", {
            "status": info.status, "resets_at": info.resets_at, "type": info.rate_limit_type,
            "utilization": info.utilization, "backend": BACKEND})
        if info.status == "rejected":
            inv.limit_type = info.rate_limit_type
            inv.limit_at = (float(info.resets_at) if info.resets_at
                            else time.time() + self.config.claude_code.usage_limit_wait_s)

    async def _system(self, job: BatchJob, ctx: ExecutionContext, state: SessionState,
                      message: Any, inv: _Invocation) -> None:
        data = message.data
        if message.subtype == "init":
            session_id = str(data.get("session_id") or "")
            if session_id and session_id != state.session_id:
                state.session_id = session_id
            inv.turn_started = time.monotonic()
            # Checkpointed at once: a crash from here on resumes this session.
            await self._checkpoint(job, ctx, state, events=[TurnEvent("session.started", {
                "session_id": session_id, "model": data.get("model") or state.model,
                "resumed": inv.resumed, "cli_version": data.get("claude_code_version"),
                "tools": data.get("tools"), "backend": BACKEND,
                # From starting the CLI (launcher, sandbox, CLI) to its first message.
                "startup_ms": int((inv.turn_started - inv.started) * 1000)})])
        elif message.subtype == "api_retry":
            await ctx.emit("agent.retry", {k: data.get(k) for k in (
                "attempt", "max_retries", "retry_delay_ms", "error_status", "error")})

    async def _record_call(self, job: BatchJob, ctx: ExecutionContext, state: SessionState,
                           call: dict[str, Any], inv: _Invocation) -> None:
        usage = call["usage"]
        model = call["model"] or state.model
        tokens = {k: int(usage.get(k) or 0) for k in TOKEN_KEYS}
        row = ApiCall(
            model, tokens["input_tokens"], tokens["output_tokens"],
            tokens["cache_creation_input_tokens"], tokens["cache_read_input_tokens"],
            cost_usd=self.costs.cost_usd(model, usage),
            latency_ms=inv.lap_ms(),
            request_id=call.get("message_id"), stop_reason=call.get("stop_reason"),
            purpose="batch", backend=BACKEND)
        state.tally.add_streamed(row)
        state.turns += 1
        # The call, its turn's event and the checkpoint (which counts the call in its
        # tally): one transaction.
        await self._checkpoint(job, ctx, state, call=row, events=[TurnEvent("agent.turn", {
            "turn": state.turns, "model": model, "stop_reason": row.stop_reason,
            "session_id": state.session_id})])
        # Budgets apply: the spend so far (this call included) against the run's budget.
        await ctx.check_budget(0.0)

    async def _finish(self, job: BatchJob, ctx: ExecutionContext, state: SessionState,
                      result: Any, limit_at: float | None, limit_type: str | None,
                      crash: str) -> ExecutionOutcome:
        cli_cost: float | None = None
        ours = 0.0
        if result is not None:
            unseen, cli_cost = state.tally.settle(result.model_usage, result.total_cost_usd)
            for model, tokens in unseen.items():
                # Calls the CLI made without streaming them to us (side calls): still billed.
                row = ApiCall(model, tokens["input_tokens"], tokens["output_tokens"],
                              tokens["cache_creation_input_tokens"],
                              tokens["cache_read_input_tokens"],
                              cost_usd=self.costs.cost_usd(model, tokens),
                              purpose="batch", backend=BACKEND, stop_reason="unstreamed")
                await ctx.record_api_call(row)
                ours += row.cost_usd
            if (result.result or "").strip():
                state.summary = (result.result or "").strip()[:4000]
        else:
            state.tally.comparable = False
        ending = classify_ending(result, limit_resets_at=limit_at, limit_type=limit_type,
                                 crash=crash, now=time.time(),
                                 wait_s=self.config.claude_code.usage_limit_wait_s)
        await self._checkpoint(job, ctx, state)
        data: dict[str, Any] = {"session_id": state.session_id, "ending": ending.kind,
                                "note": ending.note, "model": state.model,
                                "backend": BACKEND, "cli_cost_usd": cli_cost}
        if result is not None:
            data.update(subtype=result.subtype, is_error=result.is_error,
                        stop_reason=result.stop_reason, terminal_reason=result.terminal_reason,
                        num_turns=result.num_turns, api_error_status=result.api_error_status,
                        permission_denials=len(result.permission_denials or []))
        if ours:
            data["unstreamed_cost_usd"] = ours
        await ctx.emit("session.ended", data)
        _log.info("session.ended", batch=job.batch_id, **{k: v for k, v in data.items()
                                                         if k != "note"}, note=ending.note)
        if ending.kind == "limited":
            return ExecutionOutcome("usage_limited", reason=ending.note, model=state.model,
                                    summary=state.summary, resume_at=ending.resume_at)
        if ending.kind in ("crashed", "auth"):
            return ExecutionOutcome("failed", reason=ending.note, model=state.model,
                                    summary=state.summary)
        return ExecutionOutcome("completed", model=state.model, summary=state.summary or (
            f"(Claude Code) {ending.note}"))


async def _emit_assistant(ctx: ExecutionContext, message: Any) -> None:
    for block in message.content:
        text = getattr(block, "text", None)
        if isinstance(text, str) and text.strip():
            await ctx.emit("agent.text", {"text": text[:_TEXT_EVENT_CHARS], "chars": len(text)})


async def _emit_tool_results(ctx: ExecutionContext, message: Any) -> None:
    content = message.content if isinstance(message.content, list) else []
    for block in content:
        if type(block).__name__ != "ToolResultBlock":
            continue
        output = block.content
        if isinstance(output, list):
            output = " ".join(str(part.get("text", "")) for part in output
                              if isinstance(part, dict))
        await ctx.emit("tool.result", {"is_error": bool(block.is_error),
                                       "output": str(output or "")[:_RESULT_EVENT_CHARS]})
