"""Removing the ``.git`` entries a batch leaves below a reused worktree's top.

git never lists, cleans or commits an entry named ``.git`` below the top of a worktree, so one
the model left (a file naming the user's repository, a repository made of a tracked folder)
would outlive ``reset --hard`` and ``clean -ffdx`` into every later batch. An untracked
folder holding one is shown by ``status`` and removed whole by ``clean -ffdx``; what survives
the clean is the folders that hold tracked files. So a worktree moved by what differs needs
only those swept (:func:`sweep_tracked_folders`: one ``lstat`` a folder, no file looked at),
and the whole-tree reset keeps the walk of every folder (:func:`remove_nested_dotgits`).

Every folder is opened relative to its parent's descriptor with ``O_NOFOLLOW``: the model may
have swapped a folder for a link to somewhere else, and nothing behind a link is touched.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = ["remove_nested_dotgits", "sweep_tracked_folders"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# What a folder git made has for its owner (the daemon): a folder the model made unreadable
# hides its entries from git's clean, one it made read-only keeps them.
_OWNER_RWX = stat.S_IRWXU


def remove_nested_dotgits(root: Path) -> None:
    """Delete every entry named ``.git`` under ``root`` but its own (links not followed).
    Raises :class:`OSError` when a folder cannot be listed or an entry removed."""

    def fail(exc: OSError) -> None:
        raise exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        top = dirpath == str(root)  # os.walk yields ``root`` first, as given
        for names in (dirnames, filenames):
            if ".git" in names and not top:
                target = os.path.join(dirpath, ".git")
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
                names.remove(".git")


def sweep_tracked_folders(root: Path, folders: Iterable[str]) -> bool:
    """Delete the ``.git`` entry (file, folder, link or anything else) of each of ``folders``
    (paths under ``root``, ``/``-separated): the folders of the worktree's index.

    False, with what was swept so far left removed, when a folder is not one git would have
    left: missing, a link or a file in its place (or on the way to it), or not readable,
    writable and searchable by its owner. The caller then takes the whole-tree reset, which
    walks every folder. Raises :class:`OSError` when a ``.git`` cannot be removed."""
    ordered = sorted((tuple(f.split("/")) for f in folders if f), key=lambda parts: parts)
    root_fd = os.open(root, _DIR_FLAGS)
    # The open folders from the top down to the last one swept (sorted by component, every
    # folder comes right after its parent's subtree began).
    stack: list[tuple[tuple[str, ...], int]] = [((), root_fd)]
    try:
        for parts in ordered:
            while len(stack) > 1 and parts[:len(stack[-1][0])] != stack[-1][0]:
                os.close(stack.pop()[1])
            parent_parts, parent_fd = stack[-1]
            if parts[:-1] != parent_parts:
                return False  # its parent is not in the set: not a listing's folders
            try:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES):
                    return False
                raise
            stack.append((parts, fd))
            if os.fstat(fd).st_mode & _OWNER_RWX != _OWNER_RWX:
                return False
            _remove_dotgit(fd)
        return True
    finally:
        for _parts, fd in stack:
            os.close(fd)


def _remove_dotgit(folder_fd: int) -> None:
    try:
        st = os.lstat(".git", dir_fd=folder_fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(".git", dir_fd=folder_fd)
    else:
        os.unlink(".git", dir_fd=folder_fd)
