"""What the end-to-end tests share: a git repository with a spec, the fake model's answers
(a diligent builder, Claude's plan, a plan that breaks the schema), a reply held until the test
lets it go, and a run submitted and waited for to its end."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.conftest import RpcClient, wait_run_event, write_spec
from tests.fakeapi import FakeRequest, Reply, text, tool_use

__all__ = [
    "FEATURES", "HeldReply", "builder", "claude_tasks", "create", "git", "grep_tree",
    "is_planner", "make_repo", "named_files", "rejected_plan", "run_to_end",
]

Features = list[tuple[str, str, list[str], list[str]]]

FEATURES: Features = [
    ("Storage", "database", [], ["app/db.py"]),
    ("Accounts", "backend", ["Storage"], ["app/accounts.py"]),
    ("Reports", "backend", ["Storage"], ["app/reports.py"]),
]
# Required files and the planner's suggestions: a diligent fake agent writes both.
_FILES = re.compile(r"^(?:Files|Suggested files \([^)]*\)): (.*)$", re.MULTILINE)
_FEATURE_ID = re.compile(r"\(id: ([^)]+)\)")


# --- the repository ---
def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(tmp_path: Path, features: Features = FEATURES) -> tuple[Path, Path]:
    """``tmp_path/repo``: a git repository whose one commit holds the spec of ``features``;
    (repository, spec)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.invalid")
    git(repo, "config", "user.name", "Tester")
    spec = write_spec(repo / "PROJECT_SPEC.md", features)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    return repo, spec


def grep_tree(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# --- the fake model's answers ---
def named_files(req: FakeRequest) -> list[str]:
    """The files the batch's tasks name, as the prompt builder lists them."""
    return [f for line in _FILES.findall(req.first_user_text())
            for f in re.findall(r"`([^`]+)`", line)]


def create(path: str, turn: int) -> dict[str, Any]:
    body = f'"""{path}"""\n\nVALUE = {turn}\n' if path.endswith(".py") else "ok\n"
    return tool_use("str_replace_based_edit_tool", {"command": "create", "path": path,
                                                    "file_text": body})


def builder(req: FakeRequest) -> Reply:
    """A model that writes each named file (one editor call per turn), runs bash, ends; told
    that its worktree was recreated, it writes them all again."""
    files = named_files(req)
    turn = req.assistant_turns()
    last = req.messages[-1]
    if last["role"] == "user" and "fresh worktree" in json.dumps(last["content"]):
        return Reply([text("Redoing my files."), *[create(f, turn) for f in files]],
                     "tool_use")
    if turn < len(files):
        return Reply([text(f"Writing {files[turn]}."), create(files[turn], turn)], "tool_use")
    if turn == len(files):
        return Reply([tool_use("bash", {"command": "env | sort; ls -R app"})], "tool_use")
    return Reply([text("Wrote " + ", ".join(files) + ".")], "end_turn")


def is_planner(req: FakeRequest) -> bool:
    return (req.body.get("tool_choice") or {}).get("name") == "submit_tasks"


def claude_tasks(req: FakeRequest, **override: Any) -> Reply:
    """One task per feature of the request, writing ``lib/<feature>.py``; every task but the
    first depends on ``storage.1``, and the first on a task that does not exist."""
    tasks = []
    for fid in _FEATURE_ID.findall(req.first_user_text()):
        tasks.append({
            "id": f"{fid}.1", "feature": fid, "title": f"Build {fid} the Claude way",
            "domain": "backend", "complexity": "simple", "estimate_minutes": 30,
            "depends_on": ["ghost.7"] if fid == "storage" else ["storage.1"],
            "files": [f"lib/{fid}.py"], "acceptance_criteria": [f"{fid} works"], **override,
        })
    return Reply([tool_use("submit_tasks", {"tasks": tasks})], "tool_use")


def rejected_plan(req: FakeRequest) -> Reply:
    """A planner whose answer breaks the schema (every time), and the builder for batches."""
    if is_planner(req):
        return claude_tasks(req, complexity="enormous")
    return builder(req)


class HeldReply:
    """A reply the fake's responder (in the fake's own threads) holds until the test lets it
    go: the responder calls :meth:`hold`; the test waits for :attr:`asked`, then
    :meth:`release`\\ s it (also at the end, so that no responder thread outlives the test)."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.asked = threading.Event()
        self._released = threading.Event()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def hold(self) -> None:
        """Say that the reply was asked for, and wait until it is released (or the timeout)."""
        self.asked.set()
        self._released.wait(self.timeout_s)

    def release(self) -> None:
        self._released.set()


# --- a run ---
async def run_to_end(client: RpcClient, socket: Path, spec: Path, repo: Path | None = None,
                     *, workers: int | None = None, timeout_s: float = 90.0,
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit ``spec`` (in ``repo``, with ``workers``), wait for the run's end; (the submit
    reply, ``run.get``)."""
    params: dict[str, Any] = {"spec_path": str(spec)}
    if repo is not None:
        params["repo"] = str(repo)
    if workers is not None:
        params["workers"] = workers
    run: dict[str, Any] = await client.call("run.submit", **params)
    await wait_run_event(socket, run["id"], timeout_s=timeout_s)
    info: dict[str, Any] = await client.call("run.get", run_id=run["id"])
    return run, info
