"""How many git processes one batch starts (issue 13: a batch's cost follows its change, not
the tree), counted by our own git runner on a real repository. The checks of a batch share one
listing of the index and of the start commit; the listing never outlives a change of the index
it lists."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.plan._model import Task
from buildrunnerd.workspace import ChangeKind, GitWorkspace, prepare_run_repo
from buildrunnerd.workspace._git import GitCalls, record_git_calls
from buildrunnerd.workspace._tree import commit_tree, staged_tree
from buildrunnerd.workspace._worktree import worktree_git

from ._helpers import run_git, task

CONFIG = VerifyConfig()

# One batch after the first (a pooled worktree, a fast-forward merge): acquire 3 (branch
# head; a `checkout-index` of the batch's files, which the list of what changed since the
# worktree's clean point holds: workspace/_reuse.py; HEAD moved; no clean, no diff-files, no
# read-tree: the index already holds the head's tree, the last batch's own), verify 5 to 7 (a
# status naming what to stage, the `add` of those names, the diff that also lists the staged
# entries, the tree written, a status after the tests, two blob reads unless the blobs are
# cached, and a `checkout-index` of the files the batch changed, so that its test run, taken
# as the branch's check, ran on them as a checkout writes them: workspace/_touched.py), commit
# and merge 2 (`commit-tree` of the verified tree, the branch's compare-and-swap), the file
# monitor's watch 0 (the head's folders from the tree's shape the reset computed; was one
# `ls-tree -r -d`, not counted here before: 14 with it). Was 31, then 20, 15, 14, 13; 14 with
# the `checkout-index`, 13 with the reuse driven by the list (was `clean` and `diff-files`).
# (The acquire and verification each also run one `find`, not counted here: what changed
# since the clean point.)
MAX_CALLS_PER_BATCH = 13


def _grow(repo: Path, files: int) -> None:
    for i in range(files):
        folder = repo / f"pkg{i // 50}"
        folder.mkdir(exist_ok=True)
        (folder / f"m{i}.py").write_text(f"X{i} = {i}\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "more files")


async def _ignore_change(kind: ChangeKind, path: str) -> None:
    return None


async def _batches(repo: Path, root: Path, count: int) -> list[GitCalls]:
    tasks = [task(f"t{i}", f"f{i}.py") for i in range(count)]
    run_repo = await prepare_run_repo(repo, "r1")
    ws = GitWorkspace(run_repo, run_id="r1", worktree_root=root, project_root=repo,
                      base_commit=run_repo.base_commit, test_cmd=None, plan_tasks=tasks,
                      spec_path=None)
    counted: list[GitCalls] = []
    try:
        for i, t in enumerate(tasks):
            with record_git_calls() as calls:
                path, head = await ws.acquire()
                async with ws.watch(path, [t], _ignore_change):
                    (path / f"f{i}.py").write_text(f"def f() -> int:\n    return {i}\n")
                report = await ws.verify(path, [t], head=head, config=CONFIG,
                                         confinement=None)
                assert report.passed, report
                done = await ws.integrate(path, t.id, report, head=head, batch_id=f"b{i}",
                                          config=CONFIG, confinement=None)
                assert done.merged and done.commit is not None
                await ws.release(path)
            counted.append(calls)
    finally:
        await ws.close()
    return counted


async def test_a_batch_starts_a_bounded_number_of_git_processes(
        repo: Path, wt_root: Path) -> None:
    first, *rest = await _batches(repo, wt_root, 3)
    for calls in rest:
        names = calls.subcommands()
        assert len(calls) <= MAX_CALLS_PER_BATCH, names
        # The start commit was the last batch's own commit: its tree is already listed.
        assert "ls-tree" not in names, names
        # The index is never listed whole: after the reset it is the head's listing, after
        # staging the start commit's changed by what the diff reports (was one listing per
        # check: 5, with `ls-files --others`; then 1 to 3).
        assert "ls-files" not in names and names.count("diff-index") <= 2, names
        # Staged once, for verification, by name: the scan after the tests stages again only
        # when a status shows the test run left something to stage; the commit stages nothing.
        assert names.count("add") == 1, names
        [add] = [c for c in calls.commands if "add" in c]
        assert "--literal-pathspecs" in add, add
        # The reused worktree is put back from the list of what changed since its clean
        # point: no whole-tree reset, no status, no `clean`, no `diff-files` (was: reset
        # --hard, clean, status; then status, clean, read-tree; then clean, diff-files), and
        # no read-tree, since the head is the tree the batch committed, which the index
        # already holds. Verification: one status before staging (what to stage, and whether
        # the tests will see only the staged tree), one after the tests (was: two, and a
        # whole-tree `add -A`).
        assert "reset" not in names and names.count("status") == 2, names
        assert "clean" not in names and "diff-files" not in names, names
        assert "read-tree" not in names, names
        assert names.count("commit-tree") == 1 and "commit" not in names, names
    assert "ls-tree" in first.subcommands()  # the run's base commit is read once


async def test_the_count_does_not_grow_with_the_tree(tmp_path: Path) -> None:
    from ._helpers import make_repo

    small = make_repo(tmp_path / "small")
    large = make_repo(tmp_path / "large")
    _grow(large, 400)
    small_calls = await _batches(small, tmp_path / "wt-small", 2)
    large_calls = await _batches(large, tmp_path / "wt-large", 2)
    # The same calls (give or take the racy refresh), whatever the tree holds.
    assert abs(len(small_calls[-1]) - len(large_calls[-1])) <= 1
    assert len(large_calls[-1]) <= MAX_CALLS_PER_BATCH


async def test_the_shared_index_listing_follows_every_change_of_the_index(
        repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    path = await run_repo.acquire_worktree(wt_root)
    opts = await worktree_git(path, timeout_s=30)
    listed = await staged_tree(path, opts, timeout_s=30)
    with record_git_calls() as calls:
        assert await staged_tree(path, opts, timeout_s=30) == listed
    assert len(calls) == 0  # shared
    # Another git writes the index (as a hostile process with access to it would): the
    # listing is read again, never handed out stale.
    (path / "new.py").write_text("N = 1\n")
    git_dir = run_git(path, "rev-parse", "--absolute-git-dir").strip()
    run_git(path, f"--git-dir={git_dir}", f"--work-tree={path}", "add", "new.py")
    with record_git_calls() as calls:
        after = await staged_tree(path, opts, timeout_s=30)
    assert len(calls) == 1 and "new.py" in after and "new.py" not in listed
    # A file replaced in the worktree (a symlink to elsewhere) does not change the listing:
    # it is the index, as the daemon's git staged it.
    (path / "app.py").unlink()
    (path / "app.py").symlink_to(repo / "README.md")
    assert await staged_tree(path, opts, timeout_s=30) == after
    await run_repo.remove_worktree(path)


async def test_a_listed_commit_is_the_tree_git_lists(repo: Path, wt_root: Path) -> None:
    calls = await _batches(repo, wt_root, 2)
    assert calls
    head = run_git(repo, "rev-parse", "refs/heads/buildrunner/r1").strip()
    with record_git_calls() as none:
        shared = await commit_tree(repo, head, timeout_s=30)
    assert len(none) == 0  # the last batch's fast-forward: listed when it was staged
    listed = {}
    for record in run_git(repo, "ls-tree", "-r", "-z", "--full-tree", head).split("\0"):
        if record:
            meta, _, name = record.partition("\t")
            mode, _kind, sha = meta.split(" ")
            listed[name] = (mode, sha)
    assert {p: (e.mode, e.sha) for p, e in shared.items()} == listed


@pytest.mark.parametrize("secret_in_checked_file", [True, False])
async def test_the_secret_scan_still_reads_every_changed_file(
        repo: Path, wt_root: Path, secret_in_checked_file: bool) -> None:
    # The scan takes blobs the checks read from the cache: a secret in a named (checked) file
    # and in a file no check reads are both found.
    t1: Task = task("t1", "feature.py")
    run_repo = await prepare_run_repo(repo, "r1")
    ws = GitWorkspace(run_repo, run_id="r1", worktree_root=wt_root, project_root=repo,
                      base_commit=run_repo.base_commit, test_cmd=None, plan_tasks=[t1],
                      spec_path=None)
    path, head = await ws.acquire()
    key = "AKIA" + "Z7Q4XK2M9PLW3JHV"
    (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    target = "feature.py" if secret_in_checked_file else "notes.txt"
    with (path / target).open("a") as fh:
        fh.write(f"AWS_KEY = '{key}'\n")
    report = await ws.verify(path, [t1], head=head, config=CONFIG, confinement=None)
    failed = [c for c in report.checks if c.name == "secrets" and not c.passed]
    assert failed and failed[0].file == target, report
    await ws.release(path, reuse=False)
    await ws.close()


async def test_a_merge_is_listed_from_its_change_and_is_the_tree_git_lists(
        repo: Path, wt_root: Path) -> None:
    a, b = task("a", "a.py"), task("b", "b.py")
    run_repo = await prepare_run_repo(repo, "r1")
    ws = GitWorkspace(run_repo, run_id="r1", worktree_root=wt_root, project_root=repo,
                      base_commit=run_repo.base_commit, test_cmd=None, plan_tasks=[a, b],
                      spec_path=None)
    first, first_head = await ws.acquire()
    second, second_head = await ws.acquire()
    (first / "a.py").write_text("A = 1\n")
    (second / "b.py").write_text("B = 1\n")
    (second / "README.md").write_text("# project, changed\n")
    done = []
    for path, t, head in ((first, a, first_head), (second, b, second_head)):
        report = await ws.verify(path, [t], head=head, config=CONFIG, confinement=None)
        assert report.passed, report
        with record_git_calls() as integrating:
            done.append(await ws.integrate(path, t.id, report, head=head, batch_id=t.id,
                                           config=CONFIG, confinement=None))
    # The branch check (nothing to test: it looks for tests in the merge's tree) listed the
    # merge from its change: its parent was the first batch's, already listed.
    assert "diff-tree" in integrating.subcommands(), integrating.commands
    assert "ls-tree" not in integrating.subcommands(), integrating.commands
    merge = done[1].commit
    assert done[0].merged and done[1].merged and merge is not None
    assert run_git(repo, "rev-list", "--parents", "-n1", merge).count(" ") == 2  # a merge
    with record_git_calls() as calls:
        shared = await commit_tree(repo, merge, timeout_s=30)
    assert len(calls) == 0  # shared
    listed = {}
    for record in run_git(repo, "ls-tree", "-r", "-z", "--full-tree", merge).split("\0"):
        if record:
            meta, _, name = record.partition("\t")
            mode, _kind, sha = meta.split(" ")
            listed[name] = (mode, sha)
    assert {p: (e.mode, e.sha) for p, e in shared.items()} == listed
    assert {"a.py", "b.py", "app.py"} <= set(shared)
    await ws.release(first)
    await ws.release(second)
    await ws.close()


def _ls_files(path: Path) -> dict[str, tuple[str, str]]:
    git_dir = run_git(path, "rev-parse", "--absolute-git-dir").strip()
    listed = {}
    for record in run_git(path, f"--git-dir={git_dir}", f"--work-tree={path}", "ls-files",
                          "-s", "-z").split("\0"):
        if record:
            meta, _, name = record.partition("\t")
            mode, sha, _stage = meta.split(" ")
            listed[name] = (mode, sha)
    return listed


async def test_a_staged_index_is_listed_from_its_change_and_is_what_git_lists(
        repo: Path, wt_root: Path) -> None:
    # After the reset the index holds the head's tree (known): the batch's staging is listed
    # as that tree plus `diff-index --cached` (the size of the change), never `ls-files` of
    # the whole index, and it is exactly what `ls-files` shows: added, changed, deleted,
    # re-moded, a file made a link and a folder, a new nested repository (a gitlink).
    from buildrunnerd.workspace._repo import stage_all

    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text("# guide\n")
    (repo / "tool.sh").write_text("#!/bin/sh\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "more")
    run_repo = await prepare_run_repo(repo, "r1")
    first = await run_repo.acquire_worktree(wt_root)
    (first / "x.py").write_text("X = 1\n")
    assert (await run_repo.commit_and_merge(first, "first")).merged
    await run_repo.release_worktree(first)
    path = await run_repo.acquire_worktree(wt_root)  # reused: the index is the head's tree
    assert path == first
    opts = await worktree_git(path, timeout_s=30)
    (path / "new.py").write_text("N = 1\n")
    (path / "app.py").write_text("def hello() -> str:\n    return 'changed'\n")
    (path / "x.py").unlink()
    (path / "tool.sh").chmod(0o755)
    (path / "README.md").unlink()
    (path / "README.md").symlink_to("app.py")
    (path / "docs" / "guide.md").unlink()
    (path / "docs" / "guide.md").mkdir()
    (path / "docs" / "guide.md" / "inner.md").write_text("inner\n")
    nested = path / "vendored"
    nested.mkdir()
    (nested / "v.py").write_text("V = 1\n")
    run_git(nested, "init", "-q")
    run_git(nested, "add", "-A")
    run_git(nested, "-c", "user.name=m", "-c", "user.email=m@x", "commit", "-q", "-m", "v")
    await stage_all(path, opts, timeout_s=30, what="staging")
    with record_git_calls() as calls:
        listed = await staged_tree(path, opts, timeout_s=30)
    assert calls.subcommands() == ["diff-index"], calls.commands
    assert {p: (e.mode, e.sha) for p, e in listed.items()} == _ls_files(path)
    assert listed["vendored"].mode == "160000" and "x.py" not in listed
    assert listed["README.md"].mode == "120000" and "docs/guide.md/inner.md" in listed
    await run_repo.release_worktree(path, reuse=False)
    await run_repo.close()


def _index_info(path: Path, info: str) -> None:
    """``git update-index --index-info`` in the worktree's own git directory (test set-up)."""
    git_dir = run_git(path, "rev-parse", "--absolute-git-dir").strip()
    subprocess.run(["git", f"--git-dir={git_dir}", f"--work-tree={path}", "update-index",
                    "--index-info"], input=info, text=True, check=True, cwd=path)


async def test_an_unmerged_index_is_listed_whole(repo: Path, wt_root: Path) -> None:
    # Conflicting stages are not a change diff-index can describe entry by entry: the index
    # is listed whole, as git lists it.
    run_repo = await prepare_run_repo(repo, "r1")
    first = await run_repo.acquire_worktree(wt_root)
    (first / "x.py").write_text("X = 1\n")
    assert (await run_repo.commit_and_merge(first, "first")).merged
    await run_repo.release_worktree(first)
    path = await run_repo.acquire_worktree(wt_root)
    opts = await worktree_git(path, timeout_s=30)
    blob = run_git(path, "hash-object", "-w", "app.py").strip()
    _index_info(path, f"0 {'0' * 40}\tapp.py\n100644 {blob} 1\tapp.py\n"
                      f"100644 {blob} 2\tapp.py\n")
    with record_git_calls() as calls:
        listed = await staged_tree(path, opts, timeout_s=30)
    assert "ls-files" in calls.subcommands(), calls.commands
    assert {p: (e.mode, e.sha) for p, e in listed.items()} == _ls_files(path)
    await run_repo.release_worktree(path, reuse=False)
    await run_repo.close()
