"""Staging a batch's change for verification: one ``status``, then ``add`` of what it listed.

Verification used to stage with ``git add -A`` of the whole worktree (every folder read,
every tracked file compared), then run a ``status`` of the whole worktree to learn whether it
held anything the index does not (what a test run would see and the commit would not hold).
One ``status`` before staging answers both: it compares every tracked file with the index
(git's stat data, ctime and inode included, and the content when the stat data cannot tell)
and lists every untracked and ignored file, so the paths it names are exactly what
``add -A`` would stage. Those are staged by name (``add -A`` with literal pathspecs reads
only them), and the worktree holds exactly the index afterwards when the status listed
nothing ignored and nothing staging leaves out (the byte-code caches of
:data:`._repo.COMMIT_EXCLUDES`).

Anything this cannot stage by name exactly as the whole-tree ``add -A`` would (a nested
repository, an unmerged entry, a path the cache excludes might or might not cover, a name
that is not valid UTF-8, a failed ``add``: a folder made a link, a file gone since the
status) stages the whole worktree as before, and then nothing is known about what else the
worktree holds (``exact`` is None: the caller asks ``status`` again before the tests).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from buildrunnerd.workspace._git import git
from buildrunnerd.workspace._repo import COMMIT_EXCLUDES, stage_all
from buildrunnerd.workspace._tree import Tree, staged_tree

__all__ = ["MAX_NAMED_PATHS", "stage_change"]

#: More changed paths than this are staged with the whole-tree ``add -A`` (as costly then).
MAX_NAMED_PATHS = 5000

# The forms of COMMIT_EXCLUDES this module can decide by name; any other form turns naming
# off (tests/workspace/test_staging.py keeps the two in step).
_DIR_EXCLUDE = re.compile(r":\(exclude,glob\)\*\*/([^*?\[/]+)/\*\*")
_SUFFIX_EXCLUDE = re.compile(r":\(exclude,glob\)\*\*/\*(\.[^*?\[/]+)")
GITLINK_MODE = "160000"


def _exclude_rules() -> tuple[frozenset[str], tuple[str, ...]] | None:
    dirs: set[str] = set()
    suffixes: list[str] = []
    for pattern in COMMIT_EXCLUDES:
        if (m := _DIR_EXCLUDE.fullmatch(pattern)) is not None:
            dirs.add(m[1])
        elif (m := _SUFFIX_EXCLUDE.fullmatch(pattern)) is not None:
            suffixes.append(m[1])
        else:
            return None
    return frozenset(dirs), tuple(suffixes)


_RULES = _exclude_rules()


def excluded(path: str) -> bool | None:
    """Whether staging leaves ``path`` out (a byte-code or tool cache, see COMMIT_EXCLUDES);
    None when that is not plain from the name (a cache folder's name as a file's, a suffix
    on a folder), or the excludes take a form this module does not know."""
    if _RULES is None:
        return None
    dirs, suffixes = _RULES
    *folders, name = path.split("/")
    if any(f in dirs for f in folders):
        return True
    if name.endswith(suffixes):
        return True
    if name in dirs or any(f.endswith(suffixes) for f in folders):
        return None
    return False


class Staged:
    """How the batch's change was staged: ``exact`` is True when the worktree held exactly
    the index right after staging (nothing untracked, ignored or left out), False when it
    held more, None when unknown (staged with the whole-tree ``add -A``)."""

    __slots__ = ("exact",)

    def __init__(self, exact: bool | None) -> None:
        self.exact = exact


def _in_gitlink(path: str, index: Tree) -> bool:
    """Whether ``path`` is, or is inside, a nested repository the index records (the whole
    ``add -A`` leaves those out: looking into one runs its own config)."""
    parts = path.split("/")
    for n in range(1, len(parts) + 1):
        entry = index.get("/".join(parts[:n]))
        if entry is not None and entry.mode == GITLINK_MODE:
            return True
    return False


def _plan(records: Sequence[str], index: Tree) -> tuple[list[str], bool] | None:
    """From ``status --porcelain -z`` records: the paths to stage by name and whether the
    worktree will then hold exactly the index (listed as ``index``); None to stage the
    whole worktree."""
    paths: list[str] = []
    exact = True
    for record in records:
        if not record:
            continue
        code, path = record[:2], record[3:]
        if len(record) < 4 or record[2] != " " or "\ufffd" in path or "U" in code or (
                code in ("DD", "AA")):
            return None  # not a plain record (or an unmerged entry, or an undecodable name)
        if code == "!!":
            exact = False  # ignored: never staged, but there
            continue
        if code == "??":
            if path.endswith("/"):
                return None  # a nested repository: staged as a gitlink by the whole add
        elif code[1] == " ":
            continue  # staged already (a fix-up round), unchanged since
        left_out = excluded(path)
        if left_out is None or _in_gitlink(path, index):
            return None
        if left_out:
            exact = False  # on disk, never staged
            continue
        paths.append(path)
    if len(paths) > MAX_NAMED_PATHS:
        return None
    return paths, exact


async def stage_change(worktree: Path, opts: Sequence[str], *, timeout_s: float,
                       what: str) -> Staged:
    """Stage everything the batch's commit will hold, as ``git add -A`` of the whole worktree
    would (see the module docstring)."""
    # The same listing the pre-test check used to make after staging: every tracked file
    # compared with the index, untracked and ignored files one by one. --ignore-submodules:
    # never look inside a nested repository (its config is the model's).
    status = await git([*opts, "status", "--porcelain", "-z", "--no-renames", "--ignored",
                        "--untracked-files=all", "--ignore-submodules=all"],
                       cwd=worktree, timeout_s=timeout_s, check=False)
    index = await staged_tree(worktree, opts, timeout_s=timeout_s)  # shared: no git call
    plan = _plan(status.stdout.split("\0"), index) if status.ok else None
    if plan is not None:
        paths, exact = plan
        if not paths:
            return Staged(exact)
        # --literal-pathspecs: a name is a name (no glob, no magic the model could write).
        added = await git([*opts, "--literal-pathspecs", "add", "-A", "--pathspec-from-file=-",
                           "--pathspec-file-nul"],
                          cwd=worktree, timeout_s=timeout_s, check=False,
                          input="".join(f"{p}\0" for p in paths).encode())
        if added.ok:
            return Staged(exact)
        # git stages nothing when it refuses one name (the index is written at the end).
    await stage_all(worktree, opts, timeout_s=timeout_s, what=what)
    return Staged(None)
