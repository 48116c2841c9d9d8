"""Issue 4 end to end: the real daemon (simulated backend) on real git repositories.

Specs are spec-kit task lists, so every task's title and file are exactly as written: the
simulated backend writes each named file with a docstring holding the task's title, which is
how a test plants content (an AWS key) in a generated file. ``max_batch_minutes = 60`` in the
daemon's config puts every 60-minute task in a batch of its own.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio

from tests.conftest import (
    DaemonFactory,
    DaemonProcess,
    RpcError,
    all_events,
    wait_run_event,
)

# Assembled at run time so this file holds no credential-shaped string.
AWS_KEY = "AKIA" + "Z7Q4XK2M9PLW3JHV"
TERMINAL = ("run.succeeded", "run.failed", "run.cancelled")


def git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(path: Path, spec: str) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "t@example.invalid")
    git(path, "config", "user.name", "Tester")
    (path / "README.md").write_text("# project\n")
    (path / "TASKS.md").write_text(spec)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "init")
    (path / "scratch.txt").write_text("the user's untracked notes\n")
    return path


def snapshot(repo: Path) -> dict[str, Any]:
    """HEAD, the checked-out branch, status and a hash of every file of the working tree."""
    files = {
        p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
    return {"head": git(repo, "rev-parse", "HEAD"), "branch": git(repo, "symbolic-ref", "HEAD"),
            "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
            "files": files}


def worktrees(repo: Path) -> list[str]:
    return [line.removeprefix("worktree ")
            for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def path_without_git() -> str:
    """The current PATH minus every folder that holds git."""
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and not Path(p, "git").exists())


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def start_daemon(factory: DaemonFactory, tmp_path: Path, *, sim_ms_per_minute: int = 0,
                       verify_toml: str = "", **env: str) -> DaemonProcess:
    config = tmp_path / "config.toml"
    config.write_text("[planner]\nmax_batch_minutes = 60\n\n[verify]\nmax_fix_attempts = 2\n"
                      + verify_toml)
    return await factory.start(
        "--config", str(config),
        env=factory.base_env(BUILDRUNNER_SIM_MS_PER_MINUTE=str(sim_ms_per_minute), **env),
    )


async def run_to_end(daemon: DaemonProcess, **params: Any) -> tuple[dict[str, Any],
                                                                    list[dict[str, Any]]]:
    """Submit, wait for the run's terminal event, return (run.get, all its events)."""
    async with daemon.client() as client:
        run = await client.call("run.submit", **params)
        await wait_run_event(daemon.socket, run["id"], TERMINAL, timeout_s=90.0)
        info = await client.call("run.get", run_id=run["id"])
        return info, await all_events(client, run["id"])


SPEC = """# Shop

## Phase 1: Foundation

- [ ] T001 Create `app/db.py` with the storage layer

## Phase 2: Features

- [ ] T002 [P] Create `app/reports.py` with the reports (depends on T001)
- [ ] T003 [P] Create `app/accounts.py` with the accounts (depends on T001)

## Phase 3: Web

- [ ] T004 Create `web/index.py` with the report page (depends on T002)
"""


