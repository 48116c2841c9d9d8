"""The one sandbox for everything that executes worktree content.

The bash tool, the test command, the import check and a backend's CLI all run through
:func:`run_confined` / :func:`open_confined` with a :class:`SandboxPolicy`: no network, no
secrets, no home, no other sockets, only the worktree writable (see docs/security.md).
:func:`select_sandbox` picks bubblewrap (Linux) or sandbox-exec (macOS) and proves it works;
without one, model work is refused unless ``agent.sandbox = "off"``.

The daemon's own Python reads and writes worktree files through :mod:`._fs` (the editor tool,
prompt context, verification, the file monitor): race-free, no symlink followed, regular files
and folders only, bounded.
"""

from buildrunnerd.sandbox._bwrap import BwrapSandbox
from buildrunnerd.sandbox._confinement import Confinement
from buildrunnerd.sandbox._fs import (
    PathProblem,
    WorktreePathError,
    list_tree,
    lstat_in,
    open_directory_in,
    read_bytes_in,
    worktree_relpath,
    write_bytes_in,
)
from buildrunnerd.sandbox._policy import (
    SANDBOX_HOME,
    Sandbox,
    SandboxLimits,
    SandboxPolicy,
    Wrapped,
    confined_env,
    toolchain_paths,
)
from buildrunnerd.sandbox._run import (
    ConfinedResult,
    open_confined,
    run_confined,
    terminate_confined,
)
from buildrunnerd.sandbox._seatbelt import SandboxExecSandbox, seatbelt_profile
from buildrunnerd.sandbox._select import (
    INSTALL_HINT,
    Probe,
    SandboxCheck,
    Unconfined,
    check_sandbox,
    format_check,
    select_sandbox,
)

__all__ = [
    "BwrapSandbox", "ConfinedResult", "Confinement", "INSTALL_HINT", "PathProblem", "Probe",
    "SANDBOX_HOME", "Sandbox", "SandboxCheck", "SandboxExecSandbox", "SandboxLimits",
    "SandboxPolicy", "Unconfined", "WorktreePathError", "Wrapped", "check_sandbox",
    "confined_env", "format_check", "list_tree", "lstat_in", "open_confined",
    "open_directory_in", "read_bytes_in", "run_confined", "seatbelt_profile", "select_sandbox",
    "terminate_confined", "toolchain_paths", "worktree_relpath", "write_bytes_in",
]
