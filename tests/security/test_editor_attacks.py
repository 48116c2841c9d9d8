"""A hostile model against the editor tool and the daemon's own readers of the worktree.

The model controls the worktree's content and runs a shell next to the daemon: symlinks out
(directly, through a folder on the way, or swapped in between a check and an open), FIFOs,
device nodes, a 1 GiB file, ``.git``. Every test plants a canary outside the worktree and
asserts it was neither read nor written, on real files.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
import textwrap
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from buildrunnerd.agent import ToolError
from buildrunnerd.agent._editor import TextEditor
from buildrunnerd.executor import BatchJob, SimulatedExecutor
from buildrunnerd.plan._model import Task
from buildrunnerd.prompt import BatchPrompt
from buildrunnerd.workspace import ChangeKind, FileMonitor, verify
from tests.agent.support import Recorder, make_worktree
from tests.conftest import DaemonFactory, wait_run_event, write_spec
from tests.fakeapi import API_KEY, FakeAnthropic, FakeRequest, Reply, text, tool_use

EDIT = "str_replace_based_edit_tool"
GIB = 1 << 30


def canary() -> str:
    return f"CANARY-{secrets.token_hex(12)}"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (no symlink followed) and its content."""
    found: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath, name)
            found[str(path.relative_to(folder))] = (
                b"<link>" if path.is_symlink() else path.read_bytes())
    return found


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    return make_worktree(tmp_path)


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, str]:
    """A folder outside the worktree holding a secret: (folder, the secret's text)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    secret = canary()
    (folder / "notes.txt").write_text(secret)
    (folder / "secret.py").write_text(f'KEY = "{secret}" (\n')  # a syntax error quoting it
    return folder, secret


def task(*files: str) -> Task:
    return Task(id="T1", feature="f", title="write the files", domain="backend",
                complexity="simple", estimate_minutes=1, files=list(files))


# --- the race ----------------------------------------------------------------------------
_SWAPPER = textwrap.dedent("""
    # Atomically exchange a folder and a symlink to outside, in a tight loop (renameat2
    # RENAME_EXCHANGE on Linux, renamex_np RENAME_SWAP on macOS): the name "d" is always
    # there, a real folder one instant and a link out the next.
    import ctypes, os, sys
    a, b = (os.fsencode(p) for p in sys.argv[1:3])
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        swap = lambda: libc.renameat2(-100, a, -100, b, 2)
    else:
        swap = lambda: libc.renamex_np(a, b, 2)
    if swap() != 0 or swap() != 0:
        sys.exit(f"no atomic exchange here (errno {ctypes.get_errno()})")
    print("swapping", flush=True)
    while True:
        swap()
