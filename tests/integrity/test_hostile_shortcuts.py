"""A hostile batch against the shortcuts that make a git batch's work follow its change
(issue 13): staging by name from one ``status``, the listings read from the diff, the
reuse of the batch's own test run as the run branch's check, the reset of a reused worktree.

Real git, the real workspace and the real sandbox (the test command runs confined); what the
model would do in its worktree is done here directly, as its bash tool would. Each attack
ends with what a user would notice: what the run branch holds, whether its tests pass in a
clean checkout, what the next batch's worktree holds. What a checkout would not hold (a
mode, an mtime, an empty folder, a FIFO, a ``.git`` below the top) is put back by ctime
before the batch's test run is taken as the branch's check and at every reuse
(``workspace/_touched.py``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.workspace import GitWorkspace, RunRepo, prepare_run_repo
from buildrunnerd.workspace._repo import stage_all
from buildrunnerd.workspace._staging import stage_change
from buildrunnerd.workspace._worktree import worktree_git
from tests.workspace._helpers import run_git, task

pytestmark = pytest.mark.timeout(120)

AWS_KEY = "AKIA" + "Z7Q4XK2M9PLW3JHV"  # split: the repository's own scan must not flag it
# The test command is the user's (trusted); what it imports is the batch's.
CHECK = ("python3 -c 'import sys; sys.path.insert(0, \".\"); import calc; "
         "assert calc.add(1, 2) == 3, calc.add(1, 2)'")


async def _workspace(repo: Path, wt_root: Path, *files: str,
                     test_cmd: str | None = None) -> tuple[RunRepo, GitWorkspace]:
    run_repo = await prepare_run_repo(repo, "r1")
    ws = GitWorkspace(run_repo, run_id="r1", worktree_root=wt_root, project_root=repo,
                      base_commit=run_repo.base_commit, test_cmd=test_cmd,
                      plan_tasks=[task("t1", *files)], spec_path=None)
    return run_repo, ws


def _failed(report: VerificationReport) -> list[tuple[str, str]]:
    return [(c.name, c.message) for c in report.checks if not c.passed]


# --- names git and the daemon read differently -------------------------------------------


async def test_two_undecodable_names_cannot_hide_a_secret(repo: Path, wt_root: Path) -> None:
    # git's output is read as UTF-8 with bad bytes replaced: notes\xfe.txt and notes\xff.txt
    # were one path to the checks, and the secret scan read only the last of the two blobs.
    run_repo, ws = await _workspace(repo, wt_root, "feature.py")
    path, head = await ws.acquire()
    (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    (path / os.fsdecode(b"notes\xfe.txt")).write_text(f"key = '{AWS_KEY}'\n")
    (path / os.fsdecode(b"notes\xff.txt")).write_text("harmless\n")
    report = await ws.verify(path, [task("t1", "feature.py")], head=head,
                             config=VerifyConfig(), confinement=None)
    assert not report.passed
    failed = _failed(report)
    assert ("files", "notes\\xfe.txt: the file name is not valid UTF-8, so verification "
            "cannot check this file apart from others (it reads names as UTF-8); rename it "
            "to a UTF-8 name") in failed, failed
    assert any(name == "files" and message.startswith("notes\\xff.txt")
               for name, message in failed), failed
    await ws.release(path, reuse=False)
    await ws.close()


async def test_an_undecodable_name_beside_its_replacement_character(
        repo: Path, wt_root: Path) -> None:
    # A real U+FFFD in one name, a bad byte in the other: the same string once decoded.
    run_repo, ws = await _workspace(repo, wt_root, "feature.py")
    path, head = await ws.acquire()
    (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    (path / os.fsdecode(b"cfg\xff.py")).write_text(f"KEY = '{AWS_KEY}'\n")
    (path / "cfg\ufffd.py").write_text("KEY = None\n")
    report = await ws.verify(path, [task("t1", "feature.py")], head=head,
                             config=VerifyConfig(), confinement=None)
    assert not report.passed
    assert [m for n, m in _failed(report) if n == "files"] == [
        "cfg\\xff.py: the file name is not valid UTF-8, so verification cannot check this "
        "file apart from others (it reads names as UTF-8); rename it to a UTF-8 name"]
    await ws.release(path, reuse=False)
    await ws.close()


# Names that are pathspec magic, options or quoting to git when not taken literally. Staged
# by name, each must stage exactly what the whole-tree ``add -A`` stages: no byte-code cache
# (a glob ``*`` would match pkg/__pycache__), nothing excluded by ``:!``/``:(exclude)``.
HOSTILE_NAMES = [
    "*", "?", "[ab]", "*.pyc.py", ":(glob)**", ":!app.py", ":(exclude)README.md",
    ":(top)x", ":/x", "-n", "--all", "-A", "line\nbreak.py", "tab\tname.py", 'quote".py',
    "back\\slash.py", "trailing space ", " leading", "semi;colon", "$(touch PWNED)",
    "a" * 250 + ".py", "deep/" * 40 + "leaf.py", "ÄÖÜ/ünï.py", "x.pyc/inner.py",
]


async def test_pathspec_magic_and_odd_names_stage_as_the_whole_tree_add(
        repo: Path, wt_root: Path) -> None:
    run_repo = await prepare_run_repo(repo, "r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "pkg" / "__pycache__").mkdir(parents=True)
    (wt / "pkg" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"\0" * 16)
    for name in HOSTILE_NAMES:
        target = wt / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"# {name!r}\n")
    (wt / "app.py").write_text("changed = True\n")
    opts = await worktree_git(wt, timeout_s=30)
    git_dir = opts[opts.index("--git-dir") + 1]
    index_file = Path(git_dir) / "index"
    saved = index_file.read_bytes()

    def listing() -> str:
        return run_git(wt, f"--git-dir={git_dir}", f"--work-tree={wt}", "ls-files", "-s",
                       "-z")

    await stage_change(wt, opts, timeout_s=30, what="staging")
    by_name = listing()
    index_file.write_bytes(saved)
    await stage_all(wt, opts, timeout_s=30, what="staging")
    assert listing() == by_name
    staged = [r.partition("\t")[2] for r in by_name.split("\0") if r]
    assert "pkg/__pycache__/core.cpython-311.pyc" not in staged
    assert {"app.py", "README.md", *HOSTILE_NAMES} <= set(staged)
    assert not (wt / "PWNED").exists() and not (wt.parent / "PWNED").exists()
    await run_repo.remove_worktree(wt)


GEOMETRY = ("def area(w, h):\n    return w * h\n\n\n"
            "def perimeter(w, h):\n    return 2 * (w + h)\n")
# The model's placeholders: the stubs check must fail on both (the test asserts it does).
STUBBED = "def area(w, h):\n    pass\n\n\ndef perimeter(w, h):\n    raise NotImplementedError\n"


@pytest.mark.parametrize("name", ['geo"metry.py', "geo\tmetry.py", "geo\\metry.py",
                                  "geo\nmetry.py", "geo\x01metry.py"])
async def test_placeholders_in_a_file_whose_name_git_quotes(repo: Path, wt_root: Path,
                                                            name: str) -> None:
    # The patch quotes such a name (`+++ "b/geo\"metry.py"`): its added lines were nobody's.
    run_repo, ws = await _workspace(repo, wt_root, "feature.py")
    path, head = await ws.acquire()
    (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    (path / name).write_text(STUBBED)
    report = await ws.verify(path, [task("t1", "feature.py")], head=head,
                             config=VerifyConfig(), confinement=None)
    stubs = [m for n, m in _failed(report) if n == "stubs"]
    assert [m.split(":")[0] for m in stubs] == [name, name], stubs
    await ws.release(path, reuse=False)
    await ws.close()


@pytest.mark.parametrize("separator", ["\x0c", "\x1c", "\u2028", "\x85"])
async def test_a_line_break_python_splits_at_is_not_a_patch_header(
        repo: Path, wt_root: Path, separator: str) -> None:
    # str.splitlines() also splits at form feeds, U+2028 and others: an added line holding
    # one and then "+++ b/notes.txt" read as another file's header, and every later added
    # line of the file was that file's. Stopped twice: the stubs check compares a changed
    # file's functions whatever lines were added, and the patch is split at newlines only.
    (repo / "geometry.py").write_text(GEOMETRY)
    run_git(repo, "add", "geometry.py")
    run_git(repo, "commit", "-qm", "geometry")
    run_repo, ws = await _workspace(repo, wt_root, "feature.py")
    path, head = await ws.acquire()
    (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    (path / "geometry.py").write_text(f"NOTE = 1  # {separator}+++ b/notes.txt\n" + STUBBED)
    report = await ws.verify(path, [task("t1", "feature.py")], head=head,
                             config=VerifyConfig(), confinement=None)
    stubs = [m for n, m in _failed(report) if n == "stubs"]
    assert [m.split(":")[0] for m in stubs] == ["geometry.py", "geometry.py"], stubs
    await ws.release(path, reuse=False)
    await ws.close()


# pytest opens conftest.py and pytest.ini by name: on a case-insensitive file system (macOS's
# default) CONFTEST.PY and Pytest.ini are those files, so they are protected as they are.
CASE_FOLDED = {
    "CONFTEST.PY": ("import pytest\n\n\ndef pytest_collection_modifyitems(items):\n"
                    "    for item in items:\n        item.add_marker(pytest.mark.skip('x'))\n"),
    "tests/Conftest.py": "import os\n\nos._exit(0)\n",
    "Pytest.ini": "[pytest]\naddopts = -k nothing\n",
    "PyProject.toml": "[tool.pytest.ini_options]\naddopts = '--collect-only'\n",
}


@pytest.mark.parametrize("name", sorted(CASE_FOLDED))
async def test_a_test_setting_in_another_case_is_protected(repo: Path, wt_root: Path,
                                                           name: str) -> None:
    (repo / "tests").mkdir()
    (repo / "tests" / "test_app.py").write_text(
        "from app import hello\n\n\ndef test_hello():\n    assert hello() == 'hi'\n")
    run_git(repo, "add", "tests")
    run_git(repo, "commit", "-qm", "tests")
    run_repo, ws = await _workspace(repo, wt_root, "feature.py")
    path, head = await ws.acquire()
    (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    (path / name).write_text(CASE_FOLDED[name])
    report = await ws.verify(path, [task("t1", "feature.py")], head=head,
                             config=VerifyConfig(), confinement=None)
    assert not report.passed
    assert any(n == "protected" and name in m for n, m in _failed(report)), _failed(report)
    await ws.release(path, reuse=False)
    await ws.close()


# --- the batch's own test run taken as the run branch's check ------------------------------

CALC = (
    "import os\n\n_HERE = os.path.dirname(os.path.abspath(__file__))\n\n\n"
    "def add(a, b):\n    return a + b if {cond} else 0\n"
)


def _seed_calc(repo: Path) -> None:
    """The accepted calc.py passes the check: a branch the attack never reached passes it."""
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    run_git(repo, "add", "calc.py")
    run_git(repo, "commit", "-qm", "calc")


def _empty_folder(path: Path) -> None:
    (path / "magic").mkdir()  # `status` lists no empty folder


def _forged_mtime(path: Path) -> None:
    os.utime(path / "calc.py", (1, 1))  # staged with it: the index agrees


def _dotgit_in_a_new_folder(path: Path) -> None:
    (path / "pkg").mkdir()
    (path / "pkg" / "mod.py").write_text("MOD = 1\n")
    (path / "pkg" / ".git").write_text("not a repository\n")  # git never lists a .git


def _fifo(path: Path) -> None:
    os.mkfifo(path / "flag")  # `status` and `clean` skip what is not a file or a folder


def _mode_bits(path: Path) -> None:
    (path / "calc.py").chmod(0o600)  # git records only the executable bit


def _xattr(path: Path) -> None:
    os.setxattr(path / "calc.py", "user.flag", b"1")  # ext4, tmpfs (6.6+): the owner may


def _hard_link(path: Path) -> None:
    os.link(path / "calc.py", path / "calc_copy.py")  # committed as a copy: one link each


def _top_folder_mode(path: Path) -> None:
    path.chmod(0o700)


# trick -> (what calc.add needs to be right, what the batch leaves beside its files)
WORKTREE_ONLY: dict[str, tuple[str, Callable[[Path], None]]] = {
    "xattr": ("'user.flag' in os.listxattr(__file__)", _xattr),
    "hard_link": ("os.stat(__file__).st_nlink == 2", _hard_link),
    "top_folder_mode": ("stat.S_IMODE(os.stat(_HERE).st_mode) == 0o700", _top_folder_mode),
    "empty_folder": ("os.path.isdir(os.path.join(_HERE, 'magic'))", _empty_folder),
    "forged_mtime": ("os.stat(__file__).st_mtime < 1e9", _forged_mtime),
    "dotgit_in_a_new_folder": ("os.path.exists(os.path.join(_HERE, 'pkg', '.git'))",
                               _dotgit_in_a_new_folder),
    "fifo": ("os.path.exists(os.path.join(_HERE, 'flag'))", _fifo),
    "mode_bits": ("stat.S_IMODE(os.stat(__file__).st_mode) == 0o600", _mode_bits),
}


@pytest.mark.parametrize("trick", sorted(WORKTREE_ONLY))
async def test_the_run_branch_passes_its_tests_in_a_clean_checkout(
        repo: Path, wt_root: Path, tmp_path: Path, trick: str) -> None:
    cond, leave = WORKTREE_ONLY[trick]
    _seed_calc(repo)
    run_repo, ws = await _workspace(repo, wt_root, "calc.py", test_cmd=CHECK)
    config = VerifyConfig()
    path, head = await ws.acquire()
    (path / "calc.py").write_text("import stat\n" + CALC.format(cond=cond))
    leave(path)
    report = await ws.verify(path, [task("t1", "calc.py")], head=head, config=config,
                             confinement=None)
    if report.passed:
        done = await ws.integrate(path, "t1", report, head=head, batch_id="b1",
                                  config=config, confinement=None)
        assert done.rolled_back is not None or not done.merged
        final = await ws.verify_head(config, None)
        if done.merged:
            assert final is not None and final.failed, final
    # Whatever the run did, its branch passes the test command in a clean checkout.
    clone = tmp_path / "clone"
    await anyio.run_process(["git", "clone", "-q", "-b", run_repo.branch, str(repo),
                             str(clone)])
    checked = await anyio.run_process(["sh", "-c", CHECK], cwd=clone, check=False)
    assert checked.returncode == 0, checked.stderr.decode()
    await ws.release(path, reuse=False)
    await ws.close()


async def test_stale_byte_code_is_not_taken_as_the_branch_check(
        repo: Path, wt_root: Path, tmp_path: Path) -> None:
    # The stopped form of the same attack: an ignored or cached file that `status` lists
    # makes the merge's check run in a clean worktree, which fails and rolls the merge back.
    _seed_calc(repo)
    (repo / ".gitignore").write_text("magic.txt\n")
    run_git(repo, "add", ".gitignore")
    run_git(repo, "commit", "-qm", "ignore")
    run_repo, ws = await _workspace(repo, wt_root, "calc.py", test_cmd=CHECK)
    config = VerifyConfig()
    path, head = await ws.acquire()
    (path / "calc.py").write_text(CALC.format(
        cond="os.path.exists(os.path.join(_HERE, 'magic.txt'))"))
    (path / "magic.txt").write_text("ignored, never committed\n")
    report = await ws.verify(path, [task("t1", "calc.py")], head=head, config=config,
                             confinement=None)
    assert report.passed and report.tree is None, report
    done = await ws.integrate(path, "t1", report, head=head, batch_id="b1", config=config,
                              confinement=None)
    assert not done.merged and done.rolled_back is not None
    assert not done.rolled_back.passed
    assert await run_repo.head() == head
    await ws.release(path, reuse=False)
    await ws.close()


# --- a reused worktree carries nothing into the next batch --------------------------------


def _read_only(path: Path, name: str) -> None:
    (path / name).chmod(0o444)  # the next batch's editor could not write it


def _other_mode_bits(path: Path, name: str) -> None:
    (path / name).chmod(0o600)


def _old_mtime(path: Path, name: str) -> None:
    os.utime(path / name, (1, 1))


CARRIED: dict[str, tuple[Callable[[Path, str], None], Callable[[os.stat_result], bool]]] = {
    "read_only": (_read_only, lambda st: stat.S_IMODE(st.st_mode) == 0o444),
    "other_mode_bits": (_other_mode_bits, lambda st: stat.S_IMODE(st.st_mode) == 0o600),
    "old_mtime": (_old_mtime, lambda st: st.st_mtime < 10),
}
@pytest.mark.parametrize("trick", sorted(CARRIED))
async def test_the_next_batch_does_not_get_the_metadata_a_merged_batch_gave_its_files(
        repo: Path, wt_root: Path, trick: str) -> None:
    leave, carried = CARRIED[trick]
    run_repo, ws = await _workspace(repo, wt_root, "feature.py")
    config = VerifyConfig()
    path, head = await ws.acquire()
    (path / "feature.py").write_text("def feature() -> int:\n    return 1\n")
    leave(path, "feature.py")
    report = await ws.verify(path, [task("t1", "feature.py")], head=head, config=config,
                             confinement=None)
    assert report.passed, report
    assert (await ws.integrate(path, "t1", report, head=head, batch_id="b1", config=config,
                               confinement=None)).merged
    await ws.release(path)
    again, _ = await ws.acquire()
    try:
        assert again == path
        assert not carried((again / "feature.py").stat())
    finally:
        await ws.release(again, reuse=False)
        await ws.close()


@pytest.mark.parametrize("trick", sorted(CARRIED))
async def test_an_untouched_tracked_file_comes_back_as_checked_out(
        repo: Path, wt_root: Path, trick: str) -> None:
    # Stopped: a tracked file the batch re-moded or re-dated has a ctime after the worktree's
    # clean point, so the reuse writes it again (workspace/_touched.py), even in the same
    # second as the checkout, where git's whole-second stat data sees no change.
    leave, carried = CARRIED[trick]
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    other = await run_repo.acquire_worktree(wt_root)
    (other / "merged.py").write_text("M = 1\n")
    assert (await run_repo.commit_and_merge(other, "other batch")).merged
    await run_repo.release_worktree(other, reuse=False)
    leave(victim, "app.py")
    await run_repo.release_worktree(victim)
    again = await run_repo.acquire_worktree(wt_root)
    try:
        assert again == victim
        assert not carried((again / "app.py").stat())
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


async def _left_then_reused(repo: Path, wt_root: Path, leave: Callable[[Path], None],
                            ) -> tuple[RunRepo, Path, Path]:
    """A batch leaves ``leave``'s state in a worktree of a repository holding pkg/core.py;
    the next acquire: (the run, the batch's worktree, the next batch's)."""
    (repo / "pkg").mkdir()
    (repo / "pkg" / "core.py").write_text("CORE = 1\n")
    run_git(repo, "add", "pkg")
    run_git(repo, "commit", "-qm", "pkg")
    run_repo = await prepare_run_repo(repo, "r1")
    victim = await run_repo.acquire_worktree(wt_root)
    leave(victim)
    await run_repo.release_worktree(victim)
    return run_repo, victim, await run_repo.acquire_worktree(wt_root)


def _folder_read_only(path: Path) -> None:
    (path / "pkg").chmod(0o555)  # the next batch could not add a module there


def _folder_xattr(path: Path) -> None:
    os.setxattr(path / "pkg", "user.flag", b"1")
    os.setxattr(path / "pkg" / "core.py", "user.flag", b"1")


def _folder_unreadable(path: Path) -> None:
    (path / "pkg" / "core.py").chmod(0o600)
    (path / "pkg").chmod(0)  # nothing below it can be listed (the worktree is not reused)


def _linked_out(path: Path) -> None:
    os.link(path / "pkg" / "core.py", path.parent / "outside")  # beside the worktree


def _linked_inside(path: Path) -> None:
    (path / "pkg" / "core.py").chmod(0o600)
    # The reset's clean deletes the untracked link, which moves core.py's ctime again.
    os.link(path / "pkg" / "core.py", path / "copy.py")


@pytest.mark.parametrize("leave", [_folder_read_only, _folder_xattr, _folder_unreadable,
                                   _linked_out, _linked_inside],
                         ids=["folder_read_only", "folder_xattr", "folder_unreadable",
                              "linked_out", "linked_inside"])
async def test_the_next_batch_gets_folders_and_files_as_a_checkout_writes_them(
        repo: Path, wt_root: Path, leave: Callable[[Path], None]) -> None:
    run_repo, victim, again = await _left_then_reused(repo, wt_root, leave)
    try:
        folder, core = (again / "pkg").lstat(), (again / "pkg" / "core.py").lstat()
        mask = os.umask(0o022)
        os.umask(mask)
        assert stat.S_IMODE(folder.st_mode) == stat.S_IMODE(again.lstat().st_mode) == (
            0o777 & ~mask)
        assert stat.S_IMODE(core.st_mode) == 0o666 & ~mask and core.st_nlink == 1
        assert os.listxattr(again / "pkg") == os.listxattr(again / "pkg" / "core.py") == []
        (again / "pkg" / "new.py").write_text("NEW = 1\n")  # the next batch can write there
    finally:
        if victim != again and victim.exists():
            (victim / "pkg").chmod(0o755)
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()


def _fifo_in_a_tracked_folder(path: Path) -> None:
    (path / "pkg").mkdir(exist_ok=True)
    os.mkfifo(path / "pkg" / "pipe")


def _socket_at_the_top(path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path / "sock"))


@pytest.mark.parametrize("leave", [_fifo_in_a_tracked_folder, _socket_at_the_top],
                         ids=["fifo_in_a_tracked_folder", "socket_at_the_top"])
async def test_no_fifo_or_socket_reaches_the_next_batch(
        repo: Path, wt_root: Path, leave: Callable[[Path], None]) -> None:
    run_repo, victim, again = await _left_then_reused(repo, wt_root, leave)
    try:
        assert again == victim
        left = [p.relative_to(again).as_posix() for p in again.rglob("*")
                if not (p.is_symlink() or stat.S_ISREG(p.lstat().st_mode)
                        or stat.S_ISDIR(p.lstat().st_mode))]
        assert left == []
    finally:
        await run_repo.release_worktree(again, reuse=False)
        await run_repo.close()
