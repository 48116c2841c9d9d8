"""Both ways of making a real (non fast-forward) merge: in the object store with
``git merge-tree --write-tree`` (git >= 2.38) and the private merge worktree fallback.

The path is forced with the module's switch ``_USE_MERGE_TREE`` (the version probe is the outer
edge); the probe itself is tested against the installed git.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildrunnerd.workspace import RunRepo, _repo, prepare_run_repo

from ._helpers import names, run_git

PATHS = [pytest.param(True, id="merge-tree"), pytest.param(False, id="worktree")]


@pytest.fixture(params=PATHS)
def use_merge_tree(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(_repo, "_USE_MERGE_TREE", request.param)
    return bool(request.param)


@pytest.fixture
def unprobed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_repo, "_USE_MERGE_TREE", None)
    yield


async def _two_batches(
    repo: Path, wt_root: Path, a_files: dict[str, str], b_files: dict[str, str]
) -> tuple[RunRepo, Path, Path]:
    """Two worktrees of the same head; a's files are committed and merged (fast-forward)."""
    run_repo = await prepare_run_repo(repo, "r1")
    a = await run_repo.add_worktree(wt_root, "a")
    b = await run_repo.add_worktree(wt_root, "b")
    for wt, files in ((a, a_files), (b, b_files)):
        for name, text in files.items():
            (wt / name).parent.mkdir(parents=True, exist_ok=True)
            (wt / name).write_text(text)
    first = await run_repo.commit_and_merge(a, "batch a")
    assert first.merged and first.fast_forward
    return run_repo, a, b


async def test_clean_merge_makes_a_merge_commit_with_both_parents(
    repo: Path, wt_root: Path, use_merge_tree: bool
) -> None:
    run_repo, _a, b = await _two_batches(
        repo, wt_root, {"a.py": "A = 1\n", "app.py": "def hello() -> str:\n    return 'a'\n"},
        {"pkg/b.py": "B = 2\n"},
    )
    head_after_a = await run_repo.head()
    result = await run_repo.commit_and_merge(b, "buildrunner r1 B002: T2\n\nbody\n")
    assert result.merged and not result.fast_forward and result.conflict_files == []
    assert result.commit == await run_repo.head()
    batch_commit = run_git(b, "rev-parse", "HEAD").strip()
    parents = run_git(repo, "rev-list", "--parents", "-n1", result.commit).split()
    assert parents[1:] == [head_after_a, batch_commit]
    # The combined content of both batches.
    assert run_git(repo, "ls-tree", "-r", "--name-only", result.commit).split() == [
        "README.md", "a.py", "app.py", "pkg/b.py"]
    assert run_git(repo, "show", f"{result.commit}:app.py").endswith("return 'a'\n")
    assert run_git(repo, "show", f"{result.commit}:pkg/b.py") == "B = 2\n"
    log = run_git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", result.commit)
    assert log.strip() == ("BuildRunner <buildrunner@localhost>|"
                           "BuildRunner <buildrunner@localhost>|Merge buildrunner r1 B002: T2")
    # No merge worktree left behind, whichever path merged.
    assert names(wt_root) == ["a", "b"]


async def test_conflict_reports_the_files_sorted_and_leaves_the_branch(
    repo: Path, wt_root: Path, use_merge_tree: bool
) -> None:
    run_repo, _a, b = await _two_batches(
        repo, wt_root,
        {"app.py": "X = 'a'\n", "sub/z.py": "Z = 'a'\n", "c.py": "C = 'a'\n"},
        {"app.py": "X = 'b'\n", "sub/z.py": "Z = 'b'\n", "ok.py": "OK = 1\n"},
    )
    head_after_a = await run_repo.head()
    result = await run_repo.commit_and_merge(b, "batch b")
    assert not result.merged
    assert result.conflict_files == ["app.py", "sub/z.py"]
    assert result.commit == run_git(b, "rev-parse", "HEAD").strip()
    assert await run_repo.head() == head_after_a
    assert names(wt_root) == ["a", "b"]


async def test_merge_commit_is_not_published_when_the_branch_moved(
    repo: Path, wt_root: Path, use_merge_tree: bool
) -> None:
    # The compare-and-swap: a merge made against a head the branch has since left is refused.
    run_repo, a, b = await _two_batches(repo, wt_root, {"a.py": "A = 1\n"}, {"b.py": "B = 2\n"})
    head = await run_repo.head()
    run_git(b, "add", "-A")
    run_git(b, "commit", "-q", "-m", "batch b")
    commit = run_git(b, "rev-parse", "HEAD").strip()
    if use_merge_tree:
        merged = await run_repo._merge_in_objects(commit, head, "batch b")
    else:
        merged = await run_repo._merge(b, commit, head, "batch b")
    assert merged.merged and merged.commit is not None
    # Someone else moves the branch in between.
    (a / "late.py").write_text("L = 1\n")
    run_git(a, "add", "-A")
    run_git(a, "commit", "-q", "-m", "late")
    moved = run_git(a, "rev-parse", "HEAD").strip()
    run_git(repo, "update-ref", run_repo.ref, moved, head)
    assert not await run_repo._move_branch(merged.commit, head)
    assert await run_repo.head() == moved


async def test_version_probe_matches_installed_git(repo: Path, unprobed: None) -> None:
    found = re.search(r"(\d+)\.(\d+)", run_git(repo, "version"))
    assert found is not None
    expected = (int(found[1]), int(found[2])) >= _repo.MERGE_TREE_MIN_VERSION
    assert await _repo._merge_tree_supported(repo, 10.0) is expected
    assert _repo._USE_MERGE_TREE is expected  # cached for the process
