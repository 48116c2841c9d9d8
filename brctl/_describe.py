"""Every event type in words: what ``brctl logs`` and the live view print for each event.

One formatter per type the daemon stores (docs/protocol.md lists them); a type this client
does not know yet is shown as ``type key=value, ...`` with nested values flattened, so a
newer daemon's events are still readable and never raw JSON. Everything here is text from the
daemon and, for agent and tool events, from the model: it is shortened to one line and
control characters are replaced, so an event cannot rewrite the terminal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "EVENT_TYPES", "describe", "format_duration", "format_tokens", "format_usd", "local_id",
    "one_line", "parse_ts",
]

_TEXT_CHARS = 160  # one line of model text or tool output in an event line


def parse_ts(ts: str | None) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (None if absent or unreadable)."""
    if not ts:
        return None
    try:
        parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``1m 15s``; ``3725`` -> ``1h 02m``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def format_usd(amount: float | None) -> str:
    """Dollars with enough digits for a cheap model call."""
    if amount is None:
        return "-"
    return f"${amount:.4f}" if amount < 10 else f"${amount:,.2f}"


def format_tokens(data: dict[str, Any]) -> str:
    """The usage of one ``api.call`` event: ``623 in / 129 out (cache 500 read, 0 written)``.

    The daemon records usage as ``data.tokens = {input_tokens, output_tokens,
    cache_read_input_tokens, cache_creation_input_tokens}``; flat keys on ``data`` itself are
    read too, so older recordings still render. The cache part is left out when both are zero.
    """
    tokens = data.get("tokens")
    usage: dict[str, Any] = tokens if isinstance(tokens, dict) else data
    text = f"{usage.get('input_tokens', '?')} in"
    if "output_tokens" in usage:
        text += f" / {usage['output_tokens']} out"
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    if read or written:
        text += f" (cache {read} read, {written} written)"
    return text


def local_id(item_id: Any, run_id: str) -> str | None:
    """A task or batch id without its ``<run id>:`` prefix (the run is already on the line)."""
    if item_id is None:
        return None
    text = str(item_id)
    return text[len(run_id) + 1:] if run_id and text.startswith(run_id + ":") else text


# Control characters (C0, DEL, C1) and the bidirectional overrides: in a name or a reason
# that the model chose they would be obeyed by the terminal (set its title, write the
# clipboard with OSC 52, move the cursor over what the user reads, start a fake log line).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), never sent."""
    text = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def one_line(value: Any, limit: int = _TEXT_CHARS) -> str:
    """``value`` as printable text on one line (see :func:`printable`), at most ``limit``
    characters."""
    text = printable(" ".join(str(value).split()))  # newlines and tabs: single spaces
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _because(data: dict[str, Any], sep: str = " ") -> str:
    return f"{sep}({one_line(data['reason'])})" if data.get("reason") else ""


def _tasks_of(data: dict[str, Any], run_id: str) -> str:
    return ", ".join(local_id(t, run_id) or "" for t in data.get("task_ids") or [])


# --- one formatter per type: (data, event) -> text ----------------------------------------
def _run_submitted(d: dict[str, Any], e: dict[str, Any]) -> str:
    parts = []
    if d.get("title"):
        parts.append(one_line(d["title"], 80))
    if d.get("tasks") is not None:
        parts.append(f"{d['tasks']} tasks in {d.get('batches', '?')} batches")
    if d.get("repo"):
        parts.append(f"in {d['repo']}")
    return "run submitted" + (f": {', '.join(parts)}" if parts else "")


def _run_planning(d: dict[str, Any], e: dict[str, Any]) -> str:
    features = f" ({d['features']} features)" if d.get("features") else ""
    return "run planning" + (f": {one_line(d['step'])}{features}" if d.get("step") else "")


def _run_planned(d: dict[str, Any], e: dict[str, Any]) -> str:
    by = f" by the {d['planner']} planner" if d.get("planner") else ""
    size = f": {d['tasks']} tasks in {d.get('batches', '?')} batches" \
        if d.get("tasks") is not None else ""
    return f"run planned{by}{size}{_because(d)}"


def _run_state(what: str) -> Callable[[dict[str, Any], dict[str, Any]], str]:
    def text(d: dict[str, Any], e: dict[str, Any]) -> str:
        return f"run {what}" + (f": {one_line(d['reason'])}" if d.get("reason") else "")
    return text


def _run_succeeded(d: dict[str, Any], e: dict[str, Any]) -> str:
    return "run succeeded" + (f": branch {d['branch']}" if d.get("branch") else "")


def _run_verified(d: dict[str, Any], e: dict[str, Any]) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in d.items()
                       if isinstance(v, int) and not isinstance(v, bool))
    return "run verified: the run branch passed the full verification" + \
        (f" ({counts})" if counts else "")


