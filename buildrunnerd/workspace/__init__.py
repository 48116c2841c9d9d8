"""Workspaces and verification: the run branch, batch worktrees, the file monitor, the
verification engine (with the secret scanner) and merging a batch into the run branch; the
``Workspace`` Protocol a run's batches work through (``GitWorkspace``, ``ScratchWorkspace``).

See docs/verification.md for the checks and docs/architecture.md ("Workspace") for the API.
"""

from buildrunnerd.workspace._allowlist import ALLOWLIST_FILENAME, Allowlist
from buildrunnerd.workspace._git_workspace import GitWorkspace
from buildrunnerd.workspace._monitor import ChangeKind, FileMonitor, OnChange
from buildrunnerd.workspace._repo import (
    BRANCH_PREFIX,
    MergeResult,
    RunRepo,
    batch_commit_message,
    cleanup_orphan_worktrees,
    prepare_run_repo,
)
from buildrunnerd.workspace._scratch import ScratchWorkspace
from buildrunnerd.workspace._secrets import SecretFinding, StagedChange, scan_commit
from buildrunnerd.workspace._staged import read_staged_changes, scan_staged
from buildrunnerd.workspace._verify import (
    CheckResult,
    VerificationReport,
    detect_test_command,
    verify,
)
from buildrunnerd.workspace._workspace import (
    BatchCommit,
    FileChange,
    FileWatch,
    HeadCheck,
    Integration,
    VerifiedHead,
    Workspace,
)

__all__ = [
    "ALLOWLIST_FILENAME", "Allowlist", "BRANCH_PREFIX", "BatchCommit", "ChangeKind",
    "CheckResult", "FileChange", "FileMonitor", "FileWatch", "GitWorkspace", "HeadCheck",
    "Integration", "MergeResult", "OnChange", "RunRepo", "ScratchWorkspace", "SecretFinding",
    "StagedChange", "VerificationReport", "VerifiedHead", "Workspace", "batch_commit_message",
    "cleanup_orphan_worktrees", "detect_test_command", "prepare_run_repo", "read_staged_changes",
    "scan_commit", "scan_staged", "verify",
]
