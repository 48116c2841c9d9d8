"""What a credential looks like: the known secret patterns, finding them and redacting them.

One table for every place that must recognise a key: the secret scan of what a batch will
commit (:mod:`buildrunnerd.workspace`), and the redaction of tool results and test output
before they are stored or sent in events. Light (stdlib only), so every layer may import it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

__all__ = ["CredentialMatch", "KINDS", "find_credentials", "is_placeholder_password",
           "redact_secrets"]


class CredentialMatch(NamedTuple):
    """One credential in a text: its kind, the secret itself and where it is."""

    kind: str
    secret: str
    start: int  # offsets of ``secret`` in the text
    end: int


def is_placeholder_password(password: str) -> bool:
    """Whether a URL's password is obviously not a real one: ``password``, ``${PASSWORD}``,
    ``<password>``, ``***``, ``%(pw)s``, ``{{ pw }}``, ``$DB_PASS``..."""
    lowered = password.lower()
    if any(c in password for c in "${}<>[]") or _FORMAT_PERCENT.search(password):
        return True
    if len(set(password)) <= 1:  # "***", "xxxx", "...."
        return True
    return lowered in _PLACEHOLDER_PASSWORDS or lowered.strip("_-") in _PLACEHOLDER_PASSWORDS


# "%(pw)s", "%s": a formatting placeholder; "%2F" is a URL-encoded character of a real one.
_FORMAT_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PLACEHOLDER_PASSWORDS = frozenset({
    "password", "passwd", "pass", "pwd", "secret", "changeme", "change_me", "example",
    "placeholder", "mypassword", "yourpassword", "your_password", "your-password",
    "db_password", "dbpassword", "dbpass", "user", "username", "root", "admin", "test",
    "postgres", "mysql", "redis", "guest", "foo", "bar", "foobar", "dummy", "fake", "sample",
    "pw", "p", "x",
})


def _has_digit(secret: str) -> bool:
    # "sk-" starts words too ("sk-learn-compatible-wrapper"); real keys hold digits.
    return any(c.isdigit() for c in secret)


def _real_password(secret: str) -> bool:
    return not is_placeholder_password(secret)


# (kind, pattern, check the secret must pass). Look-arounds keep a
# key embedded in a longer token (a hash, a base64 blob) from matching by accident; ASCII
# only, so that a byte of binary content read as a letter ("\xff" is "ÿ") does not hide one.
_Rule = tuple[str, re.Pattern[str], Callable[[str], bool] | None]


def _rule(kind: str, pattern: str, check: Callable[[str], bool] | None = None) -> _Rule:
    # Group 1 of every pattern holds the secret.
    return kind, re.compile(pattern, re.ASCII), check


_RULES: tuple[_Rule, ...] = (
    _rule("aws_access_key", r"(?<![A-Z0-9])((?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16})(?![A-Z0-9])"),
    _rule("private_key", r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"),
    _rule("anthropic_api_key", r"(?<![\w-])(sk-ant-[A-Za-z0-9_\-]{20,})"),
    _rule("api_key", r"(?<![\w-])(sk-(?!ant-)[A-Za-z0-9_\-]{20,})", _has_digit),
    _rule("github_token", r"(?<![A-Za-z0-9_])(gh[pousr]_[A-Za-z0-9]{36,})"),
    _rule("github_token", r"(?<![A-Za-z0-9_])(github_pat_[A-Za-z0-9_]{22,})"),
    _rule("stripe_key",
          r"(?<![A-Za-z0-9_])((?:sk|rk)_live_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9+/=]{24,})"),
    _rule("slack_webhook", r"((?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/"
                           r"[A-Za-z0-9_\-]{6,}/[A-Za-z0-9_\-/]{8,})"),
    _rule("slack_token", r"(?<![A-Za-z0-9_])(xox[abposr]-[A-Za-z0-9\-]{10,})"),
    # scheme://user:password@host; only the password is the secret.
    _rule("database_url",
          r"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql"
          r"|sqlserver|oracle|cockroachdb)(?:\+[a-z0-9]+)?://"
          r"[^\s:/?#@'\"`]*:([^\s@/?#'\"`]+)@[^\s/?#'\"`]+", _real_password),
    _rule("jwt", r"(?<![A-Za-z0-9_\-])"
                 r"(eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{16,})"),
)

#: Every kind :func:`find_credentials` reports.
KINDS: tuple[str, ...] = tuple(dict.fromkeys(kind for kind, _, _ in _RULES))


def find_credentials(text: str) -> Iterator[CredentialMatch]:
    """Every known credential in ``text``, each distinct secret once, in table order."""
    seen: set[str] = set()
    for kind, pattern, check in _RULES:
        for m in pattern.finditer(text):
            secret = m.group(1)
            if secret in seen or (check is not None and not check(secret)):
                continue
            seen.add(secret)
            yield CredentialMatch(kind, secret, m.start(1), m.end(1))


# A private key is redacted whole: the header, the base64 body and the footer. Without a footer
# (a cut-off output) the body runs to the first character that cannot be part of it.
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[A-Za-z0-9+/=\s\\:,.\-]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"|[A-Za-z0-9+/=\s\\]*)"
)


def redact_secrets(text: str) -> str:
    """``text`` with every known credential replaced by ``[REDACTED:<kind>]`` (a database
    URL keeps its scheme, user and host; only the password goes)."""
    text = _PRIVATE_KEY_BLOCK.sub("[REDACTED:private_key]", text)
    spans = sorted(
        (m.start, m.end, m.kind) for m in _all_matches(text) if m.kind != "private_key")
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end, kind in spans:
        if start < pos:  # overlaps one already replaced
            continue
        out += [text[pos:start], f"[REDACTED:{kind}]"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _all_matches(text: str) -> Iterator[CredentialMatch]:
    # Every occurrence, not each distinct secret once: a key printed twice is redacted twice.
    for kind, pattern, check in _RULES:
        for m in pattern.finditer(text):
            secret = m.group(1)
            if check is None or check(secret):
                yield CredentialMatch(kind, secret, m.start(1), m.end(1))
