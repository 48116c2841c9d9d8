"""``buildrunnerd plan SPEC [--json]``: plan a spec offline and print the plan.

Rendering lives here, in the daemon layer that wires the parts together, not in the planner:
planning knows nothing of terminals.

Exit codes: 0 the plan was printed; 1 the spec (or the configuration) cannot be planned, with
every problem as ``path:line: message`` on stderr, and with ``--json`` also as
``{"errors": [{"line", "message"}]}`` on stdout. Never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import msgspec
from rich.console import Console
from rich.markup import escape

from buildrunnerd.errors import BuildRunnerError, Problem, SpecError
from buildrunnerd.plan import Plan

__all__ = ["plan_command", "render_plan"]


def _load_spec_and_plan(spec_path: Path, config_file: Path | None) -> Plan:
    from buildrunnerd.config import load_config
    from buildrunnerd.paths import config_path
    from buildrunnerd.prompt import plan_with_prompts
    from buildrunnerd.spec import parse_spec

    config = load_config(config_file if config_file is not None else config_path())
    try:
        data = spec_path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SpecError(
            [Problem(None, f"cannot read the spec: {reason}; check the path")],
            path=str(spec_path),
        ) from exc
    spec = parse_spec(data, path=str(spec_path))
    return plan_with_prompts(spec, config=config.planner)


def plan_command(spec_path: Path, *, as_json: bool, config_file: Path | None) -> int:
    """Plan ``spec_path`` and print it (a readable report, or JSON); return the exit code."""
    try:
        plan = _load_spec_and_plan(spec_path, config_file)
    except SpecError as err:
        if as_json:
            errors = err.data.get("errors") or [{"line": None, "message": err.message}]
            out: dict[str, object] = {"errors": errors, "path": str(spec_path)}
            if "cycle" in err.data:
                out["cycle"] = err.data["cycle"]
            sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
        # The readable lines go to stderr in both modes: a person watching a script sees them.
        sys.stderr.write(err.message + "\n")
        return 1
    except BuildRunnerError as err:  # e.g. a ConfigError: names the key and the file
        _report(as_json, str(spec_path), err.message)
        return 1
    except Exception as exc:  # noqa: BLE001 - a planner bug must still not print a traceback
        _report(as_json, str(spec_path),
                f"internal error while planning ({type(exc).__name__}: {exc}); "
                "please report this with the spec attached")
        return 1
    if as_json:
        sys.stdout.write(msgspec.json.encode(plan.to_json_dict()).decode() + "\n")
    else:
        render_plan(plan, sys.stdout)
    return 0


def _report(as_json: bool, where: str, message: str) -> None:
    if as_json:
        out = {"errors": [{"line": None, "message": message}], "path": where}
        sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
    sys.stderr.write(f"{where}: {message}\n")


# Above this many rows a table is printed as plain aligned text: rich measures every cell,
# which takes seconds for the thousands of tasks of a very large spec.
_RICH_MAX_ROWS = 400


def _table(console: Console, file: TextIO, title: str, columns: Sequence[str],
           rows: Sequence[Sequence[str]]) -> None:
    if len(rows) <= _RICH_MAX_ROWS:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            # Spec text is data, not markup: "[Name]" must print as written.
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        return
    file.write(f"{title}\n" + "\t".join(columns) + "\n")
    file.writelines("\t".join(cell.replace("\n", " ") for cell in row) + "\n" for row in rows)
    file.flush()


def render_plan(plan: Plan, file: TextIO) -> None:
    """Print ``plan`` as tables: features, tasks, levels, critical path, batches, warnings."""
    # Piped output: wide enough for the tables instead of rich's 80-column default.
    width = None if file.isatty() else 160
    console = Console(file=file, width=width, highlight=False, soft_wrap=False)
    by_feature: dict[str, int] = {}
    for task in plan.tasks:
        by_feature[task.feature] = by_feature.get(task.feature, 0) + 1
    total_minutes = sum(t.estimate_minutes for t in plan.tasks)

    console.print(f"[bold]{escape(plan.spec_title)}[/bold]"
                  + (f"  ({escape(plan.spec_path)})" if plan.spec_path else ""))
    console.print(
        f"{len(plan.features)} features, {len(plan.tasks)} tasks "
        f"({total_minutes} min of work), {len(plan.batches)} batches, "
        f"{len(plan.levels)} levels; critical path {plan.critical_path.minutes} min"
    )
    if plan.language:
        hint = (f"; suggested test command: {plan.suggested_test_command}"
                if plan.suggested_test_command else "")
        console.print(f"Stack: {escape(plan.language)}{escape(hint)}")
    _table(console, file, "Features", ("id", "name", "line", "depends on", "tasks"), [
        (f.id, f.name, str(f.line), ", ".join(f.depends_on) or "-", str(by_feature.get(f.id, 0)))
        for f in plan.features
    ])
    _table(console, file, "Tasks (files: required; ~ suggested, never required)",
           ("id", "title", "domain", "complexity", "min", "depends on", "files", "criteria"), [
               (t.id, t.title + (" (optional)" if t.optional else ""), t.domain, t.complexity,
                str(t.estimate_minutes), ", ".join(t.depends_on) or "-",
                "\n".join([*t.files, *(f"~ {f}" for f in t.suggested_files)]) or "-",
                str(len(t.acceptance_criteria)))
               for t in plan.tasks
           ])
    console.print("[bold]Levels[/bold] (tasks of one level can run in parallel)")
    file.writelines(f"  {n}: {', '.join(level)}\n" for n, level in enumerate(plan.levels))
    file.flush()
    console.print(
        f"[bold]Critical path[/bold] ({plan.critical_path.minutes} min): "
        + escape(" -> ".join(plan.critical_path.task_ids))
    )
    _table(console, file, "Batches (highest priority first)",
           ("id", "domain", "tasks", "min", "priority", "depends on", "prompt tokens"), [
               (b.id, b.domain, ", ".join(b.task_ids), str(b.estimate_minutes),
                str(b.priority_minutes), ", ".join(b.depends_on) or "-", str(b.prompt_tokens))
               for b in plan.batches
           ])
    for w in plan.warnings:
        where = f"{plan.spec_path or '<spec>'}:{w.line}" if w.line else (plan.spec_path or "<spec>")
        console.print(f"[yellow]warning[/yellow] {escape(where)}: {escape(w.message)}")
