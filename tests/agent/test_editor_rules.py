"""The editor's file rules on real files: no symlink followed, regular files only, limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildrunnerd.agent import AnthropicExecutor, ToolError
from buildrunnerd.agent._editor import TextEditor
from buildrunnerd.config import AgentConfig
from buildrunnerd.sandbox import WorktreePathError, list_tree, read_bytes_in, write_bytes_in
from tests.agent.support import Recorder, make_config, make_job
from tests.fakeapi import API_KEY, FakeAnthropic, Reply, text, tool_use

EDIT = "str_replace_based_edit_tool"


def editor(root: Path, **limits: int) -> TextEditor:
    return TextEditor(root, max_characters=10_000, **limits)


def test_symlinks_are_not_followed_even_inside(worktree: Path) -> None:
    (worktree / "real.py").write_text("A = 1\n")
    (worktree / "alias.py").symlink_to("real.py")
    (worktree / "pkg").mkdir()
    (worktree / "pkg_alias").symlink_to("pkg")
    ed = editor(worktree)
    for params in ({"command": "view", "path": "alias.py"},
                   {"command": "str_replace", "path": "alias.py", "old_str": "A", "new_str": "B"},
                   {"command": "insert", "path": "alias.py", "insert_line": 0, "insert_text": "x"},
                   {"command": "create", "path": "alias.py", "file_text": "B = 2\n"},
                   {"command": "create", "path": "pkg_alias/new.py", "file_text": "x"},
                   {"command": "view", "path": "pkg_alias"}):
        with pytest.raises(ToolError, match="symlink"):
            ed.run(params)
    assert (worktree / "real.py").read_text() == "A = 1\n"
    assert (worktree / "alias.py").is_symlink()
    assert list((worktree / "pkg").iterdir()) == []


def test_listing_shows_symlinks_without_following_them(worktree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "private.txt").write_text("x")
    (worktree / "src").mkdir()
    (worktree / "src" / "out").symlink_to(outside)
    (worktree / "src" / "a.py").write_text("")
    listing = editor(worktree).run({"command": "view", "path": "."})
    assert f"src/out -> {outside}" in listing.splitlines()
    assert "src/a.py" in listing.splitlines()
    assert "inner" not in listing and "private" not in listing


def test_create_makes_parents_and_reports_overwrite(worktree: Path) -> None:
    ed = editor(worktree)
    assert ed.run({"command": "create", "path": "a/b/c/new.txt", "file_text": "1"}) == (
        "File created: a/b/c/new.txt")
    assert ed.run({"command": "create", "path": "a/b/c/new.txt", "file_text": "2"}) == (
        "File overwritten: a/b/c/new.txt")
    assert (worktree / "a/b/c/new.txt").read_text() == "2"
    assert (worktree / "a/b/c/new.txt").stat().st_mode & 0o777 == 0o644 & ~_umask()
    # A file on the way is not a folder.
    with pytest.raises(ToolError, match="not a directory"):
        ed.run({"command": "create", "path": "a/b/c/new.txt/x", "file_text": "3"})


def test_an_edit_keeps_the_mode(worktree: Path) -> None:
    script = worktree / "run.sh"
    script.write_text("echo a\n")
    script.chmod(0o755)
    editor(worktree).run({"command": "str_replace", "path": "run.sh", "old_str": "a",
                          "new_str": "b"})
    assert script.read_text() == "echo b\n" and script.stat().st_mode & 0o777 == 0o755


def test_read_and_write_limits(worktree: Path) -> None:
    (worktree / "big.txt").write_text("x" * 2001)
    ed = editor(worktree, max_read_bytes=2000, max_write_bytes=100)
    with pytest.raises(ToolError, match=r"2,001 bytes, over the limit of 2,000 bytes") as info:
        ed.run({"command": "view", "path": "big.txt"})
    assert "agent.editor_max_read_bytes" in str(info.value)
    with pytest.raises(ToolError, match=r"new content is 101 bytes, over the limit of 100"):
        ed.run({"command": "create", "path": "new.txt", "file_text": "y" * 101})
    assert not (worktree / "new.txt").exists()
    ed.run({"command": "create", "path": "new.txt", "file_text": "y" * 100})
    with pytest.raises(ToolError, match="over the limit of 100"):
        ed.run({"command": "insert", "path": "new.txt", "insert_line": 0, "insert_text": "z"})
    assert (worktree / "new.txt").read_text() == "y" * 100


def test_limits_default_to_one_mib_from_config() -> None:
    config = AgentConfig()
    assert config.editor_max_read_bytes == config.editor_max_write_bytes == 1024 * 1024


def test_hard_linked_file_is_not_written(worktree: Path) -> None:
    (worktree / "a.txt").write_text("shared\n")
    os.link(worktree / "a.txt", worktree / "b.txt")
    with pytest.raises(ToolError, match="2 hard links"):
        editor(worktree).run({"command": "create", "path": "b.txt", "file_text": "changed"})
    assert (worktree / "a.txt").read_text() == "shared\n"


def test_git_is_read_only_in_any_casing_and_depth(worktree: Path) -> None:
    (worktree / "vendor" / "lib" / ".git").mkdir(parents=True)
    ed = editor(worktree)
    config_before = (worktree / ".git" / "config").read_text()
    for path in (".git/config", ".GIT/config", "./.git/hooks/post-commit",
                 f"{worktree}/.git/info/attributes", "vendor/lib/.git/config"):
        with pytest.raises(ToolError, match="read-only"):
            ed.run({"command": "create", "path": path, "file_text": "[core]\n"})
    with pytest.raises(ToolError, match="read-only"):
        ed.run({"command": "str_replace", "path": ".git/config", "old_str": "[core]",
                "new_str": "[core]\n\tfsmonitor = /tmp/evil"})
    assert (worktree / ".git" / "config").read_text() == config_before
    assert not (worktree / ".git" / "hooks" / "post-commit").exists()
    assert list((worktree / "vendor" / "lib" / ".git").iterdir()) == []


def test_low_level_errors_say_what_was_refused(worktree: Path, tmp_path: Path) -> None:
    (worktree / "d").mkdir()
    with pytest.raises(WorktreePathError) as info:
        read_bytes_in(worktree, "d", max_bytes=10)
    assert info.value.problem == "is_directory" and info.value.data["path"] == "d"
    with pytest.raises(WorktreePathError) as info:
        write_bytes_in(worktree, "README.md", b"x", max_bytes=10, create_only=True)
    assert info.value.problem == "exists"
    with pytest.raises(WorktreePathError) as info:
        read_bytes_in(worktree, "nul\x00byte", max_bytes=10)
    assert info.value.problem == "invalid"
    with pytest.raises(WorktreePathError) as info:
        read_bytes_in(worktree, str(tmp_path / "elsewhere"), max_bytes=10)
    assert info.value.problem == "outside"
    # '..' that stays inside is fine; the walk sees the normalised path.
    assert read_bytes_in(worktree, "d/../README.md", max_bytes=100) == b"# demo\n"


def test_listing_is_bounded(worktree: Path) -> None:
    (worktree / "many").mkdir()
    for i in range(30):
        (worktree / "many" / f"f{i:02}").write_text("")
    entries, omitted = list_tree(worktree, "many", max_entries=10)
    assert entries == [f"f{i:02}" for i in range(10)] and omitted == 20
    out = TextEditor(worktree, max_characters=10_000).run({"command": "view", "path": "."})
    assert "many/f29" in out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_the_executor_applies_the_configured_limits(fake_api: FakeAnthropic,
                                                          worktree: Path) -> None:
    (worktree / "notes.md").write_text("n" * 50)
    fake_api.set_responder([
        Reply([tool_use(EDIT, {"command": "view", "path": "notes.md"}),
               tool_use(EDIT, {"command": "create", "path": "new.md", "file_text": "w" * 21})],
              "tool_use"),
        Reply([text("ok")], "end_turn")])
    ex = AnthropicExecutor(make_config(editor_max_read_bytes=40, editor_max_write_bytes=20,
                                       sandbox="off"),
                           api_key=API_KEY, base_url=fake_api.base_url)
    try:
        assert (await ex.run_batch(make_job(worktree), Recorder())).status == "completed"
    finally:
        await ex.aclose()
    view, create = fake_api.requests[1].messages[-1]["content"]
    assert view["is_error"] and "50 bytes, over the limit of 40 bytes" in view["content"]
    assert create["is_error"] and "21 bytes, over the limit of 20 bytes" in create["content"]
    assert not (worktree / "new.md").exists()
