"""Run and task ids as people type them: by prefix, without the run prefix, with completion.

- A RUN is its id or any prefix of it that only one run has (``r-0a1b``, or ``0a1b`` without
  the ``r-``); an exact id always wins.
- A TASK is its id (``r-0a1b2c3d:storage.2``), or its id within the run (``storage.2``) when
  only one run has such a task, or a run prefix and the id within the run (``r-0a:storage.2``).
- Ambiguous or unknown ids exit 1 naming the candidates (the daemon's ``run.resolve`` and
  ``task.resolve`` find them; see docs/protocol.md).

The shell completion callbacks ask the daemon with short timeouts and stay silent on any
error: completion must never print a traceback into the user's command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from brctl._errors import RemoteError
from buildrunnerd import codes

if TYPE_CHECKING:
    import click
    from click.shell_completion import CompletionItem

    from brctl._client import RpcClient

__all__ = [
    "AmbiguousIdError", "NoMatchError", "complete_run_ids", "complete_task_ids", "resolve_run",
    "resolve_task",
]

_COMPLETION_TIMEOUT_S = 1.0
_MAX_CANDIDATES_SHOWN = 20
_TASK_RUNS_COMPLETED = 5  # completion lists the tasks of at most this many runs


class NoMatchError(RemoteError):
    """No run or task has this id or prefix (reported as the daemon's NOT_FOUND)."""

    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(codes.NOT_FOUND, message, data)


class AmbiguousIdError(RemoteError):
    """Several runs or tasks match; ``data.candidates`` lists them."""

    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(codes.INVALID_PARAMS, message, data)


def _candidates(kind: str, text: str, ids: list[str], hint: str) -> AmbiguousIdError:
    shown = "\n".join(f"  {i}" for i in ids[:_MAX_CANDIDATES_SHOWN])
    more = f"\n  ... and {len(ids) - _MAX_CANDIDATES_SHOWN} more" \
        if len(ids) > _MAX_CANDIDATES_SHOWN else ""
    return AmbiguousIdError(
        f"{text!r} matches {len(ids)} {kind}s; {hint}:\n{shown}{more}",
        {"kind": kind, "id": text, "candidates": ids},
    )


def resolve_run(client: RpcClient, text: str) -> str:
    """The one run id ``text`` names (exact id or unique prefix)."""
    found = client.call("run.resolve", {"run_id": text})
    ids = [str(i) for i in (found or {}).get("run_ids", [])]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise NoMatchError(f"no run matches {text!r}; `brctl runs` lists the runs",
                           {"kind": "run", "id": text})
    raise _candidates("run", text, ids, "give more of the id")


def resolve_task(client: RpcClient, text: str) -> str:
    """The one task id ``text`` names (global id, or id within a run that only one run has)."""
    found = client.call("task.resolve", {"task_id": text})
    ids = [str(i) for i in (found or {}).get("task_ids", [])]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise NoMatchError(
            f"no task matches {text!r}; `brctl tasks [RUN]` lists a run's tasks",
            {"kind": "task", "id": text},
        )
    raise _candidates("task", text, ids, "add the run prefix (RUN:TASK)")


# --- shell completion -----------------------------------------------------------------------
def _completion_client(ctx: click.Context) -> RpcClient:
    from brctl._cli import settings_of
    from brctl._client import RpcClient

    path = settings_of(ctx).socket_path()
    return RpcClient(path, timeout_s=_COMPLETION_TIMEOUT_S,
                     connect_timeout_s=_COMPLETION_TIMEOUT_S)


def _runs(client: RpcClient) -> list[dict[str, Any]]:
    result = client.call("run.list")
    return [r for r in (result or []) if isinstance(r, dict) and r.get("id")]


def complete_run_ids(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Run ids (newest first) starting with what was typed, with state and title as help."""
    from click.shell_completion import CompletionItem

    try:
        with _completion_client(ctx) as client:
            runs = _runs(client)
    except Exception:  # completion is silent: no daemon, a bad --socket, anything
        return []
    return [
        CompletionItem(str(r["id"]), help=f"{r.get('state', '?')}  {r.get('title') or ''}")
        for r in runs
        if str(r["id"]).startswith(incomplete)
    ]


def complete_task_ids(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Task ids: ``RUN:…`` once a run prefix and ``:`` are typed; else the ids within the
    latest and the active runs, without the run prefix where only one of them has it."""
    from click.shell_completion import CompletionItem

    try:
        with _completion_client(ctx) as client:
            runs = _runs(client)
            run_part, colon, _ = incomplete.partition(":")
            if colon:
                chosen = [r for r in runs if str(r["id"]).startswith(run_part)]
            else:
                active = [r for r in runs if r.get("state") not in codes.TERMINAL_RUN_STATES]
                chosen = [*runs[:1], *(r for r in active if runs and r is not runs[0])]
            tasks = [t for r in chosen[:_TASK_RUNS_COMPLETED]
                     for t in client.call("task.list", {"run_id": r["id"]}) or []]
    except Exception:  # completion is silent
        return []
    local_count: dict[str, int] = {}
    for task in tasks:
        local = str(task["id"]).partition(":")[2]
        local_count[local] = local_count.get(local, 0) + 1
    items = []
    for task in tasks:
        global_id = str(task["id"])
        local = global_id.partition(":")[2]
        value = local if not colon and local_count[local] == 1 else global_id
        if value.startswith(incomplete):
            items.append(CompletionItem(
                value, help=f"{task.get('state', '?')}  {task.get('title') or ''}"))
    return items
