"""Run ``buildrunnerd`` with wall-clock spans around its batch steps (for ``agent_bench``).

    python bench/daemon_spans.py OUT.json [--detail=MODULE,...] [--profile=OUT.prof] \
        <buildrunnerd arguments>

The daemon runs unchanged; this entry point only wraps some of its functions and methods
before starting it, and writes what they took to ``OUT.json`` when the daemon exits. Each
span's time is **exclusive**: a span inside another (a store write inside the tool loop, git
inside verification) is counted in its own row only, so the rows add up to the time the batch
steps took. Time a step spends waiting (a lock, a thread, the event loop busy with another
batch) is in its row, as a user would see it. ``git`` is also counted on its own (calls and
seconds, inclusive), whoever ran it.

Spans (summed over all batches): ``worktree_prepare`` (acquire a worktree, read its head),
``prompt`` (read the relevant files, build and count the prompt), ``tools_editor`` and
``tools_bash`` (the agent's tool calls; bash runs in the sandbox, so its start is in there),
``model_call`` (one Messages API call: the model's latency, HTTP and the stream),
``agent_loop`` (the executor's own work around the calls: requests, checkpoints, events are
in ``store``), ``verify`` (the batch's verification),
``commit`` (the batch's own commit, before the branch lock), ``merge`` (the merge into the
run branch), ``branch_check`` (verifying the run
branch's new head), ``worktree_release``, ``store`` (every awaited ``Store`` call: the
database writes and reads).

CPU (``cpu`` in the report, load-independent): the daemon's own CPU seconds (user + sys, all
its threads), and its children's, split by program (``git <subcommand>``, ``bwrap``, ...):
every child is reaped with ``os.wait4``, which gives that child's own rusage (with whatever
it waited for: a sandbox's bash and python are in ``bwrap``). Also the store's commits and
statements (``statements``: every ``execute``/``executemany`` the connection ran, by its
first word), per run.

``--profile=OUT.prof`` also runs the daemon under ``cProfile`` with each thread's CPU time as
its clock, from the submit on (the event loop's thread and every thread started since, merged
into one ``pstats`` file).
``--cpu-only``: no spans (nothing wrapped), only the CPU accounting.
"""

from __future__ import annotations

import atexit
import contextvars
import cProfile
import functools
import inspect
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

_totals: dict[str, float] = {}
_counts: dict[str, int] = {}
_lock = threading.Lock()
# The open spans of the current task: (name, [time spent in children]) frames.
_stack: contextvars.ContextVar[tuple[tuple[str, list[float]], ...]] = contextvars.ContextVar(
    "spans", default=())


# (when it ended, seconds) of every span, to compare the start of a run with its end.
_timeline: dict[str, list[tuple[float, float]]] = {}


def _add(name: str, seconds: float) -> None:
    with _lock:
        _totals[name] = _totals.get(name, 0.0) + seconds
        _counts[name] = _counts.get(name, 0) + 1
        _timeline.setdefault(name, []).append((time.perf_counter(), seconds))


def _async_span(name: str | Callable[..., str], fn: Callable[..., Awaitable[Any]],
                inclusive: bool = False) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        label = name(*args, **kwargs) if callable(name) else name
        if inclusive:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                _add(label, time.perf_counter() - start)
        frame: tuple[str, list[float]] = (label, [0.0])
        outer = _stack.get()
        token = _stack.set((*outer, frame))
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            took = time.perf_counter() - start
            _stack.reset(token)
            _add(label, took - frame[1][0])
            if outer:
                outer[-1][1][0] += took
    return wrapper


def _sync_span(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - start)
    return wrapper