def _batch_dispatched(d: dict[str, Any], e: dict[str, Any]) -> str:
    model = f" on {d['model']}" if d.get("model") else ""
    attempt = f" (attempt {d['attempt']})" if d.get("attempt", 1) != 1 else ""
    tasks = _tasks_of(d, str(e.get("run_id", "")))
    return f"dispatched{model}{attempt}" + (f" [{tasks}]" if tasks else "")


def _batch_succeeded(d: dict[str, Any], e: dict[str, Any]) -> str:
    commit = f" (commit {str(d['commit'])[:12]})" if d.get("commit") else ""
    model = f" by {d['model']}" if d.get("model") else ""
    return f"succeeded{model}{commit}"


def _batch_conflict(d: dict[str, Any], e: dict[str, Any]) -> str:
    files = ", ".join(one_line(f, 80) for f in d.get("files") or []) or "the run branch"
    then = "re-running on the new head" if d.get("rerun") else "no re-runs left"
    return f"merge conflict in {files} (attempt {d.get('attempt', '?')}); {then}"


def _batch_retried(d: dict[str, Any], e: dict[str, Any]) -> str:
    task = local_id(d.get("task_id"), str(e.get("run_id", "")))
    return "re-queued by a retry" + (f" of task {task}" if task else "")


def _task_state(d: dict[str, Any], e: dict[str, Any]) -> str:
    task = local_id(e.get("task_id"), str(e.get("run_id", "")))
    return f"task {task}: {d.get('from', '?')} -> {d.get('to', '?')}{_because(d)}"


def _file(what: str) -> Callable[[dict[str, Any], dict[str, Any]], str]:
    def text(d: dict[str, Any], e: dict[str, Any]) -> str:
        task = local_id(e.get("task_id"), str(e.get("run_id", "")))
        return f"{what} {one_line(d.get('path', '?'), 120)}" + (f" ({task})" if task else "")
    return text


def _check_names(checks: Any) -> str:
    names = []
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict):
            name = one_line(check.get("name", "?"), 40)
            if check.get("passed", True) is False:
                name += " FAILED"
                if check.get("message"):
                    name += f" ({one_line(check['message'], 80)})"
            names.append(name)
        else:
            names.append(one_line(check, 40))
    return ", ".join(names)


def _verify(what: str) -> Callable[[dict[str, Any], dict[str, Any]], str]:
    def text(d: dict[str, Any], e: dict[str, Any]) -> str:
        fix_round = f" (fix round {d['fix_round']})" if d.get("fix_round") else ""
        detail = d.get("summary") or d.get("message") or _check_names(d.get("checks"))
        return f"verification {what}{fix_round}" + (f": {one_line(detail)}" if detail else "")
    return text


def _api_call(d: dict[str, Any], e: dict[str, Any]) -> str:
    return f"api call {d.get('model', '?')}: {format_tokens(d)}, {format_usd(d.get('cost_usd'))}"


def _budget_exceeded(d: dict[str, Any], e: dict[str, Any]) -> str:
    return (f"budget exceeded: spent {format_usd(d.get('spent_usd'))} of "
            f"{format_usd(d.get('budget_usd'))}, the next call ~{format_usd(d.get('estimate_usd'))}"
            "; the run pauses")


def _agent_turn(d: dict[str, Any], e: dict[str, Any]) -> str:
    model = f" on {d['model']}" if d.get("model") else ""
    stop = f": {d['stop_reason']}" if d.get("stop_reason") else ""
    return f"agent turn {d.get('turn', '?')}{model}{stop}"


def _agent_text(d: dict[str, Any], e: dict[str, Any]) -> str:
    more = " …" if d.get("partial") else ""
    return f"agent says: {one_line(d.get('text', ''))}{more}"


def _tool_call(d: dict[str, Any], e: dict[str, Any]) -> str:
    what = d.get("command") or d.get("path") or ("restart" if d.get("restart") else "")
    return f"tool {d.get('tool', '?')}" + (f": {one_line(what)}" if what else "")


def _tool_result(d: dict[str, Any], e: dict[str, Any]) -> str:
    outcome = "failed" if d.get("is_error") else "ok"
    output = one_line(d.get("output") or "")
    return f"tool {d.get('tool', '?')} {outcome}" + (f": {output}" if output else "")


def _agent_fallback(d: dict[str, Any], e: dict[str, Any]) -> str:
    return (f"model {d.get('from', '?')} overloaded {d.get('overloads', '?')} times; "
            f"falling back to {d.get('to', '?')}")


def _agent_retry(d: dict[str, Any], e: dict[str, Any]) -> str:
    status = " ".join(str(x) for x in (d.get("status"), d.get("error")) if x)
    delay = d.get("delay_s")
    return (f"model call retry {d.get('attempt', '?')}"
            + (f" in {delay}s" if delay is not None else "") + (f" ({status})" if status else ""))


def _plan_warning(d: dict[str, Any], e: dict[str, Any]) -> str:
    planner = f" ({d['planner']} planner)" if d.get("planner") else ""
    line = f"line {d['line']}: " if d.get("line") else ""
    return f"plan warning{planner}: {line}{one_line(d.get('message', '?'))}"


