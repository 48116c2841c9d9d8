"""Black-box helpers for the contract tests: the installed ``buildrunnerd`` / ``brctl``
console scripts run as subprocesses, and a raw JSON-RPC connection on the Unix socket.

Nothing here imports the project: these tests see BuildRunner only the way users, scripts and
systemd do (docs: /work/shared/contract.md, mirrored in docs/protocol.md).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests import daemons
from tests.daemons import BRCTL as BRCTL_PATH
from tests.daemons import CONSOLE_SCRIPT, Daemon
from tests.rpc_clients import CALL_TIMEOUT_S, TERMINAL_EVENTS, RpcConnection, rpc

__all__ = [
    "BRCTL", "BUILDRUNNERD", "CALL_TIMEOUT_S", "CLI_TIMEOUT_S", "COMPLEXITIES",
    "FINISHED_RUN_STATES", "HEAVY_MODULES", "REPO_ROOT", "RFC3339", "RUN_STATES",
    "RUN_TIMEOUT_S", "TASK_STATES", "TINY_FEATURE_LINES", "TINY_SPEC", "Daemon",
    "RawConnection", "brctl", "buildrunnerd", "check_event_shape", "clean_env", "json_out",
    "make_repo", "rpc", "start_daemon", "submit", "wait_event", "wait_run",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# The console scripts of the venv that runs the tests (``.venv/bin`` in this project).
BUILDRUNNERD = Path(CONSOLE_SCRIPT[0])
BRCTL = Path(BRCTL_PATH)
RawConnection = RpcConnection  # the name these tests use for a blocking connection

RUN_TIMEOUT_S = 45.0
CLI_TIMEOUT_S = daemons.CLI_TIMEOUT_S

RUN_STATES = {"queued", "planning", "running", "paused", "succeeded", "failed", "cancelled"}
FINISHED_RUN_STATES = {"succeeded", "failed", "cancelled"}
TASK_STATES = {"pending", "ready", "running", "verifying", "succeeded", "failed", "blocked",
               "cancelled"}
COMPLEXITIES = {"simple", "medium", "complex", "critical"}
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
HEAVY_MODULES = ("anthropic", "aiosqlite", "watchfiles", "tiktoken")

# A small native-format spec: two features, the second depending on the first; every task
# names its files so the simulated backend has something to write.
TINY_SPEC = """\
# Tiny service

A tiny project written by the contract tests.

Test command: `true`

## Features

### Core
Domain: backend

#### Requirements
- [ ] `app/core.py` implements the core.

#### Acceptance Criteria
- [ ] Core works.

### Extra
**Depends on:** Core
Domain: backend

#### Requirements
- [ ] `app/extra.py` implements the extra part.

#### Acceptance Criteria
- [ ] Extra works.
"""
# 1-based lines of the feature headings above (plan --json must point back into the file).
TINY_FEATURE_LINES = {"core": 9, "extra": 18}


def clean_env(**extra: str) -> dict[str, str]:
    """:func:`tests.daemons.clean_env` with a git identity for the runs' commits."""
    return daemons.clean_env(
        GIT_AUTHOR_NAME="contract", GIT_AUTHOR_EMAIL="contract@buildrunner.invalid",
        GIT_COMMITTER_NAME="contract", GIT_COMMITTER_EMAIL="contract@buildrunner.invalid",
        **extra)