""")


@pytest.mark.timeout(120)
def test_editor_race_folder_swapped_for_a_symlink(worktree: Path,
                                                  outside: tuple[Path, str]) -> None:
    folder, secret = outside
    before = snapshot(folder)
    (worktree / "d").mkdir()
    (worktree / "d" / "notes.txt").write_text("inside\n")
    (worktree / "d" / "sub").mkdir()
    (worktree / "swap").symlink_to(folder)
    with subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, str(worktree / "d"), str(worktree / "swap")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as swapper:
        try:
            outcomes = _race_the_editor(worktree, swapper, secret)
        finally:
            swapper.kill()
    assert snapshot(folder) == before  # nothing written, created or truncated outside
    assert outcomes["ok"] and outcomes["refused"]


def _race_the_editor(worktree: Path, swapper: subprocess.Popen[str],
                     secret: str) -> Counter[str]:
    assert swapper.stdout is not None and swapper.stderr is not None
    if swapper.stdout.readline().strip() != "swapping":
        pytest.skip(f"no atomic rename exchange on this system: {swapper.stderr.read()}")
    ed = TextEditor(worktree, max_characters=10_000)
    calls: list[dict[str, Any]] = [
        {"command": "view", "path": "d/notes.txt"},
        {"command": "view", "path": "d"},
        {"command": "str_replace", "path": "d/notes.txt", "old_str": "inside",
         "new_str": "inside"},
        {"command": "insert", "path": "d/notes.txt", "insert_line": 0, "insert_text": ""},
        {"command": "create", "path": "d/new.txt", "file_text": "written by the model"},
        {"command": "create", "path": "d/sub/deeper/new.txt", "file_text": "model"},
        {"command": "view", "path": "d/secret.py"},
    ]
    outcomes: Counter[str] = Counter()
    n = 0
    # Until both states were hit many times: the test must really race.
    while n < 3000 or min(outcomes["ok"], outcomes["refused"]) < 300:
        assert n < 200_000, outcomes
        params = calls[n % len(calls)]
        n += 1
        try:
            out = ed.run(params)
            outcomes["ok"] += 1
        except ToolError as exc:
            out = str(exc)
            outcomes["refused"] += 1
        assert secret not in out, (params, out)
    return outcomes


# --- FIFOs, devices, huge files ----------------------------------------------------------
@pytest.mark.timeout(20)
def test_fifo_is_refused_promptly(worktree: Path, tmp_path: Path) -> None:
    os.mkfifo(worktree / "pipe.txt")
    os.mkfifo(tmp_path / "outside_pipe")
    (worktree / "via_link").symlink_to(tmp_path / "outside_pipe")
    ed = TextEditor(worktree, max_characters=10_000)
    for params in ({"command": "view", "path": "pipe.txt"},
                   {"command": "str_replace", "path": "pipe.txt", "old_str": "a", "new_str": "b"},
                   {"command": "insert", "path": "pipe.txt", "insert_line": 0, "insert_text": "x"},
                   {"command": "create", "path": "pipe.txt", "file_text": "x"}):
        # Opening a FIFO for reading blocks until a writer comes: it must not be opened so.
        with pytest.raises(ToolError, match="pipe.txt is a FIFO, not a regular file"):
            ed.run(params)
    with pytest.raises(ToolError, match="symlink"):
        ed.run({"command": "view", "path": "via_link"})
    assert stat.S_ISFIFO(os.lstat(worktree / "pipe.txt").st_mode)


@pytest.mark.timeout(60)
def test_1_gib_sparse_file_is_refused_without_reading_it(worktree: Path) -> None:
    with (worktree / "big.txt").open("wb") as f:
        f.truncate(GIB)
    ed = TextEditor(worktree, max_characters=10_000)
    tracemalloc.start()
    try:
        for params in ({"command": "view", "path": "big.txt"},
                       {"command": "view", "path": "big.txt", "view_range": [1, 2]},
                       {"command": "str_replace", "path": "big.txt", "old_str": "\0",
                        "new_str": "x"},
                       {"command": "insert", "path": "big.txt", "insert_line": 1,
                        "insert_text": "x"}):
            with pytest.raises(ToolError, match=r"big\.txt: the file is 1,073,741,824 bytes, "
                               r"over the limit of 1,048,576 bytes"):
                ed.run(params)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Had any of it been read, the peak would be the limit at least.
    assert peak_bytes < 512 * 1024, peak_bytes
    assert (worktree / "big.txt").stat().st_size == GIB  # not truncated either


@pytest.mark.timeout(20)
def test_dev_zero_symlink_and_device_nodes_are_refused(worktree: Path) -> None:
    (worktree / "zero.txt").symlink_to("/dev/zero")
    ed = TextEditor(worktree, max_characters=10_000)
    with pytest.raises(ToolError, match=r"symlink \(zero\.txt -> /dev/zero\)"):
        ed.run({"command": "view", "path": "zero.txt"})
    with pytest.raises(ToolError, match="symlink"):
        ed.run({"command": "create", "path": "zero.txt", "file_text": "x"})
    try:
        os.mknod(worktree / "zero_node", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (the test runs unprivileged)")
    for params in ({"command": "view", "path": "zero_node"},
                   {"command": "create", "path": "zero_node", "file_text": "x"},
                   {"command": "str_replace", "path": "zero_node", "old_str": "\0",
                    "new_str": "x"}):
        with pytest.raises(ToolError, match="zero_node is a device node, not a regular file"):
            ed.run(params)


def test_git_writes_are_refused(worktree: Path) -> None:
    git_dir = worktree / ".git"
    before = snapshot(git_dir)
    ed = TextEditor(worktree, max_characters=10_000)
    for params in (
        {"command": "create", "path": ".git/hooks/pre-commit", "file_text": "#!/bin/sh\nid\n"},
        {"command": "create", "path": ".git/config", "file_text": "[core]\nfsmonitor = id\n"},
        {"command": "str_replace", "path": ".git/config", "old_str": "[core]",
         "new_str": "[core]\n\tfsmonitor = id"},
        {"command": "insert", "path": ".git/config", "insert_line": 0,
         "insert_text": "[core]\n\thooksPath = /tmp"},
        {"command": "create", "path": ".Git/info/attributes", "file_text": "* filter=x\n"},
    ):
        with pytest.raises(ToolError, match="read-only"):
            ed.run(params)
    assert snapshot(git_dir) == before


def test_symlink_out_through_an_intermediate_folder(worktree: Path,
                                                    outside: tuple[Path, str]) -> None:
    folder, secret = outside
    before = snapshot(folder)
    (worktree / "src").mkdir()
    (worktree / "src" / "vendor").symlink_to(folder)
    ed = TextEditor(worktree, max_characters=10_000)
    for params in ({"command": "view", "path": "src/vendor/notes.txt"},
                   {"command": "view", "path": "src/vendor"},
                   {"command": "create", "path": "src/vendor/evil.txt", "file_text": "x"},
                   {"command": "create", "path": "src/vendor/new/dir/evil.txt",
                    "file_text": "x"},
                   {"command": "str_replace", "path": "src/vendor/notes.txt",
                    "old_str": secret, "new_str": "gone"},
                   {"command": "view", "path": f"{worktree}/src/vendor/notes.txt"}):
        with pytest.raises(ToolError, match=r"symlink \(src/vendor -> ") as info:
            ed.run(params)
        assert secret not in str(info.value)
    assert snapshot(folder) == before


# --- the daemon's own readers ------------------------------------------------------------
def _commit_all(repo: Path) -> None:
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "base"], check=True)


@pytest.mark.timeout(60)
async def test_compile_and_files_checks_do_not_follow_links(worktree: Path,
                                                            outside: tuple[Path, str]) -> None:
    folder, secret = outside
    _commit_all(worktree)
    # A .py symlink out of the worktree: compiling it would quote the secret's line.
    (worktree / "evil.py").symlink_to(folder / "secret.py")
    (worktree / "zero.py").symlink_to("/dev/zero")
    (worktree / "ok.py").write_text("OK = 1\n")
    (worktree / "notes.txt").symlink_to(folder / "notes.txt")
    os.mkfifo(worktree / "pipe.txt")
    report = await verify(worktree, [task("ok.py", "notes.txt", "pipe.txt")])
    dumped = json.dumps(report.to_dict())
    assert secret not in dumped
    compile_checks = [c for c in report.checks if c.name == "compile"]
    assert [c.passed for c in compile_checks] == [True], compile_checks
    files = {c.file: c.message for c in report.checks if c.name == "files"}
    assert "notes.txt is a symbolic link" in files["notes.txt"]
    assert "pipe.txt is a FIFO, socket or device, not a regular file" in files["pipe.txt"]
    assert "ok.py" not in files


@pytest.mark.timeout(60)
async def test_monitor_does_not_follow_a_committed_link_to_root(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    root.mkdir()
    (root / "link").symlink_to("/")  # committed by an earlier batch
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    events: list[tuple[ChangeKind, str]] = []
    seen = anyio.Event()

    async def record(kind: ChangeKind, rel: str) -> None:
        events.append((kind, rel))
        if rel == "after.txt":
            seen.set()

    async with FileMonitor(root, record, debounce_ms=100):
        (elsewhere / "outside.txt").write_text("x")  # reachable as link/<...>/outside.txt
        (root / "pkg").mkdir()
        (root / "pkg" / "in.py").write_text("x")
        (root / "pkg" / "link2").symlink_to("/")  # a new link to / during the batch
        await anyio.sleep(0.3)  # let the watcher see the new folder and rebuild
        (elsewhere / "outside2.txt").write_text("x")
        (root / "after.txt").write_text("y")
        with anyio.fail_after(20):
            await seen.wait()
    rels = {rel for _, rel in events}
    assert rels <= {"pkg/in.py", "pkg/link2", "after.txt"}, events
    assert {"pkg/in.py", "after.txt"} <= rels


async def test_simulated_backend_does_not_write_through_a_link(
        worktree: Path, outside: tuple[Path, str]) -> None:
    folder, _secret = outside
    before = snapshot(folder)
    (worktree / "app").symlink_to(folder)  # committed by an earlier batch
    job = BatchJob(run_id="r-1", batch_id="r-1:B1", attempt=1,
                   tasks=[task("app/notes.txt", "app/new.py")],
                   prompt=BatchPrompt(system="s", user="u", tokens=2, context_tokens=0),
                   worktree=str(worktree))
    outcome = await SimulatedExecutor().run_batch(job, Recorder())
    assert outcome.status == "failed"
    assert "symlink (app -> " in (outcome.reason or "")
    assert snapshot(folder) == before


# --- through the daemon ------------------------------------------------------------------
# Required files and the planner's suggestions: a diligent fake agent writes both.
_FILES = re.compile(r"^(?:Files|Suggested files \([^)]*\)): (.*)$", re.MULTILINE)
_BODIES = {"app/db.py": "DB = 1\n",
           "tests/test_storage.py": "def test_ok() -> None:\n    assert 1 + 1 == 2\n"}


def _hostile(secret_path: Path) -> Any:
    """A fake model that tries every trick, then does the job properly."""

    def respond(req: FakeRequest) -> Reply:
        turn = req.assistant_turns()
        if turn == 0:
            return Reply([tool_use("bash", {"command": (
                "truncate -s 1G big.txt && mkfifo pipe.txt && ln -s /dev/zero zero.txt && "
                f"ln -s {secret_path.parent} out && echo planted")})], "tool_use")
        if turn == 1:
            return Reply([
                tool_use(EDIT, {"command": "view", "path": "app/key.txt"}),
                tool_use(EDIT, {"command": "view", "path": "big.txt"}),
                tool_use(EDIT, {"command": "view", "path": "pipe.txt"}),
                tool_use(EDIT, {"command": "view", "path": "zero.txt"}),
                tool_use(EDIT, {"command": "view", "path": f"out/{secret_path.name}"}),
                tool_use(EDIT, {"command": "create", "path": "out/planted.txt",
                                "file_text": "x"}),
                tool_use(EDIT, {"command": "create", "path": ".git/hooks/pre-commit",
                                "file_text": "#!/bin/sh\n"}),
            ], "tool_use")
        files = [f for line in _FILES.findall(req.first_user_text())
                 for f in re.findall(r"`([^`]+)`", line)]
        if turn == 2:
            return Reply([tool_use("bash", {"command": (
                "rm -f big.txt pipe.txt zero.txt out " + " ".join(files))})], "tool_use")
        if turn == 3:
            return Reply([tool_use(EDIT, {"command": "create", "path": f,
                                          "file_text": _BODIES.get(f, "ok\n")})
                          for f in files], "tool_use")
        return Reply([text("done")], "end_turn")

    return respond


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(120)
async def test_hostile_model_through_the_daemon(daemon_factory: DaemonFactory,
                                                tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the memory check reads /proc (Linux)")
    ssh = tmp_path / "user" / ".ssh"
    ssh.mkdir(parents=True)
    secret = canary()
    (ssh / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n")
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.invalid")
    git("config", "user.name", "Tester")
    spec = write_spec(repo / "PROJECT_SPEC.md",
                      [("Storage", "database", [], ["app/db.py", "app/key.txt"])])
    (repo / "app").mkdir()
    # Committed by an earlier batch: a file the next batch's tasks name, linked to a secret.
    (repo / "app" / "key.txt").symlink_to(ssh / "id_rsa")
    git("add", ".")
    git("commit", "-qm", "init")
    head_before = git("rev-parse", "HEAD")
    outside_before = snapshot(ssh.parent)
    with FakeAnthropic(_hostile(ssh / "id_rsa")) as fake:
        daemon = await daemon_factory.start_on_api(
            fake.base_url, API_KEY,
            config="[planner]\nplanner = \"heuristic\"\n[agent]\nbackoff_base_s = 0.01\n"
                   "backoff_max_s = 0.05\n")
        async with daemon.client() as client:
            run = await client.call("run.submit", spec_path=str(spec), repo=str(repo))
            await wait_run_event(daemon.socket, run["id"], timeout_s=90)
            info = await client.call("run.get", run_id=run["id"])
            with anyio.fail_after(1):
                assert (await client.call("daemon.ping"))["pid"] == daemon.pid
        peak_rss = _peak_rss_bytes(daemon.pid)
        assert await daemon.stop() == 0
    assert info["state"] == "succeeded", (info, daemon.stderr()[-3000:])
    # The secret never went to the API: not in the prompt, not in a tool result.
    for req in fake.requests:
        assert secret not in req.raw.decode()
    results = {r["content"] if isinstance(r["content"], str) else json.dumps(r["content"])
               for req in fake.requests for m in req.messages if m["role"] == "user"
               and isinstance(m["content"], list)
               for r in m["content"] if r.get("type") == "tool_result"}
    joined = "\n".join(results)
    assert "symlink (app/key.txt -> " in joined
    assert "big.txt: the file is 1,073,741,824 bytes, over the limit" in joined
    assert "pipe.txt is a FIFO" in joined
    assert "symlink (zero.txt -> /dev/zero)" in joined
    assert "inside .git, which is read-only" in joined
    assert snapshot(ssh.parent) == outside_before  # nothing written next to the secret
    assert git("rev-parse", "main") == head_before  # the user's branch did not move
    # The 1 GiB file was never read into the daemon (its whole life's peak stays far below).
    assert peak_rss < 512 * 1024 * 1024, peak_rss