async def test_run_branch_holds_every_file_one_commit_per_batch(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", SPEC)
    before = snapshot(repo)
    daemon = await start_daemon(daemon_factory, tmp_path)
    info, events = await run_to_end(daemon, spec_path=str(repo / "TASKS.md"), workers=2)
    assert info["state"] == "succeeded", info
    branch = info["branch"]
    assert branch == f"buildrunner/{info['id']}"
    files = set(git(repo, "ls-tree", "-r", "--name-only", branch).splitlines())
    assert {"app/db.py", "app/reports.py", "app/accounts.py", "web/index.py"} <= files
    batches = {e["batch_id"] for e in events if e["type"] == "batch.succeeded"}
    assert len(batches) == 4
    commits = git(repo, "log", "--no-merges", "--format=%an|%s",
                  f"{before['head']}..{branch}").splitlines()
    assert len(commits) == len(batches)
    assert all(c.startswith(f"BuildRunner|buildrunner {info['id']} B") for c in commits)
    assert sorted(c.rsplit(": ", 1)[1] for c in commits) == ["T001", "T002", "T003", "T004"]
    created = {e["data"]["path"] for e in events if e["type"] == "file.created"}
    assert {"app/db.py", "web/index.py"} <= created
    # The user's checkout: same HEAD, same branch, same status, same bytes in every file.
    assert snapshot(repo) == before
    assert entries(daemon.home / "worktrees" / info["id"]) == []
    assert worktrees(repo) == [str(repo.resolve())]
    assert await daemon.stop() == 0


async def test_failing_test_command_fails_batch_after_fixups_and_blocks_dependents(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", SPEC)
    daemon = await start_daemon(daemon_factory, tmp_path,
                                verify_toml="keep_failed_worktrees = true\n")
    # Fails exactly where the reports module exists: in T002's batch, not in T001's or T003's.
    test_cmd = "if [ -f app/reports.py ]; then echo 'FAILED test_reports' >&2; exit 1; fi"
    info, events = await run_to_end(daemon, spec_path=str(repo / "TASKS.md"),
                                    test_cmd=test_cmd, workers=2)
    assert info["state"] == "failed", info
    states = {t["id"].split(":")[-1]: t["state"] for t in info["tasks"]}
    assert states == {"T001": "succeeded", "T002": "failed", "T003": "succeeded",
                      "T004": "blocked"}
    failed_batch = next(t["batch_id"] for t in info["tasks"] if t["id"].endswith("T002"))
    verify_failed = [e for e in events
                     if e["type"] == "verify.failed" and e["batch_id"] == failed_batch]
    # The simulated backend writes the same files in every round: the same failures after
    # fix-up round 1 as before it end the loop early (max_fix_attempts is 2).
    assert [e["data"]["fix_round"] for e in verify_failed] == [0, 1], (
        failed_batch, info["tasks"], [(e["type"], e["batch_id"], e["data"]) for e in events])
    [t002] = [t for t in info["tasks"] if t["id"].endswith("T002")]
    assert "stopped early" in str(t002.get("reason") or t002)
    async with daemon.client() as client:
        task = await client.call("task.get", task_id=f"{info['id']}:T002")
    [tests_check] = [c for c in task["verification"]["checks"] if c["name"] == "tests"]
    assert tests_check["passed"] is False
    assert "FAILED test_reports" in tests_check["output_tail"]
    # Nothing of the failed batch reached the branch; its worktree is kept for inspection
    # (keep_failed_worktrees), the others are gone.
    assert "app/reports.py" not in git(repo, "ls-tree", "-r", "--name-only", info["branch"])
    [kept] = entries(daemon.home / "worktrees" / info["id"])
    kept_path = daemon.home / "worktrees" / info["id"] / kept
    assert (kept_path / "app" / "reports.py").is_file()
    assert str(kept_path) in worktrees(repo)


async def test_planted_aws_key_fails_verification_with_file_and_line(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    spec = ("# Uploads\n\n## Phase 1: Setup\n\n"
            f"- [ ] T001 Create `app/settings.py` with the upload key {AWS_KEY}\n")
    repo = make_repo(tmp_path / "repo", spec)
    daemon = await start_daemon(daemon_factory, tmp_path)
    info, events = await run_to_end(daemon, spec_path=str(repo / "TASKS.md"))
    assert info["state"] == "failed", info
    failures = [e for e in events if e["type"] == "verify.failed"]
    assert failures
    secret_checks = [c for c in failures[-1]["data"]["checks"]
                     if c["name"] == "secrets" and not c["passed"]]
    assert secret_checks and secret_checks[0]["file"] == "app/settings.py"
    assert secret_checks[0]["line"] == 1  # the simulated backend's docstring line
    assert "aws access key" in secret_checks[0]["message"]
    async with daemon.client() as client:
        task = await client.call("task.get", task_id=f"{info['id']}:T001")
    # The report names the place, never the key.
    assert AWS_KEY not in str(task["verification"])
    assert AWS_KEY not in str([e["data"] for e in events if e["type"].startswith("verify.")])
    # keep_failed_worktrees is false by default: the failed batch's worktree (the one that
    # holds the key) is removed from disk and from git's list; only the user's checkout stays.
    assert [e["type"] for e in events if e["type"] == "batch.failed"] == ["batch.failed"]
    assert entries(daemon.home / "worktrees" / info["id"]) == []
    assert worktrees(repo) == [str(repo.resolve())]
    assert "app/settings.py" not in git(repo, "ls-tree", "-r", "--name-only", info["branch"])
    assert await daemon.stop() == 0


async def test_parallel_batches_on_the_same_file_conflict_and_rerun(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    spec = ("# Registry\n\n## Phase 1: Plugins\n\n"
            "- [ ] T001 [P] Create `shared/registry.py` registering alpha\n"
            "- [ ] T002 [P] Create `shared/registry.py` registering beta\n")
    repo = make_repo(tmp_path / "repo", spec)
    before = snapshot(repo)
    # Each batch works ~1.8 s: both worktrees exist before either batch merges.
    daemon = await start_daemon(daemon_factory, tmp_path, sim_ms_per_minute=30)
    info, events = await run_to_end(daemon, spec_path=str(repo / "TASKS.md"), workers=2)
    assert info["state"] == "succeeded", info
    conflicts = [e for e in events if e["type"] == "batch.conflict"]
    assert len(conflicts) == 1
    assert conflicts[0]["data"]["files"] == ["shared/registry.py"]
    assert conflicts[0]["data"]["rerun"] is True
    rerun = conflicts[0]["batch_id"]
    dispatches = [e for e in events if e["type"] == "batch.dispatched" and e["batch_id"] == rerun]
    assert len(dispatches) == 2  # the re-run counted as a new attempt
    content = git(repo, "show", f"{info['branch']}:shared/registry.py")
    assert "TASK_ID" in content and "<<<<<<<" not in content
    assert snapshot(repo) == before


async def test_daemon_killed_mid_run_leaves_no_orphan_worktree(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", SPEC)
    # Slow enough (60 s a batch) that the kill surely lands while T001 is being built.
    daemon = await start_daemon(daemon_factory, tmp_path, sim_ms_per_minute=1000)
    async with daemon.client() as client:
        run = await client.call("run.submit", spec_path=str(repo / "TASKS.md"))
    await wait_run_event(daemon.socket, run["id"], ("batch.dispatched",), timeout_s=30.0)
    root = daemon.home / "worktrees" / run["id"]

    def registered() -> list[Path]:
        listed = worktrees(repo)
        return [root / name for name in entries(root) if str(root / name) in listed]

    with anyio.fail_after(30):
        # Another process's worktree: there is no event to wait on; git registers it right
        # after the dispatch event.
        while not registered():  # noqa: ASYNC110
            await anyio.sleep(0.05)
    orphans = registered()
    assert orphans  # what the kill leaves behind: a registered worktree mid-batch
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=30)

    restarted = await start_daemon(daemon_factory, tmp_path, sim_ms_per_minute=0)
    event = await wait_run_event(restarted.socket, run["id"], TERMINAL, timeout_s=90.0)
    assert event["type"] == "run.succeeded"
    assert entries(root) == []
    assert worktrees(repo) == [str(repo.resolve())]
    files = git(repo, "ls-tree", "-r", "--name-only", run["branch"]).splitlines()
    assert "web/index.py" in files
    assert await restarted.stop() == 0


async def test_repository_problems_are_clear_errors(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", SPEC)
    (repo / "README.md").write_text("edited, not committed\n")
    plain = tmp_path / "plain"
    plain.mkdir()
    daemon = await start_daemon(daemon_factory, tmp_path)
    async with daemon.client() as client:
        try:
            await client.call("run.submit", spec_path=str(repo / "TASKS.md"), repo=str(repo))
            raise AssertionError("a dirty repository was accepted")
        except RpcError as err:
            assert err.code == -32011
            assert "uncommitted changes in README.md" in err.message
            assert "--allow-dirty" in err.message
            assert err.data["reason"] == "dirty"
        try:
            await client.call("run.submit", spec_text=SPEC, repo=str(plain))
            raise AssertionError("a folder without git was accepted")
        except RpcError as err:
            assert err.code == -32011 and "not a git repository" in err.message
        run = await client.call("run.submit", spec_path=str(repo / "TASKS.md"), repo=str(repo),
                                allow_dirty=True)
    event = await wait_run_event(daemon.socket, run["id"], TERMINAL, timeout_s=90.0)
    assert event["type"] == "run.succeeded"
    # The edit stays in the user's working tree and out of the run branch.
    assert (repo / "README.md").read_text() == "edited, not committed\n"
    assert git(repo, "show", f"{run['branch']}:README.md") == "# project"


async def test_git_missing_is_a_clear_error(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", SPEC)
    daemon = await start_daemon(daemon_factory, tmp_path, PATH=path_without_git())
    async with daemon.client() as client:
        try:
            await client.call("run.submit", spec_path=str(repo / "TASKS.md"), repo=str(repo))
            raise AssertionError("a run was accepted without git")
        except RpcError as err:
            assert err.code == -32011
            assert "git is not installed or not on PATH" in err.message
            assert "install git" in err.message
        assert await client.call("daemon.ping")  # still serving
