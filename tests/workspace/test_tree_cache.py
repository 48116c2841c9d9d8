"""Verification remembers blobs and their tests by blob id: a batch re-reads only what changed,
and a changed file is never answered from the memory of its old content."""

from __future__ import annotations

from pathlib import Path

from buildrunnerd.workspace._protect import protected_tests
from buildrunnerd.workspace._tree import _BlobCache, commit_tree, read_blobs

from ._helpers import run_git


def _commit(repo: Path, files: dict[str, str]) -> str:
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "change")
    return run_git(repo, "rev-parse", "HEAD").strip()


async def test_a_changed_test_file_is_read_and_analysed_again(repo: Path) -> None:
    first = _commit(repo, {"tests/test_a.py": "def test_one():\n    assert 1 + 1 == 2\n"})
    tree = await commit_tree(repo, first, timeout_s=30)
    blobs = await read_blobs(repo, tree.values(), timeout_s=30)
    assert [t.name for t in protected_tests(tree, blobs)] == ["test_one"]
    # The same file with another test: a new blob id, so nothing remembered applies to it.
    second = _commit(repo, {"tests/test_a.py": "def test_one():\n    assert 1 + 1 == 2\n\n\n"
                                               "def test_two():\n    assert 2 * 2 == 4\n"})
    tree = await commit_tree(repo, second, timeout_s=30)
    blobs = await read_blobs(repo, tree.values(), timeout_s=30)
    assert blobs.text(tree["tests/test_a.py"]) == (repo / "tests/test_a.py").read_text()
    assert [t.name for t in protected_tests(tree, blobs)] == ["test_one", "test_two"]
    # Remembered content is still bounded by the caller's limit.
    small = await read_blobs(repo, [tree["tests/test_a.py"]], timeout_s=30, max_bytes=10)
    assert small.raw(tree["tests/test_a.py"]) is None


async def test_remembered_blobs_answer_without_the_repository(repo: Path, tmp_path: Path
                                                              ) -> None:
    # Content-addressed: once read, a blob id's content does not depend on where it is asked
    # (a repository without the object gets it from memory; the id is its content's hash).
    head = _commit(repo, {"tests/test_b.py": "def test_b():\n    assert True is not False\n"})
    tree = await commit_tree(repo, head, timeout_s=30)
    await read_blobs(repo, tree.values(), timeout_s=30)
    empty = tmp_path / "empty"
    empty.mkdir()
    run_git(empty, "init", "-q")
    again = await read_blobs(empty, [tree["tests/test_b.py"]], timeout_s=30)
    assert again.text(tree["tests/test_b.py"]) == (repo / "tests/test_b.py").read_text()


def test_the_blob_memory_is_bounded() -> None:
    cache = _BlobCache(max_bytes=8_000)
    for i in range(1_000):
        cache.put(f"{i:040x}", b"x" * 100)
    assert len(cache._new) + len(cache._old) <= 8_000 // 100
    assert cache.get(f"{999:040x}") == b"x" * 100
    cache.put("big", b"y" * 2_000)  # over an eighth of the bound: never kept
    assert cache.get("big") is None