def _batch_rolled_back(d: dict[str, Any], e: dict[str, Any]) -> str:
    commit = f" {str(d['commit'])[:12]}" if d.get("commit") else ""
    again = "; the batch runs again" if d.get("rerun") else ""
    return f"merge{commit} rolled back: the run branch failed its check{_because(d)}{again}"


def _agent_escalated(d: dict[str, Any], e: dict[str, Any]) -> str:
    turns = f" after {d['turns']} turns" if d.get("turns") is not None else ""
    return (f"escalating from {d.get('from', '?')} to {d.get('to', '?')}{turns}"
            + _because(d))


def _session_started(d: dict[str, Any], e: dict[str, Any]) -> str:
    how = "resumed" if d.get("resumed") else "started"
    startup = f", start-up {d['startup_ms']} ms" if d.get("startup_ms") is not None else ""
    return (f"Claude Code session {one_line(d.get('session_id') or '?', 12)} {how} on "
            f"{one_line(d.get('model') or '?', 60)}{startup}")


def _session_ended(d: dict[str, Any], e: dict[str, Any]) -> str:
    cli = d.get("cli_cost_usd")
    figure = f"; CLI's own figure {format_usd(cli)}" if isinstance(cli, (int, float)) else ""
    return f"session ended ({one_line(d.get('ending') or '?', 20)}): {one_line(d.get('note'))}" \
        + figure


def _usage_limit(d: dict[str, Any], e: dict[str, Any]) -> str:
    kind = f" {one_line(d['type'], 30)}" if d.get("type") else ""
    at = d.get("resets_at")
    when = (f", resets {datetime.fromtimestamp(at, UTC).isoformat(timespec='seconds')}"
            if isinstance(at, (int, float)) else "")
    return f"usage limit{kind}: {one_line(d.get('status') or '?', 30)}{when}"


_FORMATTERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], str]] = {
    "run.submitted": _run_submitted,
    "run.planning": _run_planning,
    "run.planned": _run_planned,
    "run.started": _run_state("started"),
    "run.paused": _run_state("paused"),
    "run.resumed": _run_state("resumed"),
    "run.succeeded": _run_succeeded,
    "run.failed": _run_state("failed"),
    "run.cancelled": _run_state("cancelled"),
    "run.verified": _run_verified,
    "run.usage_limited": lambda d, e: (f"paused by a usage limit{_because(d)}; resumes at "
                                       f"{one_line(d.get('resume_at') or '?', 40)}"),
    "session.started": _session_started,
    "session.ended": _session_ended,
    "usage.limit": _usage_limit,
    "plan.warning": _plan_warning,
    "batch.dispatched": _batch_dispatched,
    "batch.succeeded": _batch_succeeded,
    "batch.failed": lambda d, e: f"failed{_because(d)}",
    "batch.requeued": lambda d, e: f"re-queued{_because(d)}",
    "batch.retried": _batch_retried,
    "batch.conflict": _batch_conflict,
    "batch.rolled_back": _batch_rolled_back,
    "batch.cancelled": lambda d, e: f"cancelled{_because(d)}",
    "task.state_changed": _task_state,
    "file.created": _file("created"),
    "file.modified": _file("modified"),
    "file.deleted": _file("deleted"),
    "verify.passed": _verify("passed"),
    "verify.failed": _verify("failed"),
    "api.call": _api_call,
    "budget.exceeded": _budget_exceeded,
    "agent.turn": _agent_turn,
    "agent.text": _agent_text,
    "agent.fallback": _agent_fallback,
    "agent.escalated": _agent_escalated,
    "agent.retry": _agent_retry,
    "tool.call": _tool_call,
    "tool.result": _tool_result,
}
EVENT_TYPES: frozenset[str] = frozenset(_FORMATTERS)
"""The event types with words of their own (anything else: ``type key=value``)."""


def _flat(value: Any, prefix: str, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        out.append(f"{prefix}=" + ", ".join(one_line(v, 40) for v in value[:10])
                   + (", …" if len(value) > 10 else ""))
    elif value is not None:
        out.append(f"{prefix}={one_line(value, 80)}")


def describe(event: dict[str, Any]) -> str:
    """A short human description of one event (no time, run or batch: see event_line)."""
    kind = str(event.get("type", "?"))
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    formatter = _FORMATTERS.get(kind)
    if formatter is not None:
        try:
            return formatter(data, event)
        except (TypeError, ValueError, AttributeError):
            pass  # an unexpected shape: the generic words below still say what is there
    if kind.startswith("run.") and isinstance(data.get("to"), str):
        return f"run {kind.split('.', 1)[1]}" + (f": {one_line(data['reason'])}"
                                                 if data.get("reason") else "")
    fields: list[str] = []
    _flat(data, "", fields)
    return one_line(kind, 60) + (f" {', '.join(fields)}" if fields else "")
