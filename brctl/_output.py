"""Human-readable output of daemon results (``--json`` prints the results themselves).

Plain text on purpose: aligned columns need no terminal library, and ``brctl`` starts fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from brctl._describe import format_duration, format_usd, parse_ts
from buildrunnerd.codes import TASK_STATES

__all__ = [
    "table", "format_ping", "format_runs", "format_status", "format_tasks", "format_task",
    "format_costs", "format_plan", "format_spec_errors",
]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def format_ping(ping: dict[str, Any]) -> str:
    backend = str(ping.get("backend", "?"))
    if ping.get("simulated"):
        backend += " (SIMULATED: no model is called; tasks' files are written by a stand-in)"
    sandbox = str(ping.get("sandbox", "?"))
    if sandbox == "off":
        sandbox += (" (UNCONFINED: agent.sandbox = \"off\"; model-written code runs with "
                    "your rights)")
    elif sandbox == "unavailable":
        sandbox += f" (runs are refused: {ping.get('sandbox_detail') or 'no working sandbox'})"
    return "\n".join([
        f"buildrunnerd {ping.get('version', '?')}  pid {ping.get('pid', '?')}  "
        f"up {format_duration(float(ping.get('uptime_s') or 0))}",
        f"backend:     {backend}",
        # Why this backend (a flag, the config, the API key found or not): under its own line,
        # not the sandbox's.
        *([f"             ({ping['backend_reason']})"] if ping.get("backend_reason") else []),
        f"sandbox:     {sandbox}",
        f"workers:     {ping.get('workers', '?')}",
        f"active runs: {ping.get('active_runs', 0)}",
        f"socket:      {ping.get('socket', '?')}",
        f"home:        {ping.get('home', '?')}",
    ])


def _by_state(counts: dict[str, int]) -> str:
    ordered = [s for s in TASK_STATES if counts.get(s)] + [
        s for s in counts if s not in TASK_STATES and counts[s]
    ]
    return ", ".join(f"{s} {counts[s]}" for s in ordered) or "none"


def _counts(run: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = dict(run.get("tasks_by_state") or {})
    if not counts and run.get("tasks"):
        for task in run["tasks"]:
            counts[task.get("state", "?")] = counts.get(task.get("state", "?"), 0) + 1
    return counts


def _local_time(ts: str | None) -> str:
    # `2026-12-01 15:16:01` in local time, as the event lines' clock; --json keeps RFC 3339.
    parsed = parse_ts(ts)
    return parsed.astimezone().strftime("%Y-%m-%d %H:%M:%S") if parsed else (ts or "-")


def format_runs(runs: list[dict[str, Any]]) -> str:
    """The runs as ``run.list`` gives them: newest first."""
    if not runs:
        return "no runs yet (start one with: brctl submit SPEC)"
    rows = []
    for run in runs:
        counts = _counts(run)
        total = run.get("task_count") or sum(counts.values())
        rows.append([
            run.get("id"), run.get("state"), f"{counts.get('succeeded', 0)}/{total}",
            format_usd(run.get("cost_usd")), _local_time(run.get("created_at")),
            run.get("title", ""),
        ])
    return table(["RUN", "STATE", "DONE", "COST", "CREATED", "TITLE"], rows)


def format_status(run: dict[str, Any]) -> str:
    counts = _counts(run)
    total = run.get("task_count") or sum(counts.values())
    budget = f" of {format_usd(run['budget_usd'])} budget" if run.get("budget_usd") else ""
    lines = [
        f"run {run.get('id')}  {run.get('state')}  {run.get('title', '')}",
        f"  tasks:   {total} ({_by_state(counts)})",
        f"  cost:    {format_usd(run.get('cost_usd'))}{budget}",
        f"  elapsed: {format_duration(float(run.get('elapsed_s') or 0))}",
        f"  branch:  {run.get('branch') or '-'}"
        + (f" in {run['repo']}" if run.get("repo") else ""),
    ]
    if run.get("reason"):
        lines.append(f"  reason:  {run['reason']}")
    return "\n".join(lines)


def format_tasks(tasks: list[dict[str, Any]]) -> str:
    if not tasks:
        return "no tasks"
    rows = [
        [t.get("id"), t.get("state"), t.get("batch_id") or "-", t.get("attempts", 0),
         t.get("model") or "-", format_usd(t.get("cost_usd")), t.get("title", "")]
        for t in tasks
    ]
    return table(["TASK", "STATE", "BATCH", "ATTEMPTS", "MODEL", "COST", "TITLE"], rows)


def format_task(task: dict[str, Any]) -> str:
    lines = [
        f"task {task.get('id')}  {task.get('state')}  {task.get('title', '')}",
        f"  run:        {task.get('run_id')}   batch: {task.get('batch_id') or '-'}",
        f"  feature:    {task.get('feature') or '-'}   domain: {task.get('domain') or '-'}"
        f"   complexity: {task.get('complexity') or '-'}",
        f"  attempts:   {task.get('attempts', 0)}   model: {task.get('model') or '-'}"
        f"   cost: {format_usd(task.get('cost_usd'))}",
        f"  depends on: {', '.join(task.get('depends_on') or []) or '-'}",
        f"  files:      {', '.join(task.get('files') or []) or '-'}",
    ]
    if task.get("reason"):
        lines.append(f"  reason:     {task['reason']}")
    if task.get("acceptance_criteria"):
        lines.append("  acceptance criteria:")
        lines += [f"    - {c}" for c in task["acceptance_criteria"]]
    if task.get("prompt"):
        lines += ["", "prompt:", _indent(str(task["prompt"]))]
    verification = task.get("verification")
    if verification:
        lines += ["", f"verification: {'passed' if verification.get('passed') else 'failed'}"]
        checks = verification.get("checks") or []
        width = max((len(str(c.get("name", "?"))) for c in checks), default=0)
        for check in checks:
            mark = "ok  " if check.get("passed") else "FAIL"
            line = f":{check['line']}" if check.get("line") else ""
            where = f"{check['file']}{line}: " if check.get("file") else ""
            name = str(check.get("name", "?")).ljust(width)
            lines.append(f"  {mark} {name}  {where}{check.get('message', '')}")
            if not check.get("passed") and check.get("output_tail"):
                lines.append(_indent(str(check["output_tail"]), 6))
            elif not check.get("passed") and check.get("exit_code") is not None:
                # A command (tests, import) failed without output: not a display fault.
                lines.append("      (the command printed nothing)")
    if task.get("events"):
        from brctl._render import plain_line

        lines += ["", "events:"] + [f"  {plain_line(e, None)}" for e in task["events"]]
    # The prompt, titles, files and test output hold text the model or its code chose: no
    # control character of it reaches the terminal (each shown as an escape).
    from brctl._describe import printable

    return "\n".join(printable(line) for line in "\n".join(lines).split("\n"))


def _indent(text: str, width: int = 2) -> str:
    return "\n".join(" " * width + line for line in text.splitlines())


def format_costs(summary: dict[str, Any]) -> str:
    rows = [
        [r.get("key"), r.get("calls"), r.get("input_tokens"), r.get("output_tokens"),
         r.get("cache_read_input_tokens"), r.get("cache_creation_input_tokens"),
         format_usd(r.get("cost_usd"))]
        for r in summary.get("rows") or []
    ]
    rows.append([
        "total", summary.get("calls"), summary.get("input_tokens"), summary.get("output_tokens"),
        summary.get("cache_read_input_tokens"), summary.get("cache_creation_input_tokens"),
        format_usd(summary.get("total_usd")),
    ])
    by = str(summary.get("by") or "model").upper()
    scope = f"run {summary['run_id']}" if summary.get("run_id") else "all runs"
    head = f"spend for {scope}"
    if summary.get("api_equivalent"):
        head = (f"API-equivalent cost for {scope}: calls made through Claude Code "
                "(backend claude-code) are priced at API list prices; on a subscription they "
                "are not billed per token")
    return head + "\n" + table(
        [by, "CALLS", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE", "COST"], rows
    )


def format_plan(plan: dict[str, Any]) -> str:
    spec = plan.get("spec") or {}
    lines = [f"plan: {spec.get('title', '?')}" + (f" ({spec['path']})" if spec.get("path") else "")]
    lines.append("\nfeatures:")
    lines.append(_indent(table(
        ["FEATURE", "LINE", "AFTER", "NAME"],
        [[f.get("id"), f.get("line"), ",".join(f.get("depends_on") or []) or "-", f.get("name")]
         for f in plan.get("features") or []],
    )))
    lines.append("\ntasks:")
    lines.append(_indent(table(
        ["TASK", "FEATURE", "DOMAIN", "COMPLEXITY", "MIN", "DEPENDS ON", "TITLE"],
        [[t.get("id"), t.get("feature"), t.get("domain"), t.get("complexity"),
          t.get("estimate_minutes"), ",".join(t.get("depends_on") or []) or "-", t.get("title")]
         for t in plan.get("tasks") or []],
    )))
    lines.append("\nbatches:")
    lines.append(_indent(table(
        ["BATCH", "DOMAIN", "PROMPT TOKENS", "TASKS"],
        [[b.get("id"), b.get("domain"), b.get("prompt_tokens"), ",".join(b.get("task_ids") or [])]
         for b in plan.get("batches") or []],
    )))
    levels = plan.get("levels") or []
    lines.append(f"\nlevels: {len(levels)}")
    for i, level in enumerate(levels):
        lines.append(f"  {i}: {', '.join(level)}")
    critical = plan.get("critical_path") or {}
    lines.append(
        f"critical path: {' -> '.join(critical.get('task_ids') or []) or '-'} "
        f"({critical.get('minutes', 0)} min)"
    )
    for warning in plan.get("warnings") or []:
        where = f"line {warning['line']}: " if warning.get("line") else ""
        lines.append(f"warning: {where}{warning.get('message')}")
    return "\n".join(lines)


def format_spec_errors(data: dict[str, Any], fallback_path: str) -> str:
    """``path:line: message`` for every problem in a SPEC_INVALID error's data."""
    path = data.get("path") or fallback_path
    out = []
    for problem in data.get("errors") or []:
        line = problem.get("line")
        out.append(f"{path}:{line}: {problem.get('message')}" if line else
                   f"{path}: {problem.get('message')}")
    return "\n".join(out)
