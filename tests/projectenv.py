"""A project environment for tests that run pytest through BuildRunner's auto-detection.

BuildRunner never runs a project's tests with its own Python: it looks for the project's
``.venv`` in the user's checkout. Tests give their repository one: a venv (no pip, created
once per session) whose ``.pth`` file adds this interpreter's site-packages, so pytest is
importable in it. ``.venv`` in the repository is a symlink to it (and git ignores it as an
untracked folder the run never sees).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

_SHARED: dict[str, Path] = {}


def shared_env(root: Path) -> Path:
    """The session's venv under ``root`` (created on first use)."""
    if "venv" not in _SHARED:
        venv = root / "project-venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        purelib = Path(sysconfig.get_paths()["purelib"])
        [site] = list((venv / "lib").glob("python3*/site-packages"))
        (site / "_buildrunner_tests.pth").write_text(f"{purelib}\n")
        _SHARED["venv"] = venv
    return _SHARED["venv"]


def give_project_env(repo: Path, root: Path) -> Path:
    """Make ``repo/.venv`` the shared test venv; returns its interpreter (by the venv's real
    path, as BuildRunner names it)."""
    venv = shared_env(root)
    link = repo / ".venv"
    if not link.exists():
        link.symlink_to(venv, target_is_directory=True)
    return venv / "bin" / "python"