class _TimedLock:
    """An ``async with`` lock that records ``branch_lock_wait`` and ``branch_lock_held``."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._since = 0.0

    async def __aenter__(self) -> None:
        start = time.perf_counter()
        await self._lock.acquire()
        self._since = time.perf_counter()
        _add("branch_lock_wait", self._since - start)

    async def __aexit__(self, *exc: object) -> None:
        _add("branch_lock_held", time.perf_counter() - self._since)
        self._lock.release()


def _replace_everywhere(original: Any, replacement: Any) -> None:
    """Point every loaded module's name for ``original`` at ``replacement`` (``from x import
    f`` copies the reference)."""
    for module in list(sys.modules.values()):
        for key, value in list(getattr(module, "__dict__", {}).items()):
            if value is original:
                setattr(module, key, replacement)


def install() -> None:
    import buildrunnerd.daemon._app  # noqa: F401 - loads the daemon's modules
    import buildrunnerd.daemon.cli  # noqa: F401
    from buildrunnerd.agent import _calls
    from buildrunnerd.agent._bash import BashSession
    from buildrunnerd.agent._editor import TextEditor
    from buildrunnerd.agent._executor import AnthropicExecutor
    from buildrunnerd.prompt import PromptBuilder
    from buildrunnerd.store import Store
    from buildrunnerd.workspace import GitWorkspace, RunRepo, _git, _verify

    # (owner, attribute, span): the editor and the prompt builder run in worker threads, so
    # they are measured inclusive (see report()); the others are exclusive spans.
    patches: list[tuple[Any, str, str]] = [
        (RunRepo, "acquire_worktree", "worktree_prepare"),
        (RunRepo, "worktree_head", "worktree_prepare"),
        (RunRepo, "release_worktree", "worktree_release"),
        (RunRepo, "commit_and_merge", "merge"),
        (RunRepo, "commit_batch", "commit"),  # the batch's own commit, before the lock
        (RunRepo, "merge_batch", "merge"),
        (BashSession, "run", "tools_bash"),
        (AnthropicExecutor, "run_batch", "agent_loop"),
        (TextEditor, "run", "tools_editor"),
        (PromptBuilder, "build", "prompt_build"),
    ]
    patches += [(GitWorkspace, "integrate", "integrate"), (GitWorkspace, "merge", "integrate"),
                (GitWorkspace, "verify_head", "verify_head")]
    for owner, attr, span in patches:
        value = getattr(owner, attr, None)
        if value is None:  # an older tree (measured with this bench for a before/after pair)
            continue
        wrap = _async_span if inspect.iscoroutinefunction(value) else _sync_span
        setattr(owner, attr, wrap(span, value))
    seen: set[str] = set()
    for cls in Store.__mro__[:-1]:  # the store and its mixins (costs, attempts, ...)
        for attr, value in list(vars(cls).items()):
            if attr.startswith("_") or attr in seen or not inspect.iscoroutinefunction(value):
                continue
            seen.add(attr)
            setattr(Store, attr, _async_span(f"store.{attr}", getattr(Store, attr)))

    def verify_label(*args: Any, **kwargs: Any) -> str:
        return "verify" if kwargs.get("batch_checks", True) else "branch_check"

    original_verify = _verify.verify
    _replace_everywhere(original_verify, _async_span(verify_label, original_verify))
    original_call = _calls.call_once
    _replace_everywhere(original_call, _async_span("model_call", original_call))
    original_git = _git.git
    _replace_everywhere(original_git, _async_span("git", original_git, inclusive=True))

    # The run branch's lock (merges and branch checks one at a time): how long a batch
    # waited for it and how long it was held, as spans of their own.
    original_init = GitWorkspace.__init__

    @functools.wraps(original_init)
    def init(self: GitWorkspace, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._branch_lock = _TimedLock(self._branch_lock)  # type: ignore[assignment]

    GitWorkspace.__init__ = init  # type: ignore[method-assign]

    import importlib

    # The files and the prompt of an attempt, in a worker thread (daemon/_attempt.py; before
    # the split of daemon/_batch.py it lived there).
    for module_name, attr in (("buildrunnerd.daemon._attempt", "prompt_for_attempt"),
                              ("buildrunnerd.daemon._batch", "_prompt_for_attempt")):
        try:
            original = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
        _replace_everywhere(original, _sync_span("prompt", original))
        break


# Children by program: kind -> [processes, user s, sys s]; pid -> kind while it runs.
_children: dict[str, list[float]] = {}
_child_kind: dict[int, str] = {}
_statements: dict[str, int] = {}


def _kind(args: Any) -> str:
    argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else [str(args)]
    program = os.path.basename(argv[0]) if argv else "?"
    if program != "git":
        return program
    rest = argv[1:]
    while rest and rest[0].startswith("-"):  # -C DIR, -c KEY=VALUE, --git-dir DIR ...
        flag = rest.pop(0)
        if flag in ("-C", "-c", "--git-dir", "--work-tree", "--namespace") and rest:
            rest.pop(0)
    return f"git {rest[0]}" if rest else "git"


def install_cpu() -> None:
    """Count every child's own CPU (``os.wait4``) by program, and the store's statements."""
    original_init = subprocess.Popen.__init__

    @functools.wraps(original_init)
    def init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        original_init(self, args, *rest, **kwargs)
        with _lock:
            _child_kind[self.pid] = _kind(args)

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        got, status, usage = os.wait4(pid, options)
        if got:
            with _lock:
                kind = _child_kind.pop(got, "other")
                row = _children.setdefault(kind, [0, 0.0, 0.0])
                row[0] += 1
                row[1] += usage.ru_utime
                row[2] += usage.ru_stime
        return got, status

    subprocess.Popen.__init__ = init  # type: ignore[method-assign]
    os.waitpid = waitpid

    import aiosqlite

    def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
            name = fn.__name__ + ":" + word
            method = _store_method.get()
            with _lock:
                _statements[name] = _statements.get(name, 0) + 1
                _by_method[method] = _by_method.get(method, 0) + 1
            return fn(self, sql, *args, **kwargs)
        return wrapper

    for attr in ("execute", "executemany", "execute_fetchall", "execute_insert"):
        if hasattr(aiosqlite.Connection, attr):
            setattr(aiosqlite.Connection, attr, counted(getattr(aiosqlite.Connection, attr)))

    # The CPU of the run alone: from the submit (the run's row) to the daemon's exit, without
    # the daemon's start (imports, migrations, the sandbox probe).
    from buildrunnerd.store import Store

    original_create = Store.create_run

    @functools.wraps(original_create)
    async def create_run(self: Store, *args: Any, **kwargs: Any) -> Any:
        if not _at_submit:
            _at_submit.extend(_cpu_now())
        return await original_create(self, *args, **kwargs)

    Store.create_run = create_run  # type: ignore[method-assign]

    # Statements by the Store method that ran them (the outermost one).
    seen: set[str] = set()
    for cls in Store.__mro__[:-1]:
        for attr, value in list(vars(cls).items()):
            if attr.startswith("_") or attr in seen or not inspect.iscoroutinefunction(value):
                continue
            seen.add(attr)
            setattr(Store, attr, _in_method(attr, getattr(Store, attr)))


_store_method: contextvars.ContextVar[str] = contextvars.ContextVar("store_method",
                                                                    default="(other)")
_by_method: dict[str, int] = {}
_method_calls: dict[str, int] = {}


def _in_method(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _store_method.get() != "(other)":
            return await fn(*args, **kwargs)
        token = _store_method.set(name)
        with _lock:
            _method_calls[name] = _method_calls.get(name, 0) + 1
        try:
            return await fn(*args, **kwargs)
        finally:
            _store_method.reset(token)
    return wrapper


_at_submit: list[float] = []


def _cpu_now() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_report() -> dict[str, Any]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    by_kind = {k: {"processes": int(v[0]), "user_s": round(v[1], 3), "sys_s": round(v[2], 3)}
               for k, v in sorted(_children.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))}
    git = [v for k, v in _children.items() if k.startswith("git")]
    own_s, kids_s = _cpu_now()
    since = ({"run_daemon_s": round(own_s - _at_submit[0], 3),
              "run_children_s": round(kids_s - _at_submit[1], 3)} if _at_submit else {})
    return {**since,
        "daemon_user_s": round(own.ru_utime, 3), "daemon_sys_s": round(own.ru_stime, 3),
        "children_user_s": round(kids.ru_utime, 3), "children_sys_s": round(kids.ru_stime, 3),
        "git_processes": int(sum(v[0] for v in git)),
        "git_cpu_s": round(sum(v[1] + v[2] for v in git), 3),
        "children": by_kind,
        "statements": dict(sorted(_statements.items(), key=lambda kv: -kv[1])),
        # method: [calls, statements]
        "statements_by_method": {k: [_method_calls.get(k, 0), v] for k, v in
                                 sorted(_by_method.items(), key=lambda kv: -kv[1])},
    }


def install_profile(out: str) -> None:
    """cProfile the loop's thread and every thread started later; merged at exit."""
    # Each thread's own CPU time (not wall time): a thread waiting on a lock or a queue costs
    # nothing, and the loop's thread and the store's thread are told apart.
    profiles: list[cProfile.Profile] = []
    main = cProfile.Profile(time.thread_time)

    def start_in_thread(*_: Any) -> None:
        profile = cProfile.Profile(time.thread_time)
        with _lock:
            profiles.append(profile)
        profile.enable()  # replaces this hook for the thread

    # From the submit (the run's row) on: the daemon's start is not the run's cost.
    from buildrunnerd.store import Store

    original_create = Store.create_run

    @functools.wraps(original_create)
    async def create_run(self: Store, *args: Any, **kwargs: Any) -> Any:
        if not profiles:
            profiles.append(main)
            threading.setprofile(start_in_thread)
            main.enable()
        return await original_create(self, *args, **kwargs)

    Store.create_run = create_run  # type: ignore[method-assign]

    @atexit.register
    def dump() -> None:
        import pstats

        if not profiles:
            return
        main.disable()
        stats = pstats.Stats(main)
        for profile in profiles[1:]:
            try:
                stats.add(profile)
            except (TypeError, ValueError):  # a thread's profile with nothing in it
                continue
        stats.dump_stats(out)


