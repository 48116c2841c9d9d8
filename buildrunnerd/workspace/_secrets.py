"""The secret scanner: credentials in the lines a batch added, and the allowlist.

Pure functions over text; :mod:`._verify` feeds it the diff. A finding never carries the secret
itself: only a redacted form (prefix + length) and a fingerprint the allowlist can name.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator

import msgspec

from buildrunnerd.errors import WorkspaceError

__all__ = [
    "SecretFinding", "Allowlist", "scan_line", "scan_diff", "parse_added_lines",
    "fingerprint", "redact", "shannon_entropy", "ALLOWLIST_FILENAME",
]

ALLOWLIST_FILENAME = ".buildrunner-secrets-allow"

# (kind, pattern, group holding the secret). Word boundaries keep a key embedded in a longer
# token (a hash, a base64 blob) from matching by accident.
_PATTERNS: tuple[tuple[str, re.Pattern[str], int], ...] = (
    ("aws_access_key", re.compile(
        r"(?<![A-Z0-9])((?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16})(?![A-Z0-9])"), 1),
    ("private_key", re.compile(
        r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"), 1),
    ("anthropic_api_key", re.compile(r"(?<![\w-])(sk-ant-[A-Za-z0-9_\-]{20,})"), 1),
    ("api_key", re.compile(r"(?<![\w-])(sk-(?!ant-)[A-Za-z0-9_\-]{20,})"), 1),
    ("github_token", re.compile(r"(?<![A-Za-z0-9_])(gh[pousr]_[A-Za-z0-9]{36,})"), 1),
    ("github_token", re.compile(r"(?<![A-Za-z0-9_])(github_pat_[A-Za-z0-9_]{22,})"), 1),
)

# A quoted value assigned to a name that says it is secret: ``api_key = "..."``,
# ``"password": "..."``, ``TOKEN: '...'``, ``export SECRET="..."``.
_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<name>[a-z0-9_.\-]*(?:secret|token|passw(?:or)?d|pwd|api[_\-]?key|access[_\-]?key
        |private[_\-]?key|auth[_\-]?key|credential|client[_\-]?secret|key)[a-z0-9_.\-]*)
    ["']?\s*(?::=|=>|==|=|:)\s*
    (?P<q>["'`])(?P<value>[^"'`\s]{16,})(?P=q)
    """
)
_HEX = re.compile(r"^[0-9a-fA-F]+$")
# Bits per character above which a value looks random rather than written by a person.
HEX_ENTROPY_THRESHOLD = 3.0
TEXT_ENTROPY_THRESHOLD = 4.0


class SecretFinding(msgspec.Struct):
    # aws_access_key | private_key | anthropic_api_key | api_key | github_token
    # | high_entropy_assignment
    kind: str
    file: str
    line: int
    redacted: str  # prefix + length; never the secret
    fingerprint: str  # "sha256:<16 hex>": put it in the allowlist to accept this value

    def message(self) -> str:
        return (
            f"{self.file}:{self.line}: possible {self.kind.replace('_', ' ')} {self.redacted}; "
            f"remove it (read it from the environment or a secrets manager), or if it is not a "
            f"secret add `{self.fingerprint}` to {ALLOWLIST_FILENAME}"
        )


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text`` (0 for an empty string)."""
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def fingerprint(secret: str) -> str:
    """A stable, non-reversible name for a secret value, for the allowlist."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def redact(secret: str) -> str:
    """The first 4 characters and the length: enough to find it, useless to an attacker."""
    return f"{secret[:4]}… ({len(secret)} chars)"


def _looks_random(value: str) -> bool:
    if _HEX.match(value):
        return len(value) >= 20 and shannon_entropy(value) >= HEX_ENTROPY_THRESHOLD
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return has_digit and has_alpha and shannon_entropy(value) >= TEXT_ENTROPY_THRESHOLD


def scan_line(text: str) -> Iterator[tuple[str, str]]:
    """Every (kind, secret) found in one line of text."""
    seen: set[str] = set()
    for kind, pattern, group in _PATTERNS:
        for m in pattern.finditer(text):
            secret = m.group(group)
            # "sk-" starts words too ("sk-learn-compatible-wrapper"); real keys hold digits.
            if kind == "api_key" and not any(c.isdigit() for c in secret):
                continue
            if secret not in seen:
                seen.add(secret)
                yield kind, secret
    for m in _ASSIGNMENT.finditer(text):
        value = m.group("value")
        if value in seen or any(value in s or s in value for s in seen):
            continue
        if _looks_random(value):
            seen.add(value)
            yield "high_entropy_assignment", value


class Allowlist:
    """Accepted findings, one rule a line (``#`` starts a comment):

    - ``sha256:<hex>``: a finding's fingerprint (as the report prints it; a prefix of at least
      12 hex digits is enough);
    - ``path:<glob>``: every finding in files matching the glob (``tests/fixtures/*``);
    - anything else: a Python regular expression searched in the added line.
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

    def allows(self, finding: SecretFinding, line_text: str) -> bool:
        if any(finding.fingerprint.startswith(fp) or fp.startswith(finding.fingerprint)
               for fp in self.fingerprints):
            return True
        if any(fnmatch.fnmatch(finding.file, g) for g in self.globs):
            return True
        return any(r.search(line_text) for r in self.regexes)


def parse_added_lines(diff: str) -> Iterator[tuple[str, int, str]]:
    """(file, line number in the new file, text) for every added line of a unified diff."""
    file: str | None = None
    new_line = 0
    for raw in diff.splitlines():
        if raw.startswith("+++ "):
            target = raw[4:]
            file = None if target == "/dev/null" else target.removeprefix("b/")
        elif raw.startswith("@@"):
            m = re.match(r"@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@", raw)
            new_line = int(m.group(1)) if m else 0
        elif file is None or raw.startswith("--- "):
            continue
        elif raw.startswith("+"):
            yield file, new_line, raw[1:]
            new_line += 1
        elif raw.startswith(" "):
            new_line += 1


def scan_diff(diff: str, allowlist: Allowlist | None = None) -> list[SecretFinding]:
    """Findings in the added lines of ``diff``, minus those the allowlist accepts."""
    findings: list[SecretFinding] = []
    for file, line, text in parse_added_lines(diff):
        for kind, secret in scan_line(text):
            finding = SecretFinding(
                kind=kind, file=file, line=line, redacted=redact(secret),
                fingerprint=fingerprint(secret),
            )
            if allowlist is None or not allowlist.allows(finding, text):
                findings.append(finding)
    return findings
