"""The secret allowlist: which findings a reviewer accepted, and where those rules are read.

Rules come from two places only, neither of them writable by an agent: the configured file
(``verify.secret_allowlist``) and ``.buildrunner-secrets-allow`` as committed at the *run's*
base commit. Not the worktree, and not the commit a batch started from: that commit already
holds what earlier batches of the same run merged, so an agent could plant an allowlist in
batch 1 and use it in batch 2.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import anyio

from buildrunnerd.config._model import VerifyConfig
from buildrunnerd.errors import WorkspaceError
from buildrunnerd.workspace._git import git

__all__ = ["ALLOWLIST_FILENAME", "Allowlist", "AllowlistSubject", "load_allowlist"]

ALLOWLIST_FILENAME = ".buildrunner-secrets-allow"
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class AllowlistSubject(Protocol):
    """What a rule is matched against: a finding's file and fingerprint."""

    @property
    def file(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...


class Allowlist:
    """Accepted findings, one rule a line (``#`` starts a comment):

    - ``sha256:<hex>``: a finding's fingerprint (as the report prints it; a prefix of at least
      12 hex digits is enough);
    - ``path:<glob>``: every finding in files matching the glob (``tests/fixtures/*``);
    - anything else: a Python regular expression searched in the text the secret was found in
      (the added line; for a file name, the name; for binary content, the bytes around it).
    """

    def __init__(self, rules: Iterable[tuple[str, str]] = ()) -> None:
        self.fingerprints: list[str] = []
        self.globs: list[str] = []
        self.regexes: list[re.Pattern[str]] = []
        for source, line in rules:
            self._add(source, line)

    @classmethod
    def parse(cls, text: str, *, source: str) -> Allowlist:
        """Read rules from a file's text; ``source`` names the file in errors."""
        allow = cls()
        for number, raw in enumerate(text.splitlines(), start=1):
            allow._add(f"{source}:{number}", raw)
        return allow

    def extend(self, other: Allowlist) -> None:
        self.fingerprints += other.fingerprints
        self.globs += other.globs
        self.regexes += other.regexes

    def _add(self, where: str, raw: str) -> None:
        line = raw.strip()
        if not line or line.startswith("#"):
            return
        if line.startswith("sha256:"):
            digest = line.removeprefix("sha256:").strip().lower()
            if len(digest) < 12 or not _HEX.match(digest):
                raise WorkspaceError(
                    f"{where}: `{line}` is not a fingerprint; copy the `sha256:...` value a "
                    "verification report printed",
                    data={"allowlist": where},
                )
            self.fingerprints.append("sha256:" + digest)
        elif line.startswith("path:"):
            self.globs.append(line.removeprefix("path:").strip())
        else:
            try:
                self.regexes.append(re.compile(line))
            except re.error as exc:
                raise WorkspaceError(
                    f"{where}: invalid regular expression `{line}` ({exc}); fix or remove "
                    "the line (or write `sha256:<fingerprint>` / `path:<glob>`)",
                    data={"allowlist": where},
                ) from exc

    def allows(self, finding: AllowlistSubject, line_text: str) -> bool:
        if any(finding.fingerprint.startswith(fp) or fp.startswith(finding.fingerprint)
               for fp in self.fingerprints):
            return True
        if any(fnmatch.fnmatch(finding.file, g) for g in self.globs):
            return True
        return any(r.search(line_text) for r in self.regexes)


async def load_allowlist(
    worktree: Path,
    run_base_commit: str,
    config: VerifyConfig,
    *,
    timeout_s: float,
    git_options: Sequence[str] = (),
) -> Allowlist:
    """The configured allowlist file plus the repository's, read from ``run_base_commit``
    (the commit the run started from: see the module docstring). ``git_options`` go before
    git's subcommand (``--git-dir``/``--work-tree`` computed by the daemon)."""
    allow = Allowlist()
    if config.secret_allowlist:
        path = Path(await anyio.Path(config.secret_allowlist).expanduser())
        try:
            text = await anyio.Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkspaceError(
                f"cannot read the secret allowlist {path} (verify.secret_allowlist): {exc}",
                data={"allowlist": str(path)},
            ) from exc
        allow.extend(Allowlist.parse(text, source=str(path)))
    committed = await _committed_allowlist(worktree, run_base_commit, git_options,
                                           timeout_s=timeout_s)
    if committed is not None:
        allow.extend(Allowlist.parse(committed, source=ALLOWLIST_FILENAME))
    return allow


# The committed allowlist by (repository, commit): a commit id names its content, so the file
# read at a run's base commit never changes, and every batch of the run needs it.
_COMMITTED: dict[tuple[str, tuple[str, ...], str], str | None] = {}
_MAX_COMMITTED = 256
_FULL_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


async def _committed_allowlist(worktree: Path, commit: str, git_options: Sequence[str], *,
                               timeout_s: float) -> str | None:
    """``.buildrunner-secrets-allow`` at ``commit`` (None: there is none), read once per
    repository and commit id (a ref name is read every time: it can move)."""
    key = (str(worktree), tuple(git_options), commit)
    if key in _COMMITTED:
        return _COMMITTED[key]
    # cat-file, not show: the raw blob, never a textconv of it.
    res = await git(
        [*git_options, "cat-file", "blob", f"{commit}:{ALLOWLIST_FILENAME}"],
        cwd=worktree, timeout_s=timeout_s, check=False)
    text = res.stdout if res.ok else None
    # Kept only when git answered (the file's content, or that it has none).
    if _FULL_ID.match(commit) and (res.ok or "does not exist" in res.stderr):
        if len(_COMMITTED) >= _MAX_COMMITTED:
            _COMMITTED.clear()
        _COMMITTED[key] = text
    return text