def install_detail(module_names: list[str]) -> None:
    """Also time every function of these modules (``--detail``): coroutines as exclusive
    spans named ``module.function``, plain functions inclusive, as ``sync:module.function``
    (they may run in a thread inside another span)."""
    import importlib

    for name in module_names:
        module = importlib.import_module(name)
        short = name.rsplit(".", 1)[-1]
        for attr, value in list(vars(module).items()):
            if not inspect.isfunction(value) or value.__module__ != name:
                continue
            if inspect.iscoroutinefunction(value):
                wrapped: Any = _async_span(f"{short}.{attr}", value)
            else:
                wrapped = _sync_span(f"sync:{short}.{attr}", value)
            _replace_everywhere(value, wrapped)


def report() -> dict[str, Any]:
    totals = dict(_totals)
    # The editor's and the prompt builder's threads run inside spans of the awaiting task
    # (the tool loop, the batch); they are measured inclusive, so take them out of the loop.
    totals["agent_loop"] = totals.get("agent_loop", 0.0) - totals.get("tools_editor", 0.0)
    store = {k: v for k, v in totals.items() if k.startswith("store.")}
    totals = {k: v for k, v in totals.items() if k not in store}
    totals["store"] = sum(store.values())
    # Mean milliseconds per call of each span in the first and the last tenth of the time
    # the batches ran (from the first span to the last): what grows during a run.
    ends = [t for spans in _timeline.values() for t, _ in spans]
    tenths: dict[str, list[float]] = {}
    if ends:
        first, last = min(ends), max(ends)
        cut = (last - first) / 10
        for name, spans in _timeline.items():
            early = [s for t, s in spans if t <= first + cut]
            late = [s for t, s in spans if t >= last - cut]
            tenths[name] = [round(1000 * sum(part) / len(part), 2) if part else 0.0
                            for part in (early, late)]
    return {"seconds": {k: round(v, 3) for k, v in sorted(totals.items())},
            "ms_per_call_first_last_tenth": dict(sorted(tenths.items())),
            "store_seconds": {k[6:]: round(v, 3) for k, v in sorted(store.items(),
                                                                    key=lambda kv: -kv[1])},
            "calls": dict(sorted(_counts.items()))}


def main() -> None:
    out = sys.argv[1]
    args = sys.argv[2:]
    detail: list[str] = []
    profile: str | None = None
    spans = True
    while args and args[0].startswith(("--detail=", "--profile=", "--cpu-only")):
        flag, _, value = args.pop(0).partition("=")
        if flag == "--detail":
            detail += value.split(",")
        elif flag == "--cpu-only":
            spans = False
        else:
            profile = value
    sys.argv = ["buildrunnerd", *args]
    if spans:
        install()
        install_detail(detail)
    install_cpu()

    @atexit.register
    def write() -> None:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump({**(report() if spans else {}), "cpu": cpu_report()}, handle)

    if profile is not None:
        install_profile(profile)  # registered after write(): atexit runs it first

    from buildrunnerd.daemon.cli import main as daemon_main
    daemon_main()


if __name__ == "__main__":
    main()
