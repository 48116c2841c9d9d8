"""Helpers: real git repositories in tmp_path, with a local identity (no global config)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

from buildrunnerd.plan._model import Task


def run_git(repo: Path, *args: str) -> str:
    """Run git synchronously (test set-up and assertions only) and return stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["LC_ALL"] = "C"
    proc = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    run_git(path, "init", "-q", "-b", "main")
    run_git(path, "config", "user.name", "Test User")
    run_git(path, "config", "user.email", "test@example.com")
    run_git(path, "config", "commit.gpgSign", "false")
    (path / "README.md").write_text("# project\n")
    (path / "app.py").write_text("def hello() -> str:\n    return 'hi'\n")
    run_git(path, "add", "-A")
    run_git(path, "commit", "-q", "-m", "init")
    return path


def snapshot(repo: Path) -> dict[str, object]:
    """What the user would notice changing: HEAD, the checked-out branch, status and the
    content of every file in the working tree."""
    files = {}
    for p in sorted(repo.rglob("*")):
        if ".git" in p.relative_to(repo).parts or not p.is_file():
            continue
        files[p.relative_to(repo).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return {
        "head": run_git(repo, "rev-parse", "HEAD").strip(),
        "branch": run_git(repo, "symbolic-ref", "HEAD").strip(),
        "status": run_git(repo, "status", "--porcelain", "--untracked-files=all"),
        "files": files,
    }


def task(tid: str, *files: str, title: str = "do it") -> Task:
    return Task(id=tid, feature="F1", title=title, domain="backend", complexity="simple",
                estimate_minutes=5, files=list(files))


def names(folder: Path) -> list[str]:
    """The sorted entry names of a folder."""
    return sorted(p.name for p in folder.iterdir())


def real(path: Path) -> Path:
    """The path with symlinks resolved (tmp_path may sit behind one)."""
    return path.resolve()


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip a test this machine cannot run (a file system without a feature the attack
    needs); under ``CI``, where every test must run, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def overflowable_kernel_queue() -> int:
    """How many events the kernel queues for one inotify instance before it drops some; the
    test is skipped on a machine whose queue is too large to overflow in a test, never in CI
    (``CI`` set), where it fails instead."""
    queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if queue > 100_000:
        skip_unless_ci(f"fs.inotify.max_queued_events is {queue}: too many files to overflow it")
    return queue
