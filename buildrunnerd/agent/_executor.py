"""The ``anthropic`` backend: a batch is a conversation with Claude that edits the worktree.

Per batch: the batch prompt, the editor and bash tools, and a loop of Messages API calls until
the model ends its turn, or a turn, token or time limit is reached. After every turn the
conversation is checkpointed (``ctx.checkpoint``); a restart resumes from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anthropic
import anyio
import structlog

from buildrunnerd import paths
from buildrunnerd.agent._bash import BASH_TOOL_NAME, BashSession, bash_tool_param
from buildrunnerd.agent._calls import CallSettings, Turn, call_with_retries
from buildrunnerd.agent._confine import ToolError
from buildrunnerd.agent._conversation import (
    ConversationState,
    append_user,
    count_request_tokens,
    format_fix_report,
    last_text,
    with_cache_breakpoint,
)
from buildrunnerd.agent._editor import EDITOR_TOOL_NAME, TextEditor, editor_tool_param
from buildrunnerd.agent._pricing import CostTable
from buildrunnerd.agent._retry import RateLimiter
from buildrunnerd.agent._routing import pick_model
from buildrunnerd.config import Config
from buildrunnerd.credentials import redact_secrets
from buildrunnerd.errors import AgentError, BudgetExceededError, SandboxUnavailableError
from buildrunnerd.executor import (
    ApiCall,
    BatchJob,
    ExecutionContext,
    ExecutionOutcome,
    InOrderContext,
    RecentCheckpoints,
    TurnEvent,
    WritesBehind,
)
from buildrunnerd.prompt import default_counter
from buildrunnerd.sandbox import Confinement

__all__ = ["AnthropicExecutor"]

_log = structlog.get_logger("buildrunnerd.agent")
_EPHEMERAL = {"type": "ephemeral"}
_TEXT_EVENT_CHARS = 2000  # events carry a preview; the conversation holds the full text
_RESULT_EVENT_CHARS = 500
_MAX_CUTOFFS = 3  # answers in a row cut off by max_tokens before the model is escalated
_CONTINUE = ("Your previous answer was cut off by the output token limit. Continue exactly "
             "where you stopped; keep tool calls short.")
_MOVED_NOTE = (
    "Note from BuildRunner: the daemon restarted and this batch continues in a fresh worktree "
    "({wt}) made from the run branch. Edits from earlier in this conversation that were not "
    "merged are gone: check the files you created or changed (view them) and redo what is "
    "missing before you go on."
)
# The same for every batch: a system block, read from the prompt cache by all of them.
_WORKTREE_RULES = (
    "Your working directory is a repository worktree (its path is at the end of your first "
    "message). Give tool paths relative to it (or absolute under it); nothing outside it can "
    "be read or written, and .git is read-only. Do not commit: BuildRunner verifies, commits "
    "and merges your work. When the tasks are done, end your turn with a short summary of "
    "what you built."
)
# This batch's own: the last block of the first message, after everything shared.
_WORKTREE_NOTE = "Your working directory is the repository worktree at {wt}."


class AnthropicExecutor:
    """Runs batches with Claude through the Messages API.

    One instance per daemon: its rate limiter is shared by every batch, so all workers back
    off together when the API says so. ``api_key``/``base_url`` default to the SDK's own
    handling (``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``)."""

    name = "anthropic"

    def __init__(self, config: Config, *, api_key: str | None = None,
                 base_url: str | None = None, limiter: RateLimiter | None = None,
                 socket_path: Path | None = None, state_dir: Path | None = None,
                 confinement: Confinement | None = None) -> None:
        self.config = config
        self.limiter = limiter or RateLimiter()
        self.costs = CostTable(config.pricing)
        # The SDK's retries are off: ours honour retry-after and share the limiter.
        self.client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=0,
            timeout=config.agent.request_timeout_s)
        self._settings = CallSettings.from_config(config.agent, config.models.fallback)
        self._counter = default_counter()
        self._socket_path = socket_path or paths.socket_path()
        self._state_dir = state_dir
        # The daemon hands its own; made (and probed) on the first batch otherwise.
        self._confinement = confinement
        # Last checkpoint per attempt: a fix-up round continues the conversation (and its
        # cache) when the daemon does not hand it back.
        self._recent = RecentCheckpoints()

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.close()

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        """Work on ``job`` until the model is done; see the module docstring."""
        state = self._initial_state(job)
        worktree = Path(job.worktree)
        if self._confinement is None:
            self._confinement = await Confinement.create(
                self.config, state_dir=self._state_dir, socket_path=self._socket_path)
        try:
            self._confinement.require()
        except SandboxUnavailableError as exc:
            return ExecutionOutcome("failed", reason=str(exc), model=state.model)
        bash = BashSession(worktree, confinement=self._confinement,
                           timeout_s=self.config.agent.bash_timeout_s,
                           max_chars=self.config.agent.tool_output_max_chars)
        editor = TextEditor(worktree, max_characters=self.config.agent.tool_output_max_chars,
                            max_read_bytes=self.config.agent.editor_max_read_bytes,
                            max_write_bytes=self.config.agent.editor_max_write_bytes)
        try:
            with anyio.move_on_after(self.config.agent.batch_timeout_s):
                return await self._run(job, ctx, state, editor, bash)
            return ExecutionOutcome(
                "failed", reason=f"batch {job.batch_id} timed out after "
                f"{self.config.agent.batch_timeout_s:g} s (agent.batch_timeout_s) after "
                f"{state.turns} turns", model=state.model, summary=state.summary)
        except BudgetExceededError as exc:
            return ExecutionOutcome("budget_exceeded", reason=str(exc), model=state.model)
        except AgentError as exc:
            return ExecutionOutcome("failed", reason=str(exc), model=state.model)
        finally:
            await bash.aclose()

    # --- state ---
    def _initial_state(self, job: BatchJob) -> ConversationState:
        saved = self._recent.saved(job)
        if saved is not None:
            try:
                state = ConversationState.decode(saved)
            except Exception as exc:  # noqa: BLE001 - a bad checkpoint costs a fresh start
                _log.warning("checkpoint unreadable; starting the batch afresh",
                             batch=job.batch_id, error=str(exc))
            else:
                if job.fix_round > state.fix_round and job.fix_report is not None:
                    state.fix_round = job.fix_round
                    state.done = False
                    append_user(state.messages, [{"type": "text",
                                                  "text": format_fix_report(job.fix_report)}])
                if job.escalation:
                    state.model = self._model_for(job)
                if state.version < 2 and not state.done:
                    # Saved before the worktree's path moved from the system prompt into the
                    # first message: say it once before the next call.
                    state.pending_note = _WORKTREE_NOTE.format(wt=job.worktree)
                state.version = 2
                if (job.resume_state is not None and not state.done) or (
                        state.worktree and state.worktree != job.worktree):
                    # The daemon resumes an interrupted attempt in a fresh worktree (pooled
                    # worktrees may even reuse the path): the conversation must not believe
                    # its earlier edits are still there. (A finished one goes to
                    # verification as it is.)
                    state.pending_note = _MOVED_NOTE.format(wt=job.worktree)
                state.worktree = job.worktree
                return state
        # A list of blocks from the start, never the string shorthand: the request that
        # writes this message to the prompt cache carries it as a block (with its breakpoint),
        # and every later turn must send the very same block for its prefix to be read back.
        content: list[dict[str, Any]] = [{"type": "text", "text": block}
                   for block in (job.prompt.user_blocks or [job.prompt.user])]
        if len(content) > 1:
            # The end of the run's shared context (overview, "already built"): the next batches
            # of the run start with these very blocks and read them from the cache. This
            # marker stays in the history: tools, system, this and the conversation's end
            # make the API's limit of four.
            content[-2]["cache_control"] = dict(_EPHEMERAL)
        content.append({"type": "text", "text": _WORKTREE_NOTE.format(wt=job.worktree)})
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if job.fix_report is not None:
            append_user(messages, [{"type": "text", "text": format_fix_report(job.fix_report)}])
        return ConversationState(model=self._model_for(job), messages=messages,
                                 fix_round=job.fix_round, worktree=job.worktree)

    def _model_for(self, job: BatchJob) -> str:
        return pick_model(self.config.models, [t.complexity for t in job.tasks], job.escalation)

    async def _checkpoint(self, job: BatchJob, ctx: ExecutionContext, writes: WritesBehind,
                          state: ConversationState, *, call: ApiCall | None = None,
                          events: Sequence[TurnEvent] = ()) -> None:
        """Checkpoint the conversation, with the turn's billed ``call`` and ``events`` in the
        same store transaction (one commit: a crash keeps the whole turn or none of it).
        Written behind: the loop goes on (the turn's tools; the next request's build and
        count) while it is stored; ``ctx`` is the daemon's own, the loop's
        :class:`InOrderContext` waits for the write, and so does the next call."""
        data = state.encode()

        async def write() -> None:
            await self._recent.save(job, ctx, data, call=call, events=events)

        await writes.start(write, bills=call is not None)

    # --- the loop ---
    async def _run(self, job: BatchJob, ctx: ExecutionContext, state: ConversationState,
                   editor: TextEditor, bash: BashSession) -> ExecutionOutcome:
        """:meth:`_loop` with its turn records written behind; every one is stored when this
        returns."""
        error: Exception | None = None
        outcome: ExecutionOutcome | None = None
        try:
            async with anyio.create_task_group() as tg:
                writes = WritesBehind(tg)
                try:
                    outcome = await self._loop(job, ctx, InOrderContext(ctx, writes), writes,
                                               state, editor, bash)
                    await writes.wait()
                except Exception as exc:  # raised below, not as the task group's group
                    error = exc
        finally:
            # (A cancelled batch: the task group waited for the write in flight.)
            writes.discard()
        if error is not None:
            raise error
        assert outcome is not None
        return outcome

    async def _loop(self, job: BatchJob, store_ctx: ExecutionContext, ctx: ExecutionContext,
                    writes: WritesBehind, state: ConversationState, editor: TextEditor,
                    bash: BashSession) -> ExecutionOutcome:
        agent = self.config.agent
        # Whether the first tool call's event went out with the turn that asked for it (not
        # after a restart, which resumes from the checkpoint and announces it itself).
        announced = False
        while True:
            if state.pending_tools:
                results, last = await self._run_tools(
                    ctx, state.messages[-1]["content"], editor, bash, announced=announced)
                announced = False
                if state.continue_after_tools:
                    results.append({"type": "text", "text": _CONTINUE})
                append_user(state.messages, results)
                state.pending_tools = state.continue_after_tools = False
                await self._checkpoint(job, store_ctx, writes, state, events=last)
            if state.pending_note:
                append_user(state.messages, [{"type": "text", "text": state.pending_note}])
                state.pending_note = ""
                state.done = False
            if state.done:
                return ExecutionOutcome("completed", model=state.model, summary=state.summary)
            if state.turns >= agent.max_turns + state.extra_turns:
                if not await self._escalate(job, ctx, state, "turn limit"):
                    return self._failed(state, f"turn limit reached ({state.turns} turns, "
                                        "agent.max_turns, after escalating the model) before "
                                        "the model finished")
                state.extra_turns += max(1, agent.max_turns // 2)
            if state.cutoffs >= _MAX_CUTOFFS:
                if not await self._escalate(job, ctx, state, "answers cut off by max_tokens"):
                    return self._failed(state, f"{state.cutoffs} answers in a row were cut off "
                                        "by the output token limit (models.max_tokens), after "
                                        "escalating the model; split the batch's tasks or "
                                        "raise models.max_tokens")
                state.cutoffs = 0
            if agent.max_batch_tokens and state.tokens >= agent.max_batch_tokens:
                return self._failed(state, f"token limit reached ({state.tokens} tokens, "
                                    "agent.max_batch_tokens) before the model finished")
            params = self._params(job, state)
            await self._check_budget(ctx, state, params)
            # The request goes out once everything before it is stored (the checkpoint after
            # the tools was written while the request was built and counted): a crash after
            # it was sent finds the conversation up to it.
            await writes.wait()
            turn = await call_with_retries(
                self.client, params, settings=self._settings, limiter=self.limiter,
                emit=ctx.emit, on_text=lambda s, final: self._emit_text(ctx, s, final))
            state.model = params["model"]  # the fallback may have replaced it
            call = self._api_call(turn)
            state.turns += 1
            state.output_tokens += turn.usage.get("output_tokens", 0)
            state.tokens += sum(turn.usage.get(k, 0) for k in (
                "input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens"))
            outcome = self._apply(state, turn)
            events = [TurnEvent("agent.turn", {"turn": state.turns, "model": turn.model,
                                               "stop_reason": turn.stop_reason})]
            first = _first_tool_use(state.messages[-1]["content"]) if state.pending_tools else None
            if first is not None:
                # The tool runs right after this write: its call is announced with the turn.
                events.append(TurnEvent("tool.call", _call_summary(
                    first.get("name"), first.get("input") or {})))
                announced = True
            # The call (billed: recorded before the next budget check), the turn's events and
            # the checkpoint: one transaction.
            await self._checkpoint(job, store_ctx, writes, state, call=call, events=events)
            if outcome is not None:
                return outcome

    async def _escalate(self, job: BatchJob, ctx: ExecutionContext, state: ConversationState,
                        why: str) -> bool:
        """One step up the model ladder when a limit is hit (once per conversation); False
        when it already happened or the model is at the top."""
        if state.escalations >= 1:
            return False
        stronger = pick_model(self.config.models, [t.complexity for t in job.tasks],
                              job.escalation + state.escalations + 1)
        if stronger == state.model:
            return False
        await ctx.emit("agent.escalated", {"from": state.model, "to": stronger, "reason": why,
                                           "turns": state.turns})
        _log.info("escalating the model", batch=job.batch_id, reason=why, to=stronger)
        state.escalations += 1
        state.model = stronger
        return True

    def _apply(self, state: ConversationState, turn: Turn) -> ExecutionOutcome | None:
        """Add the model's answer to the history and decide what comes next."""
        content = turn.content
        truncated = bool(content) and content[-1].pop("_truncated", False)
        if turn.stop_reason == "max_tokens" and content and content[-1].get("type") == "tool_use":
            # The limit cut the answer inside this tool call: even when its JSON happens to
            # parse (a non-streamed answer), the file it writes may be cut short. Never run it;
            # the model is asked to continue instead.
            truncated = True
        if truncated:
            content = content[:-1]  # a half-written tool call cannot be run or sent back
        state.cutoffs = state.cutoffs + 1 if turn.stop_reason == "max_tokens" else 0
        if content:
            state.messages.append({"role": "assistant", "content": content})
        text = last_text(content)
        if text:
            state.summary = text[:4000]
        has_tools = any(b.get("type") == "tool_use" for b in content)
        stop = turn.stop_reason
        if stop == "tool_use":
            state.pending_tools = has_tools
            if not has_tools:
                append_user(state.messages, [{"type": "text", "text": _CONTINUE}])
        elif stop in ("end_turn", "stop_sequence"):
            state.done = True
        elif stop == "max_tokens":
            if has_tools:
                state.pending_tools = state.continue_after_tools = True
            else:
                append_user(state.messages, [{"type": "text", "text": _CONTINUE}])
        elif stop == "pause_turn":
            pass  # a paused server-side turn: send the history back as is to let it go on
        elif stop == "refusal":
            return self._failed(state, f"the model ({turn.model}) refused the task "
                                "(stop_reason refusal); rephrase the task in the spec and "
                                "retry it")
        elif stop == "model_context_window_exceeded":
            return self._failed(state, f"the conversation outgrew {turn.model}'s context "
                                "window (stop_reason model_context_window_exceeded); split "
                                "the batch's tasks or trim the spec's context and retry")
        else:
            return self._failed(state, f"unexpected stop_reason {stop!r} from {turn.model}")
        return None

    def _failed(self, state: ConversationState, reason: str) -> ExecutionOutcome:
        return ExecutionOutcome("failed", reason=reason, model=state.model, summary=state.summary)

    def _params(self, job: BatchJob, state: ConversationState) -> dict[str, Any]:
        tools = [editor_tool_param(self.config.agent.tool_output_max_chars), bash_tool_param()]
        # Breakpoints (the API allows four): the tools, the run's stable system prompt, the
        # run's shared context at the start of the first message (see _initial_state), and the
        # end of the conversation. Nothing of this batch comes before the shared context: the
        # worktree's path is in the first message, after it.
        tools[-1]["cache_control"] = dict(_EPHEMERAL)
        system: list[dict[str, Any]] = []
        if job.prompt.system:
            system.append({"type": "text", "text": job.prompt.system})
        system.append({"type": "text", "text": _WORKTREE_RULES,
                       "cache_control": dict(_EPHEMERAL)})
        return {"model": state.model, "max_tokens": self.config.models.max_tokens,
                "system": system, "tools": tools,
                "messages": with_cache_breakpoint(state.messages)}

    async def _check_budget(self, ctx: ExecutionContext, state: ConversationState,
                            params: dict[str, Any]) -> None:
        tokens = await anyio.to_thread.run_sync(count_request_tokens, self._counter, params)
        cached = min(state.last_request_tokens, tokens)
        # The next answer is expected to be as long as this batch's answers so far.
        expected_output = state.output_tokens // state.turns if state.turns else 0
        estimate = self.costs.estimate_usd(params["model"], cached_tokens=cached,
                                           new_tokens=tokens - cached,
                                           output_tokens=expected_output)
        state.last_request_tokens = tokens
        await ctx.check_budget(estimate)

    def _api_call(self, turn: Turn) -> ApiCall:
        u = turn.usage
        return ApiCall(
            model=turn.model, input_tokens=u.get("input_tokens", 0),
            output_tokens=u.get("output_tokens", 0),
            cache_creation_input_tokens=u.get("cache_creation_input_tokens", 0),
            cache_read_input_tokens=u.get("cache_read_input_tokens", 0),
            cost_usd=self.costs.cost_usd(turn.model, u), latency_ms=turn.latency_ms,
            request_id=turn.request_id, stop_reason=turn.stop_reason, purpose="batch",
            backend="anthropic")

    async def _emit_text(self, ctx: ExecutionContext, text: str, final: bool) -> None:
        if text.strip():
            data: dict[str, Any] = {"text": text[:_TEXT_EVENT_CHARS], "chars": len(text)}
            if not final:
                data["partial"] = True  # more of this block follows in the next event
            await ctx.emit("agent.text", data)

    async def _run_tools(self, ctx: ExecutionContext, content: list[dict[str, Any]],
                         editor: TextEditor, bash: BashSession, *, announced: bool
                         ) -> tuple[list[dict[str, Any]], list[TurnEvent]]:
        """Run every tool call of an assistant message; one ``tool_result`` each, in order.

        Each call's ``tool.call`` event is stored before it runs (the first one's already is
        when ``announced``) and each ``tool.result`` after, except the last result: it is
        returned, for the checkpoint's transaction, which comes right after it."""
        results: list[dict[str, Any]] = []
        last: list[TurnEvent] = []
        for block in content:
            if block.get("type") != "tool_use":
                continue
            name = block.get("name")
            params = block.get("input") or {}
            if last:
                await ctx.emit(last[0].type, last[0].data)
                last = []
            if announced:
                announced = False
            else:
                await ctx.emit("tool.call", _call_summary(name, params))
            try:
                if name == EDITOR_TOOL_NAME:
                    output = await anyio.to_thread.run_sync(editor.run, params)
                elif name == BASH_TOOL_NAME:
                    output = await bash.run(params)
                else:
                    raise ToolError(f"Unknown tool {name!r}; the tools are "
                                    f"{EDITOR_TOOL_NAME} and {BASH_TOOL_NAME}.")
                is_error = False
            except ToolError as exc:
                output, is_error = str(exc), True
            except OSError as exc:
                output, is_error = f"The tool failed: {exc}", True
            # Before it is stored (events, the checkpointed conversation) or sent anywhere.
            output = redact_secrets(output)
            last = [TurnEvent("tool.result", {"tool": name, "is_error": is_error,
                                              "output": output[:_RESULT_EVENT_CHARS]})]
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": block["id"],
                                      "content": output or "(no output)"}
            if is_error:
                result["is_error"] = True
            results.append(result)
        return results, last


def _first_tool_use(content: Any) -> dict[str, Any] | None:
    """The first ``tool_use`` block of an assistant message's content, if any."""
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            return block
    return None


def _call_summary(name: Any, params: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"tool": name}
    for key in ("command", "path", "restart"):
        if key in params:
            value = params[key]
            summary[key] = redact_secrets(value)[:300] if isinstance(value, str) else value
    return summary