def brctl(*args: str, env: dict[str, str], timeout_s: float = CLI_TIMEOUT_S,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``brctl`` with ``args``; never raises on a non-zero exit."""
    return subprocess.run([str(BRCTL), *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd, stdin=subprocess.DEVNULL)


def buildrunnerd(*args: str, env: dict[str, str], timeout_s: float = CLI_TIMEOUT_S,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``buildrunnerd`` (a one-shot command such as ``plan``)."""
    return subprocess.run([str(BUILDRUNNERD), *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd, stdin=subprocess.DEVNULL)


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON document a ``--json`` command printed on stdout (with a useful failure)."""
    assert result.returncode == 0, (result.args, result.returncode, result.stdout, result.stderr)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{result.args}: stdout is not one JSON document: "
                             f"{result.stdout!r}") from exc


def start_daemon(workdir: Path, *args: str, env: dict[str, str], socket_path: Path,
                 wait: bool = True, name: str = "daemon") -> Daemon:
    """Start the console script ``buildrunnerd args`` (no ``--backend`` unless in ``args``)
    with ``env`` (cwd ``workdir``); unless ``wait=False``, return once it sent ``READY=1``.
    The caller stops it (``Daemon.stop_sync``, or ``kill`` in a ``finally``)."""
    factory = daemons.Daemons(workdir, socket=socket_path,
                              home=Path(env.get("BUILDRUNNER_HOME", workdir / "state")))
    spawn = factory.start_sync if wait else factory.spawn
    return spawn(*args, env=env, command=daemons.CONSOLE_SCRIPT, backend=None, cwd=workdir,
                 name=name)


def make_repo(path: Path, spec_text: str = TINY_SPEC) -> Path:
    """A real git repository at ``path`` with ``PROJECT_SPEC.md`` committed; the spec's path."""
    path.mkdir(parents=True)
    git = ["git", "-C", str(path), "-c", "user.name=contract",
           "-c", "user.email=contract@buildrunner.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, timeout=30)
    spec = path / "PROJECT_SPEC.md"
    spec.write_text(spec_text, encoding="utf-8")
    subprocess.run([*git, "add", "PROJECT_SPEC.md"], check=True, timeout=30)
    subprocess.run([*git, "commit", "-q", "-m", "spec"], check=True, timeout=30)
    return spec


def wait_run(daemon: Daemon, run_id: str, states: set[str] = FINISHED_RUN_STATES,
             timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Wait until the run has ended (each terminal event, replayed or live, is checked with
    ``run.get``: a retried run's earlier end does not count); its RunInfo, whose state must be
    one of ``states``."""
    for event in daemon.events(run_id, timeout_s=timeout_s):
        if event["type"] in TERMINAL_EVENTS:
            info: dict[str, Any] = daemon.rpc("run.get", run_id=run_id)
            if info["state"] in FINISHED_RUN_STATES:
                assert info["state"] in states, (run_id, info["state"], states)
                return info
    raise AssertionError("unreachable: the event stream ended")


def wait_event(daemon: Daemon, run_id: str, event_type: str,
               timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """The run's first event of ``event_type`` (replayed or live)."""
    return daemon.wait_event(run_id, (event_type,), timeout_s=timeout_s)


def submit(daemon: Daemon, spec: Path, repo: Path, *extra: str) -> str:
    """``brctl submit SPEC --repo REPO --json``; the new run's id."""
    out = json_out(daemon.brctl("--json", "submit", str(spec), "--repo", str(repo), *extra))
    assert isinstance(out, dict) and isinstance(out.get("run_id"), str), out
    return str(out["run_id"])


def check_event_shape(event: Any, run_id: str | None = None) -> None:
    """One event as the contract defines it."""
    assert isinstance(event, dict), event
    assert isinstance(event.get("id"), int) and not isinstance(event["id"], bool), event
    assert isinstance(event.get("ts"), str) and RFC3339.match(event["ts"]), event
    assert "run_id" in event, event
    if run_id is not None:
        assert event["run_id"] == run_id, event
    assert isinstance(event.get("type"), str), event
    assert re.fullmatch(r"[a-z_]+\.[a-z_]+", event["type"]), event
    assert isinstance(event.get("data"), dict), event
    for key in ("batch_id", "task_id"):  # optional, but a string when present and set
        assert event.get(key) is None or isinstance(event[key], str), event
    if event["type"] == "task.state_changed":
        assert {"from", "to", "reason"} <= set(event["data"]), event
        assert event["data"]["to"] in TASK_STATES, event
    if event["type"] == "api.call":
        assert {"model", "cost_usd"} <= set(event["data"]), event
