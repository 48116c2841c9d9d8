"""Removing the ``.git`` entries a batch leaves below a reused worktree's top, before the
whole-tree reset.

git never lists, cleans or commits an entry named ``.git`` below the top of a worktree, so one
the model left (a file naming the user's repository, a repository made of a tracked folder)
would outlive ``reset --hard`` and ``clean -ffdx`` into every later batch: the whole-tree
reset walks every folder for them first (:func:`remove_nested_dotgits`, links not followed).
The reset driven by the list of what changed (:mod:`._reuse`) deletes the ones it lists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["remove_nested_dotgits"]

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
