"""The editor and bash tools, alone and through the loop: confinement, sandbox, env."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from buildrunnerd.agent import AnthropicExecutor, ToolError
from buildrunnerd.agent._bash import BashSession
from buildrunnerd.agent._editor import TextEditor
from buildrunnerd.errors import SandboxUnavailableError
from buildrunnerd.sandbox import Confinement
from tests.agent.support import Recorder, make_config, make_job
from tests.fakeapi import API_KEY, FakeAnthropic, Reply, text, tool_use

EDIT = "str_replace_based_edit_tool"


# --- editor -------------------------------------------------------------------------------
def test_editor_view_create_replace_insert(worktree: Path) -> None:
    ed = TextEditor(worktree, max_characters=10_000)
    assert ed.run({"command": "create", "path": "pkg/mod.py",
                   "file_text": "a = 1\nb = 2\nc = 3"}) == "File created: pkg/mod.py"
    assert ed.run({"command": "view", "path": "pkg/mod.py"}) == (
        "     1\ta = 1\n     2\tb = 2\n     3\tc = 3")
    assert ed.run({"command": "view", "path": "pkg/mod.py", "view_range": [2, -1]}) == (
        "     2\tb = 2\n     3\tc = 3")
    with pytest.raises(ToolError, match="Invalid view_range"):
        ed.run({"command": "view", "path": "pkg/mod.py", "view_range": [3, 9]})
    ed.run({"command": "str_replace", "path": "pkg/mod.py", "old_str": "b = 2",
            "new_str": "b = 20"})
    ed.run({"command": "insert", "path": "pkg/mod.py", "insert_line": 0, "insert_text": "# top"})
    ed.run({"command": "insert", "path": "pkg/mod.py", "insert_line": 4, "new_str": "d = 4"})
    assert (worktree / "pkg/mod.py").read_text() == "# top\na = 1\nb = 20\nc = 3\nd = 4"
    listing = ed.run({"command": "view", "path": "."})
    assert "pkg/" in listing and "pkg/mod.py" in listing and "README.md" in listing
    assert ".git" not in listing


def test_editor_str_replace_needs_exactly_one_match(worktree: Path) -> None:
    ed = TextEditor(worktree, max_characters=10_000)
    ed.run({"command": "create", "path": "x.py", "file_text": "x = 1\nx = 1\n"})
    with pytest.raises(ToolError, match=r"appears 2 times .*lines 1, 2"):
        ed.run({"command": "str_replace", "path": "x.py", "old_str": "x = 1", "new_str": "y"})
    with pytest.raises(ToolError, match="did not appear verbatim"):
        ed.run({"command": "str_replace", "path": "x.py", "old_str": "zzz", "new_str": "y"})
    with pytest.raises(ToolError, match="does not exist"):
        ed.run({"command": "str_replace", "path": "nope.py", "old_str": "a", "new_str": "b"})
    assert (worktree / "x.py").read_text() == "x = 1\nx = 1\n"


def test_editor_max_characters(worktree: Path) -> None:
    (worktree / "big.txt").write_text("y" * 5000)
    out = TextEditor(worktree, max_characters=100).run({"command": "view", "path": "big.txt"})
    assert out.startswith("     1\t" + "y" * 93)
    assert "[... output truncated:" in out and len(out) < 200


def test_paths_outside_the_worktree_are_refused(worktree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s3cret")
    (worktree / "link").symlink_to(outside)
    (worktree / "file_link").symlink_to(outside / "secret.txt")
    ed = TextEditor(worktree, max_characters=10_000)
    cases = [
        ({"command": "view", "path": "/etc/passwd"}, "outside the repository"),
        ({"command": "create", "path": "../evil.txt", "file_text": "x"}, "climbs out"),
        ({"command": "create", "path": "sub/../../evil.txt", "file_text": "x"}, "climbs out"),
        ({"command": "create", "path": "link/evil.txt", "file_text": "x"}, "symlink"),
        ({"command": "view", "path": "file_link"}, "symlink"),
        ({"command": "str_replace", "path": "file_link", "old_str": "s3", "new_str": "x"},
         "symlink"),
        ({"command": "create", "path": ".git/hooks/pre-commit", "file_text": "x"},
         "read-only"),
    ]
    for params, words in cases:
        with pytest.raises(ToolError, match=words):
            ed.run(params)
    assert not (tmp_path / "evil.txt").exists() and not (outside / "evil.txt").exists()
    assert (outside / "secret.txt").read_text() == "s3cret"
    # Absolute paths inside the worktree are fine, and .git can be read.
    ed.run({"command": "create", "path": str(worktree / "ok.txt"), "file_text": "ok"})
    assert (worktree / "ok.txt").read_text() == "ok"
    assert "repositoryformatversion" in ed.run({"command": "view", "path": ".git/config"})


async def test_escapes_go_back_as_tool_errors(fake_api: FakeAnthropic, worktree: Path,
                                              tmp_path: Path, executor: AnthropicExecutor
                                              ) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (worktree / "link").symlink_to(outside)
    calls = [tool_use(EDIT, {"command": "create", "path": "/tmp/evil.txt", "file_text": "x"}),
             tool_use(EDIT, {"command": "create", "path": "link/evil.txt", "file_text": "x"}),
             tool_use(EDIT, {"command": "view", "path": "missing.txt"}),
             tool_use("mystery_tool", {"x": 1})]
    fake_api.set_responder([Reply(calls, "tool_use"), Reply([text("gave up")], "end_turn")])
    outcome = await executor.run_batch(make_job(worktree), Recorder())
    assert outcome.status == "completed"
    results = fake_api.requests[1].messages[-1]["content"]
    assert [r["tool_use_id"] for r in results] == [c["id"] for c in calls]
    assert all(r["is_error"] is True for r in results)
    assert "outside the repository" in results[0]["content"]
    assert "symlink" in results[1]["content"]
    assert not (outside / "evil.txt").exists()
    assert not await anyio.Path("/tmp/evil.txt").exists()


# --- bash ---------------------------------------------------------------------------------
async def _confinement(setting: str = "auto") -> Confinement:
    return await Confinement.create(make_config(sandbox=setting))


@pytest.mark.parametrize("setting", ["auto", "off"])
async def test_bash_is_persistent_and_reports_status(worktree: Path, setting: str) -> None:
    sh = BashSession(worktree, confinement=await _confinement(setting), timeout_s=10,
                     max_chars=10_000)
    try:
        await sh.run({"command": "mkdir -p sub && cd sub && export GREETING=hi"})
        assert await sh.run({"command": "pwd; echo $GREETING"}) == f"{worktree}/sub\nhi\n"
        assert await sh.run({"command": "echo oops >&2; false"}) == "oops\n\n[exit status 1]"
        # A syntax error or a stdin reader cannot swallow the end marker.
        assert "syntax error" in await sh.run({"command": "if then fi"})
        assert await sh.run({"command": "cat; echo after"}) == "after\n"
        assert await sh.run({"restart": True}) == "The shell has been restarted."
        assert await sh.run({"command": "pwd"}) == f"{worktree}\n"
    finally:
        await sh.aclose()


async def test_bash_timeout_restarts_and_output_is_truncated(worktree: Path) -> None:
    sh = BashSession(worktree, confinement=await _confinement(), timeout_s=1, max_chars=1000)
    try:
        await sh.run({"command": "cd /tmp"})
        with pytest.raises(ToolError, match="timed out after 1 s"):
            await sh.run({"command": "sleep 30"})
        assert await sh.run({"command": "pwd"}) == f"{worktree}\n"  # a fresh shell
        out = await sh.run({"command": "seq 1 100000"})
        assert out.startswith("1\n2\n3\n") and "[... output truncated:" in out
        assert len(out) < 1200
    finally:
        await sh.aclose()


@pytest.mark.parametrize("sandbox", ["auto", "off"])
async def test_bash_env_has_no_secrets(fake_api: FakeAnthropic, worktree: Path, sandbox: str,
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("BUILDRUNNER_SOCKET", str(tmp_path / "d.sock"))
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_not_for_the_model")
    fake_api.set_responder([Reply([tool_use("bash", {"command": "env; cat /proc/self/environ"})],
                                  "tool_use"), Reply([text("ok")], "end_turn")])
    ex = AnthropicExecutor(make_config(sandbox=sandbox), base_url=fake_api.base_url)
    assert (await ex.run_batch(make_job(worktree), Recorder())).status == "completed"
    await ex.aclose()
    output = fake_api.requests[1].messages[-1]["content"][0]["content"]
    assert "PATH=" in output
    for secret in (API_KEY, "ANTHROPIC", "BUILDRUNNER_SOCKET", "ghp_not_for_the_model"):
        assert secret not in output


async def test_bwrap_sandbox_confines_writes_and_network(worktree: Path, tmp_path: Path) -> None:
    confinement = await _confinement()
    assert confinement.mode == "bwrap", "bubblewrap must be installed (CI does)"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("outside\n")
    sh = BashSession(worktree, confinement=confinement, timeout_s=20, max_chars=10_000)
    try:
        assert await sh.run({"command": "echo in > inside.txt && cat inside.txt"}) == "in\n"
        out = await sh.run({"command": f"cat {outside}/canary.txt; echo x > {outside}/f.txt"})
        assert "outside" not in out.replace(str(outside), "")
        assert "Read-only file system" in out or "No such file" in out
        out = await sh.run({"command": "echo x > .git/evil"})
        assert "Read-only file system" in out or "Not a directory" in out
        # Only the loopback device exists: no route out.
        devices = await sh.run({"command": "tail -n +3 /proc/net/dev | cut -d: -f1"})
        assert devices.split() == ["lo"]
        out = await sh.run({"command": "python3 -c \"import socket; "
                                       "socket.create_connection(('1.1.1.1', 80), timeout=3)\""})
        assert "[exit status 1]" in out and "unreachable" in out.lower()
    finally:
        await sh.aclose()
    assert (worktree / "inside.txt").exists()
    assert not (outside / "f.txt").exists() and not (worktree / ".git/evil").exists()


async def test_bash_refuses_without_a_sandbox(worktree: Path) -> None:
    # No working sandbox and no explicit "off": the shell never starts unconfined.
    confinement = Confinement(sandbox=None, error="no sandbox: bubblewrap is not installed")
    sh = BashSession(worktree, confinement=confinement, timeout_s=5, max_chars=100)
    try:
        with pytest.raises(SandboxUnavailableError, match="bubblewrap is not installed"):
            await sh.run({"command": "touch unconfined"})
    finally:
        await sh.aclose()
    assert not (worktree / "unconfined").exists()
