"""Scope: what a batch changed beyond its own files.

Every changed path (staged tree against the commit the batch started from) is one of:

* **own**: a file a task of the batch names, a new test file, or a match of ``verify.scope_globs``;
* **forbidden**: the run's spec, CI configuration (``.github/``, ``.gitlab-ci.yml``, ``.ci/``,
  ...), repository control files (``.gitignore``, ``.gitattributes``, ``.gitmodules``, the
  secret allowlist), a protected test or test configuration, or a file another batch's task
  names. Under ``verify.scope = "strict"`` (the default) each fails the batch; under ``"warn"``
  it is listed only;
* **outside**: anything else, listed in the report (a warning, never a failure).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from functools import lru_cache
from pathlib import PurePosixPath

from buildrunnerd.workspace._allowlist import ALLOWLIST_FILENAME
from buildrunnerd.workspace._protect import (
    Finding,
    is_js_test_file,
    is_protected_path,
    is_python_test_file,
)
from buildrunnerd.workspace._tree import Tree

__all__ = ["ScopeResult", "check_scope", "changed_paths", "glob_match", "CI_GLOBS"]

CI_GLOBS = (".github/**", ".gitlab-ci.yml", ".gitlab/**", ".circleci/**", ".ci/**",
            "Jenkinsfile", ".travis.yml", "azure-pipelines.yml", ".azure-pipelines/**",
            ".buildkite/**", "bitbucket-pipelines.yml", ".drone.yml", ".woodpecker.yml",
            ".woodpecker/**", ".pre-commit-config.yaml")
_CONTROL_NAMES = frozenset({".gitignore", ".gitattributes", ".gitmodules", ALLOWLIST_FILENAME})


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(path: str, patterns: Iterable[str]) -> bool:
    """Whether ``path`` matches one of the globs (``**`` spans folders, ``*`` does not)."""
    return any(_glob_regex(p.lstrip("/")).match(path) for p in patterns)


def changed_paths(before: Tree, after: Tree) -> list[str]:
    """The paths added, removed or changed (content or mode) from ``before`` to ``after``."""
    changed = [p for p, entry in after.items() if before.get(p) != entry]
    changed += [p for p in before if p not in after]
    return sorted(changed)


class ScopeResult:
    """Failures (forbidden changes, strict mode), warnings (forbidden under warn mode) and the
    paths outside the batch's scope."""

    def __init__(self) -> None:
        self.failures: list[Finding] = []
        self.warnings: list[Finding] = []
        self.outside: list[str] = []


def check_scope(
    before: Tree, after: Tree, *, own_files: Collection[str], other_files: Collection[str],
    spec_path: str | None, globs: Collection[str] = (), strict: bool = True,
    already_reported: Collection[str] = (), changed: Collection[str] | None = None,
) -> ScopeResult:
    """Classify the batch's changes (see the module docstring). ``already_reported``: paths
    the protected-tests check already failed (not reported twice). ``changed``: the paths
    where the trees differ, when the caller knows them (default: :func:`changed_paths`)."""
    result = ScopeResult()
    own = set(own_files)
    for path in sorted(changed) if changed is not None else changed_paths(before, after):
        if path in own:
            continue
        name = PurePosixPath(path).name
        reason = None
        if spec_path is not None and path == spec_path:
            reason = "it is the run's spec"
        elif glob_match(path, CI_GLOBS):
            reason = "it is CI configuration"
        elif name in _CONTROL_NAMES:
            reason = "it is a repository control file"
        elif path in other_files:
            reason = "a task of another batch names it"
        elif path in before and is_protected_path(path):
            if path in already_reported:
                continue
            reason = "it is a protected test or test configuration"
        elif path not in before and (is_python_test_file(path) or is_js_test_file(path)):
            continue  # a new test: batches may add tests
        elif glob_match(path, globs):
            continue
        else:
            result.outside.append(path)
            continue
        finding = Finding(path, f"{path} was changed, but {reason}; leave it as it was (no "
                          "task of this batch names it)")
        (result.failures if strict else result.warnings).append(finding)
    return result
