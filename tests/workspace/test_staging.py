"""Staging by name (one ``status``, then ``add`` of what it listed) stages exactly what the
whole-tree ``git add -A`` stages, for every kind of change a hostile batch can leave, and says
the worktree holds exactly the index only when it does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from buildrunnerd.workspace._git import git_env, record_git_calls
from buildrunnerd.workspace._repo import COMMIT_EXCLUDES, prepare_run_repo, stage_all
from buildrunnerd.workspace._staging import _RULES, excluded, stage_change
from buildrunnerd.workspace._worktree import worktree_git

from ._helpers import run_git


def _seed(repo: Path) -> None:
    (repo / "pkg").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "core.py").write_text("X = 1\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_app.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    (repo / ".gitignore").write_text("*.log\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "seed")


def _forge_mtime(wt: Path) -> None:
    # Same size, the old timestamps put back: git's ctime and inode still tell.
    path = wt / "pkg" / "core.py"
    st = path.stat()
    path.write_text("X = 2\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _folder_to_symlink(wt: Path) -> None:
    outside = wt.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    (outside / "test_app.py").write_text("def test_one():\n    assert True\n")
    subprocess.run(["rm", "-rf", str(wt / "tests")], check=True)
    (wt / "tests").symlink_to(outside)


def _file_to_folder(wt: Path) -> None:
    (wt / "app.py").unlink()
    (wt / "app.py").mkdir()
    (wt / "app.py" / "inner.py").write_text("Y = 1\n")


def _nested_repo(wt: Path) -> None:
    sub = wt / "sub"
    sub.mkdir()
    env = git_env()
    subprocess.run(["git", "init", "-q"], cwd=sub, check=True, env=env)
    (sub / "f.py").write_text("Z = 1\n")
    subprocess.run(["git", "add", "f.py"], cwd=sub, check=True, env=env)
    subprocess.run(["git", "-c", "user.name=x", "-c", "user.email=x@y", "commit", "-qm", "x"],
                   cwd=sub, check=True, env=env)


def _fixup_round(wt: Path) -> None:
    (wt / "first.py").write_text("A = 1\n")
    subprocess.run(["git", "add", "first.py"], cwd=wt, check=True, env=git_env())
    (wt / "first.py").write_text("A = 2\n")
    (wt / "second.py").write_text("B = 1\n")


def _many(wt: Path) -> None:
    for i in range(60):
        folder = wt / f"gen{i % 7}" / f"sub{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i}.py").write_text(f"N = {i}\n")


def _new_and_changed(wt: Path) -> None:
    (wt / "new.py").write_text("N = 1\n")
    (wt / "app.py").write_text("changed\n")


def _deleted(wt: Path) -> None:
    (wt / "app.py").unlink()


def _mode(wt: Path) -> None:
    (wt / "app.py").chmod(0o755)


def _file_to_symlink(wt: Path) -> None:
    (wt / "app.py").unlink()
    (wt / "app.py").symlink_to("/etc/hostname")


def _caches(wt: Path) -> None:
    (wt / "pkg" / "__pycache__").mkdir()
    (wt / "pkg" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"\0")
    (wt / "stale.pyc").write_bytes(b"\0")
    (wt / "ok.py").write_text("O = 1\n")


def _ignored(wt: Path) -> None:
    (wt / "debug.log").write_text("x\n")
    (wt / "ok.py").write_text("O = 1\n")


def _cache_name_as_file(wt: Path) -> None:
    (wt / "__pycache__").write_text("x\n")


def _suffix_on_a_folder(wt: Path) -> None:
    (wt / "x.pyc").mkdir()
    (wt / "x.pyc" / "y.py").write_text("Y = 1\n")


def _non_utf8_name(wt: Path) -> None:
    (wt / os.fsdecode(b"caf\xe9.py")).write_text("C = 1\n")


def _nothing(wt: Path) -> None:
    pass


CHANGES: dict[str, tuple[Callable[[Path], None], bool | None]] = {
    # name -> (the change, whether the worktree then holds exactly the index; None: unknown)
    "new_and_changed": (_new_and_changed, True),
    "deleted": (_deleted, True),
    "forged_mtime": (_forge_mtime, True),
    "mode": (_mode, True),
    "file_to_symlink": (_file_to_symlink, True),
    "folder_to_symlink": (_folder_to_symlink, None),
    "file_to_folder": (_file_to_folder, True),
    "caches": (_caches, False),
    "ignored": (_ignored, False),
    "nested_repo": (_nested_repo, None),
    "cache_names_as_files": (_cache_name_as_file, None),
    "suffix_on_a_folder": (_suffix_on_a_folder, None),
    "non_utf8_name": (_non_utf8_name, None),
    "fixup_round": (_fixup_round, True),
    "many": (_many, True),
    "nothing": (_nothing, True),
}


def _index(wt: Path, opts: list[str]) -> str:
    git_dir = opts[opts.index("--git-dir") + 1]
    return run_git(wt, f"--git-dir={git_dir}", f"--work-tree={wt}", "ls-files", "-s")


def _status(wt: Path, opts: list[str]) -> list[str]:
    """What the worktree holds that the index does not: untracked, ignored, or differing
    from the index (the second column; the first is the staged change)."""
    git_dir = opts[opts.index("--git-dir") + 1]
    out = run_git(wt, f"--git-dir={git_dir}", f"--work-tree={wt}", "status", "--porcelain",
                  "--ignored", "--untracked-files=all", "--ignore-submodules=all")
    return [line for line in out.splitlines() if line[:2] in ("??", "!!") or line[1] != " "]


@pytest.mark.parametrize("name", sorted(CHANGES))
async def test_staging_by_name_is_the_whole_tree_add(repo: Path, wt_root: Path,
                                                     name: str) -> None:
    _seed(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    change, exact = CHANGES[name]
    change(wt)
    opts = await worktree_git(wt, timeout_s=30)
    git_dir = opts[opts.index("--git-dir") + 1]
    index_file = Path(git_dir) / "index"
    saved = index_file.read_bytes()

    with record_git_calls() as calls:
        staged = await stage_change(wt, opts, timeout_s=30, what="staging")
    by_name = _index(wt, opts)
    left = _status(wt, opts)
    assert staged.exact is exact, (calls.commands, left)
    if exact:
        assert left == [], left  # exactly the index: nothing else on disk
    elif exact is False:
        assert left
    if exact is not None and name != "nothing":
        add = [c for c in calls.commands if "add" in c]
        assert add and "--literal-pathspecs" in add[0], calls.commands  # by name

    index_file.write_bytes(saved)  # the same worktree, staged the whole-tree way
    await stage_all(wt, opts, timeout_s=30, what="staging")
    assert _index(wt, opts) == by_name
    await run_repo.remove_worktree(wt)


def test_the_excludes_are_the_ones_staging_knows() -> None:
    # Every COMMIT_EXCLUDES pattern is one the by-name staging decides exactly; a new form
    # would turn naming off (here: fail, so the module learns it).
    assert _RULES is not None, COMMIT_EXCLUDES
    dirs, suffixes = _RULES
    assert len(dirs) + len(suffixes) == len(COMMIT_EXCLUDES)
    for folder in dirs:
        assert excluded(f"a/{folder}/b.py") is True
        assert excluded(f"a/{folder}") is None
    for suffix in suffixes:
        assert excluded(f"a/b{suffix}") is True
        assert excluded(f"a/b{suffix}/c.py") is None
    assert excluded("a/b.py") is False


@pytest.mark.parametrize("nested", [False, True])
async def test_the_staged_listing_verification_derives_is_the_index(
        repo: Path, wt_root: Path, nested: bool) -> None:
    # The listing of the index after staging is the start commit's changed by what the diff
    # reports (no `ls-files`): it must be exactly what git lists, for every kind of entry.
    from buildrunnerd.workspace import verify
    from buildrunnerd.workspace._tree import staged_tree

    _seed(repo)
    run_repo = await prepare_run_repo(repo, "r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "app.py").unlink()
    (wt / "pkg" / "core.py").chmod(0o755)
    (wt / "pkg" / "link.py").symlink_to("core.py")
    (wt / "deep" / "er").mkdir(parents=True)
    (wt / "deep" / "er" / "new.py").write_text("N = 1\n")
    (wt / "README.md").write_text("# changed\n")
    if nested:
        _nested_repo(wt)  # staged the whole-tree way: a gitlink
    await verify(wt, [], test_cmd="true")
    opts = await worktree_git(wt, timeout_s=30)
    with record_git_calls() as calls:
        derived = await staged_tree(wt, opts, timeout_s=30)
    assert len(calls) == 0  # the shared listing, as verification left it
    listed = {}
    for line in _index(wt, opts).splitlines():
        meta, _, name = line.partition("\t")
        mode, sha, _stage = meta.split(" ")
        listed[name] = (mode, sha)
    assert {p: (e.mode, e.sha) for p, e in derived.items()} == listed
    assert listed["pkg/link.py"][0] == "120000" and listed["pkg/core.py"][0] == "100755"
    assert ("sub" in listed) is nested and (not nested or listed["sub"][0] == "160000")
    assert "app.py" not in listed
    await run_repo.remove_worktree(wt)
