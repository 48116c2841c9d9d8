"""Reading what a batch will commit from git: raw blobs, limits, a computed git dir."""

from __future__ import annotations

from pathlib import Path

from buildrunnerd.workspace import (
    RunRepo,
    StagedChange,
    prepare_run_repo,
    read_staged_changes,
    scan_commit,
)

from ._helpers import run_git

AWS_KEY = "AKIA" + "Z7Q4XK2M9PLW3JHV"


async def staged(wt: Path, base: str, *, git_options: list[str] | None = None,
                 max_blob_bytes: int = 1 << 24, max_total_bytes: int = 1 << 28
                 ) -> dict[str, StagedChange]:
    out: dict[str, StagedChange] = {}
    async for group in read_staged_changes(wt, base, timeout_s=30, git_options=git_options or [],
                                           max_blob_bytes=max_blob_bytes,
                                           max_total_bytes=max_total_bytes):
        out.update({c.path: c for c in group})
    return out


async def make_worktree(repo: Path, wt_root: Path) -> tuple[RunRepo, Path]:
    (repo / "old.txt").write_text("line 1\n")
    (repo / "gone.txt").write_text("bye\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "files")
    run_repo = await prepare_run_repo(repo, "r1")
    return run_repo, await run_repo.add_worktree(wt_root, "b1")


async def test_new_changed_and_binary_files_as_raw_blobs(repo: Path, wt_root: Path) -> None:
    run_repo, wt = await make_worktree(repo, wt_root)
    (wt / "old.txt").write_text("line 1\nline 2\n")
    (wt / "gone.txt").unlink()
    (wt / "new dir").mkdir()
    (wt / "new dir" / "ünïcode name.bin").write_bytes(b"\x00\xff\x00" + AWS_KEY.encode())
    (wt / ".gitattributes").write_text("* -diff binary\n")
    run_git(wt, "add", "-A")
    changes = await staged(wt, run_repo.base_commit)
    assert sorted(changes) == [".gitattributes", "new dir/ünïcode name.bin", "old.txt"]
    assert changes["old.txt"].new == b"line 1\nline 2\n"
    assert changes["old.txt"].old == b"line 1\n"
    assert changes["new dir/ünïcode name.bin"].new == b"\x00\xff\x00" + AWS_KEY.encode()
    assert changes["new dir/ünïcode name.bin"].old is None


async def test_blobs_over_the_limits_are_named_not_read(repo: Path, wt_root: Path) -> None:
    run_repo, wt = await make_worktree(repo, wt_root)
    (wt / "big.bin").write_bytes(b"x" * 5000)
    (wt / "a.txt").write_text("small\n")
    (wt / "b.txt").write_text("small too\n")
    run_git(wt, "add", "-A")
    changes = await staged(wt, run_repo.base_commit, max_blob_bytes=4096)
    assert changes["big.bin"].new is None and changes["big.bin"].size_bytes == 5000
    assert changes["a.txt"].new == b"small\n"
    [finding] = scan_commit(changes.values())
    assert (finding.kind, finding.file) == ("unscanned_file", "big.bin")
    # Past the total (a.txt's 6 bytes fit in 10), files are named but not read either.
    capped = await staged(wt, run_repo.base_commit, max_total_bytes=10)
    assert [p for p, c in sorted(capped.items()) if c.new is None] == ["b.txt", "big.bin"]


async def test_a_rewritten_dot_git_file_does_not_redirect_a_computed_git_dir(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    run_repo, wt = await make_worktree(repo, wt_root)
    git_dir = Path(run_git(wt, "rev-parse", "--absolute-git-dir").strip())
    (wt / "k.py").write_text(f"K = '{AWS_KEY}'\n")
    run_git(wt, "add", "-A")
    # The model points the worktree's .git at a repository of its own.
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    run_git(decoy, "init", "-q")
    (wt / ".git").write_text(f"gitdir: {decoy / '.git'}\n")
    changes = await staged(wt, run_repo.base_commit,
                           git_options=["--git-dir", str(git_dir), "--work-tree", str(wt)])
    assert list(changes) == ["k.py"]
    assert [f.kind for f in scan_commit(changes.values())] == ["aws_access_key"]
