"""What a credential looks like: the known secret patterns, finding them and redacting them.

One table for every place that must recognise a key: the secret scan of what a batch will
commit (:mod:`buildrunnerd.workspace`), and the redaction of tool results and test output
before they are stored or sent in events. Light (stdlib only), so every layer may import it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator
from typing import NamedTuple

__all__ = ["CredentialMatch", "KINDS", "find_credentials", "is_placeholder_password",
           "iter_credentials", "redact_secrets"]


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


# Every pattern starts with a literal (``sk-ant-``, ``AKIA``, ``://``): the regex engine then
# skips ahead to it, 100 times faster on a megabyte than a pattern opening with a
# look-behind. What a look-behind would say is checked on the match instead: the character
# before the key (a key embedded in a longer token, a hash, a base64 blob, is no key), and for
# a database URL the scheme before ``://``. ASCII only, so that a byte of binary content read
# as a letter ("\xff" is "ÿ") does not hide a key.
class _Rule(NamedTuple):
    kind: str
    pattern: re.Pattern[str]  # group 1 holds the secret
    not_after: str  # characters that may not stand right before the match
    check: Callable[[str], bool] | None  # on the secret
    scheme: re.Pattern[str] | None  # must match right before the match


def _rule(kind: str, pattern: str, *, not_after: str = "",
          check: Callable[[str], bool] | None = None, scheme: str | None = None) -> _Rule:
    return _Rule(kind, re.compile(pattern, re.ASCII), not_after, check,
                 re.compile(scheme + r"\Z", re.ASCII | re.IGNORECASE) if scheme else None)


_WORD = string.ascii_letters + string.digits + "_"
_UPPER = string.ascii_uppercase + string.digits
_RULES: tuple[_Rule, ...] = (
    _rule("aws_access_key", r"((?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16})(?![A-Z0-9])",
          not_after=_UPPER),
    _rule("private_key", r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"),
    _rule("anthropic_api_key", r"(sk-ant-[A-Za-z0-9_\-]{20,})", not_after=_WORD + "-"),
    _rule("api_key", r"(sk-(?!ant-)[A-Za-z0-9_\-]{20,})", not_after=_WORD + "-",
          check=_has_digit),
    _rule("github_token", r"(gh[pousr]_[A-Za-z0-9]{36,})", not_after=_WORD),
    _rule("github_token", r"(github_pat_[A-Za-z0-9_]{22,})", not_after=_WORD),
    _rule("stripe_key", r"([sr]k_live_[A-Za-z0-9]{16,})", not_after=_WORD),
    _rule("stripe_key", r"(whsec_[A-Za-z0-9+/=]{24,})", not_after=_WORD),
    _rule("slack_webhook", r"(hooks\.slack\.com/(?:services|workflows|triggers)/"
                           r"[A-Za-z0-9_\-]{6,}/[A-Za-z0-9_\-/]{8,})"),
    _rule("slack_token", r"(xox[abposr]-[A-Za-z0-9\-]{10,})", not_after=_WORD),
    # scheme://user:password@host; only the password is the secret.
    _rule("database_url", r"://[^\s:/?#@'\"`]*:([^\s@/?#'\"`]+)@[^\s/?#'\"`]+",
          check=_real_password,
          scheme=r"(?<![a-z0-9])(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?"
                 r"|amqps?|mssql|sqlserver|oracle|cockroachdb)(?:\+[a-z0-9]+)?"),
    _rule("jwt", r"(eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{16,})",
          not_after=_WORD + "-"),
)

#: Every kind :func:`find_credentials` reports.
KINDS: tuple[str, ...] = tuple(dict.fromkeys(rule.kind for rule in _RULES))
_SCHEME_CHARS = 32  # the longest scheme above, with room for a "+driver"


def iter_credentials(text: str) -> Iterator[CredentialMatch]:
    """Every occurrence of a known credential in ``text`` (a key printed twice is found
    twice), in table order."""
    for rule in _RULES:
        for m in rule.pattern.finditer(text):
            start = m.start()
            if rule.not_after and start > 0 and text[start - 1] in rule.not_after:
                continue
            if rule.scheme is not None and not rule.scheme.search(
                    text, max(0, start - _SCHEME_CHARS), start):
                continue
            secret = m.group(1)
            if rule.check is None or rule.check(secret):
                yield CredentialMatch(rule.kind, secret, m.start(1), m.end(1))


def find_credentials(text: str) -> Iterator[CredentialMatch]:
    """Every known credential in ``text``, each distinct secret once, in table order."""
    seen: set[str] = set()
    for match in iter_credentials(text):
        if match.secret not in seen:
            seen.add(match.secret)
            yield match


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
        (m.start, m.end, m.kind) for m in iter_credentials(text) if m.kind != "private_key")
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
