"""The secret scanner: credentials in what a batch will commit.

Pure functions over the staged blobs (:mod:`._staged` reads them from git). Each change is
scanned in every form a credential can hide in:

- the file name (every path component);
- binary content whole (as bytes, as UTF-16, and inflated when it is gzip, zip or zlib data);
- for text, each added line, and the added lines joined: string pieces concatenated
  (``"sk-ant-" "api03..."``, ``"a" + "b"``, ``"".join(["a", "b"])``) and lines glued together;
- every one of those decoded once more: base64, hex, ``\\xNN`` escapes, byte lists, URL-encoding.

A finding never carries the secret itself: only a redacted form (prefix + length) and a
fingerprint the allowlist can name. The fingerprint is the decoded secret's, so one allowlist
rule covers a value in every encoding.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import io
import math
import re
import urllib.parse
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import msgspec

from buildrunnerd.credentials import find_credentials
from buildrunnerd.workspace._allowlist import ALLOWLIST_FILENAME, Allowlist

__all__ = [
    "SecretFinding", "StagedChange", "scan_commit", "scan_line", "fingerprint", "redact",
    "shannon_entropy", "is_binary", "MAX_FINDINGS",
]

# A quoted value assigned to a name that says it is secret: ``api_key = "..."``,
# ``"password": "..."``, ``TOKEN: '...'``, ``export SECRET="..."``.
_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<name>[a-z0-9_.\-]{0,64}(?:secret|token|passw(?:or)?d|pwd|api[_\-]?key|access[_\-]?key
        |private[_\-]?key|auth[_\-]?key|credential|client[_\-]?secret|key)[a-z0-9_.\-]{0,64})
    ["']?\s*(?::=|=>|==|=|:)\s*
    (?P<q>["'`])(?P<value>[^"'`\s]{16,})(?P=q)
    """
)
_HEX = re.compile(r"^[0-9a-fA-F]+$")
# Bits per character above which a value looks random rather than written by a person.
HEX_ENTROPY_THRESHOLD = 3.0
TEXT_ENTROPY_THRESHOLD = 4.0

#: Findings reported per verification at most: a report is stored and sent to the model, so
#: a batch that writes a million keys must not write a million-line report.
MAX_FINDINGS = 200
# Inflated bytes per binary blob at most (zip bombs).
_MAX_INFLATED_BYTES = 8 * 1024 * 1024
_MAX_ZLIB_STREAMS = 64
# Bytes of binary content either side of a secret that allowlist regexes are searched in.
_CONTEXT_BYTES = 100


class SecretFinding(msgspec.Struct):
    # a kind of buildrunnerd.credentials (aws_access_key, stripe_key, database_url, ...)
    # | high_entropy_assignment | unscanned_file
    kind: str
    file: str
    line: int  # 0: not a line of text (a file name, binary content)
    redacted: str  # prefix + length; never the secret
    fingerprint: str  # "sha256:<16 hex>": put it in the allowlist to accept this value
    where: str = ""  # how it was found: "in the file name", "base64-encoded", ...

    def message(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        how = f" ({self.where})" if self.where else ""
        if self.kind == "unscanned_file":
            return (f"{place}: {self.where}; a file this large cannot be scanned for "
                    f"credentials, so it is not committed: remove it, or if it is safe add "
                    f"`path:{self.file}` to {ALLOWLIST_FILENAME}")
        return (
            f"{place}: possible {self.kind.replace('_', ' ')} {self.redacted}{how}; remove it "
            f"(read it from the environment or a secrets manager), or if it is not a secret "
            f"add `{self.fingerprint}` to {ALLOWLIST_FILENAME}"
        )


class StagedChange(msgspec.Struct, frozen=True):
    """One file as the batch's commit will hold it: its path, its new content (None when it
    was too large to read: ``size_bytes`` says how large) and its content at the commit the
    batch started from (None for a new file)."""

    path: str
    new: bytes | None
    old: bytes | None = None
    size_bytes: int = 0


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text`` (0 for an empty string)."""
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def fingerprint(secret: str) -> str:
    """A stable, non-reversible name for a secret value, for the allowlist."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def redact(secret: str) -> str:
    """The first 4 characters and the length: enough to find it, useless to an attacker."""
    return f"{secret[:4]}… ({len(secret)} chars)"


def is_binary(data: bytes) -> bool:
    """git's rule (a NUL in the first 8000 bytes), or not UTF-8 at all."""
    if b"\0" in data[:8000]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _looks_random(value: str) -> bool:
    if _HEX.match(value):
        return len(value) >= 20 and shannon_entropy(value) >= HEX_ENTROPY_THRESHOLD
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return has_digit and has_alpha and shannon_entropy(value) >= TEXT_ENTROPY_THRESHOLD


def scan_line(text: str) -> Iterator[tuple[str, str]]:
    """Every (kind, secret) found in one line of text: known patterns, and random-looking
    values assigned to a name that says it is secret."""
    seen: set[str] = set()
    for match in find_credentials(text):
        seen.add(match.secret)
        yield match.kind, match.secret
    for m in _ASSIGNMENT.finditer(text):
        value = m.group("value")
        if value in seen or any(value in s or s in value for s in seen):
            continue
        if _looks_random(value):
            seen.add(value)
            yield "high_entropy_assignment", value


# --- decoded forms ---------------------------------------------------------------------------

# Long enough for the shortest key of the table (a 15-character Slack token) once encoded.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{20,}={0,2}")
_HEX_RUN = re.compile(r"(?:[0-9a-fA-F]{2}){10,}")
_ESCAPED_HEX_RUN = re.compile(r"(?:\\x[0-9a-fA-F]{2}){10,}")
_BYTE = r"(?:0x[0-9a-fA-F]{1,2}|\d{1,3})"
_BYTE_LIST = re.compile(rf"(?:{_BYTE}\s*,\s*){{9,}}{_BYTE}")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def _text(data: bytes) -> str:
    # latin-1 maps every byte to one character: patterns (all ASCII) match as in the bytes.
    return data.decode("latin-1")


def _base64_views(run: str) -> Iterator[bytes]:
    # A key embedded in a longer run may start at any of four alignments.
    core = run.rstrip("=")
    altchars = b"-_" if ("-" in core or "_" in core) else None
    for skip in range(4):
        piece = core[skip:]
        piece = piece[: len(piece) - len(piece) % 4] if skip else piece
        if len(piece) < 16:
            break
        try:
            yield base64.b64decode(piece + "=" * (-len(piece) % 4), altchars=altchars)
        except (binascii.Error, ValueError):
            continue


def _decoded_views(text: str) -> Iterator[tuple[str, str]]:
    """(how, decoded text) for every encoded stretch of ``text`` that decodes."""
    if "%" in text and _PERCENT.search(text):
        yield "URL-encoded", urllib.parse.unquote(text, encoding="latin-1")
    for m in _BASE64_RUN.finditer(text):
        run = m.group()
        # Base64 of a key mixes cases; snake_case and kebab-case words do not.
        if run.islower() or run.isupper():
            continue
        # "/" is base64 and a path separator: "cache/<base64>" is tried piece by piece too.
        pieces = [run, *(p for p in run.split("/") if len(p) >= 16)] if "/" in run else [run]
        for piece in pieces:
            for data in _base64_views(piece):
                yield "base64-encoded", _text(data)
    for m in _HEX_RUN.finditer(text):
        yield "hex-encoded", _text(bytes.fromhex(m.group()))
    for m in _ESCAPED_HEX_RUN.finditer(text):
        yield "hex-escaped", _text(bytes.fromhex(m.group().replace("\\x", "")))
    for m in _BYTE_LIST.finditer(text):
        values = [int(v, 0) for v in re.split(r"\s*,\s*", m.group())]
        if all(v < 256 for v in values):
            yield "a list of byte values", _text(bytes(values))


def _known_in_decoded(text: str, depth: int = 2) -> Iterator[tuple[str, str, str]]:
    """(kind, secret, how) for known credentials in the decoded forms of ``text``, decoding
    up to ``depth`` times (base64 of a hex string, a URL-encoded base64 value...)."""
    for how, decoded in _decoded_views(text):
        for match in find_credentials(decoded):
            yield match.kind, match.secret, how
        if depth > 1 and decoded.isprintable():
            for kind, secret, inner in _known_in_decoded(decoded, depth - 1):
                yield kind, secret, f"{inner}, then {how}"


# --- joined lines ----------------------------------------------------------------------------

_STRING_LITERAL = re.compile(r""""((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)'|`([^`\\\n]*)`""")
# What may stand between two pieces of one string: nothing (implicit concatenation), ``+``,
# commas and brackets (a list that is joined), line continuations.
_JOINER = re.compile(r"[\s+,()\[\]\\]*")


class _Joined:
    """Pieces of text glued together, remembering the line each piece came from."""

    __slots__ = ("how", "text", "_starts", "_lines")

    def __init__(self, how: str, pieces: Sequence[tuple[int, str]]) -> None:
        self.how = how
        self.text = "".join(p for _, p in pieces)
        self._lines = [line for line, _ in pieces]
        self._starts: list[int] = []
        offset = 0
        for _, piece in pieces:
            self._starts.append(offset)
            offset += len(piece)

    def line_at(self, offset: int) -> int:
        return self._lines[max(0, bisect.bisect_right(self._starts, offset) - 1)]

    @property
    def first_line(self) -> int:
        return self._lines[0]


def _joined_forms(run: Sequence[tuple[int, str]]) -> Iterator[_Joined]:
    """The forms a secret split over the consecutive lines ``run`` takes once put together:
    chains of string literals with only joiners between them (``"a" "b"``, ``"a" + "b"``,
    ``"".join(["a", "b"])``), every literal of the run in order (pieces kept in variables),
    and the lines glued end to start."""
    literals: list[tuple[int, str, int, int]] = []  # (line, content, start, end)
    for number, text in run:
        literals += [(number, next(g for g in m.groups() if g is not None), m.start(), m.end())
                     for m in _STRING_LITERAL.finditer(text)]
    chain: list[tuple[int, str]] = []
    previous: tuple[int, int] | None = None  # (line, end offset) of the last literal
    for number, piece, start, end in literals:
        if chain and previous is not None and _joins(run, previous, (number, start)):
            chain.append((number, piece))
        else:
            if len(chain) > 1:
                yield _Joined("split into joined string pieces", chain)
            chain = [(number, piece)]
        previous = (number, end)
    if len(chain) > 1:
        yield _Joined("split into joined string pieces", chain)
    if len(literals) > 1:
        yield _Joined("split into string pieces", [(n, p) for n, p, _, _ in literals])
    if len(run) > 1:
        yield _Joined(f"split across lines {run[0][0]}-{run[-1][0]}",
                      [(n, t.strip().rstrip("\\")) for n, t in run])


def _joins(run: Sequence[tuple[int, str]], after: tuple[int, int], before: tuple[int, int]
           ) -> bool:
    """Whether only joiners stand between the end of one literal and the start of the next."""
    first = run[0][0]
    (line_a, end), (line_b, start) = after, before
    if line_a == line_b:
        return _JOINER.fullmatch(run[line_a - first][1], end, start) is not None
    between = [run[line_a - first][1][end:]]
    between += [t for _, t in run[line_a - first + 1:line_b - first]]
    between.append(run[line_b - first][1][:start])
    return all(_JOINER.fullmatch(t) for t in between)


def _runs(added: Sequence[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    """Runs of consecutive line numbers."""
    run: list[tuple[int, str]] = []
    for number, text in added:
        if run and number != run[-1][0] + 1:
            yield run
            run = []
        run.append((number, text))
    if run:
        yield run


# --- one change ------------------------------------------------------------------------------

class _Collector:
    """Findings of one verification: deduplicated per file and secret, allowlist applied."""

    def __init__(self, allow: Allowlist | None) -> None:
        self.allow = allow
        self.findings: list[SecretFinding] = []
        self._seen: set[tuple[str, int, str]] = set()
        self._seen_in_file: set[tuple[str, str]] = set()

    @property
    def full(self) -> bool:
        return len(self.findings) >= MAX_FINDINGS

    def add(self, kind: str, secret: str, *, file: str, line: int, context: str,
            where: str = "", once_per_file: bool = False) -> None:
        if self.full or (file, secret) in self._seen_in_file and (
                once_per_file or (file, line, secret) in self._seen):
            return
        finding = SecretFinding(kind=kind, file=file, line=line, redacted=redact(secret),
                                fingerprint=fingerprint(secret), where=where)
        self._seen.add((file, line, secret))
        self._seen_in_file.add((file, secret))
        if self.allow is None or not self.allow.allows(finding, context):
            self.findings.append(finding)

    def known(self, file: str, secret: str) -> bool:
        return (file, secret) in self._seen_in_file


def _scan_name(change: StagedChange, out: _Collector) -> None:
    name = change.path
    for kind, secret in scan_line(name):
        out.add(kind, secret, file=name, line=0, context=name, where="in the file name",
                once_per_file=True)
    for kind, secret, how in _known_in_decoded(name):
        out.add(kind, secret, file=name, line=0, context=name,
                where=f"in the file name, {how}", once_per_file=True)


def _binary_views(data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "in binary content", data
    if b"\0" in data:
        # ASCII stored as UTF-16 (either byte order): every other byte.
        yield "in binary content as UTF-16", data[0::2]
        yield "in binary content as UTF-16", data[1::2]
    budget = _MAX_INFLATED_BYTES
    for how, inflated in _inflated(data, budget):
        yield f"in binary content, {how}", inflated


def _inflated(data: bytes, budget: int) -> Iterator[tuple[str, bytes]]:
    """Decompressed forms of gzip data, zip members and zlib streams (PNG text and image
    chunks, PDF streams), never more than ``budget`` bytes in all."""
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist():
                    if budget <= 0:
                        return
                    with archive.open(info) as member:
                        content = member.read(budget)
                    budget -= len(content)
                    yield f"in zip member {info.filename}", content
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError):
            pass
        return
    starts = [0] if data.startswith(b"\x1f\x8b") else []
    starts += [m.start() for m in re.finditer(rb"\x78[\x01\x5e\x9c\xda]", data)]
    for start in starts[:_MAX_ZLIB_STREAMS]:
        if budget <= 0:
            return
        wbits = 31 if start == 0 and data.startswith(b"\x1f\x8b") else 15
        inflater = zlib.decompressobj(wbits)
        try:
            content = inflater.decompress(data[start:], budget)
        except zlib.error:
            continue
        if content:
            budget -= len(content)
            yield "gzip-compressed" if wbits == 31 else "zlib-compressed", content


def _secrets_in_binary(data: bytes) -> Iterator[tuple[str, str, str, str]]:
    """(kind, secret, how, context) for every credential in binary content."""
    for how, view in _binary_views(data):
        text = _text(view)
        for match in find_credentials(text):
            context = text[max(0, match.start - _CONTEXT_BYTES):match.end + _CONTEXT_BYTES]
            yield match.kind, match.secret, f"{how} at byte {match.start}", context
        for kind, secret, decoded in _known_in_decoded(text):
            yield kind, secret, f"{how}, {decoded}", secret


def _scan_binary(change: StagedChange, new: bytes, out: _Collector) -> None:
    already = ({secret for _, secret, _, _ in _secrets_in_binary(change.old)}
               if change.old is not None else set())
    for kind, secret, how, context in _secrets_in_binary(new):
        if secret not in already:
            out.add(kind, secret, file=change.path, line=0, context=context, where=how,
                    once_per_file=True)


def _added_lines(new: str, old: str | None) -> list[tuple[int, str]]:
    """(line number, text) of the lines of ``new`` that ``old`` does not have: what the batch
    added (a line that moved is not new; nor is a secret that was already there)."""
    before = set(_lines(old)) if old is not None else set()
    return [(n, t) for n, t in enumerate(_lines(new), start=1) if t not in before]


def _lines(text: str) -> list[str]:
    # Only "\n" ends a line (as for git and editors): splitlines() would also split at form
    # feeds and U+2028, and the line numbers would no longer match the file.
    return [t.removesuffix("\r") for t in text.split("\n")]


def _scan_text(change: StagedChange, new: str, out: _Collector) -> None:
    old = change.old.decode("utf-8", "replace") if change.old is not None else None
    added = _added_lines(new, old)
    file = change.path
    for number, text in added:
        for kind, secret in scan_line(text):
            out.add(kind, secret, file=file, line=number, context=text)
        for kind, secret, how in _known_in_decoded(text):
            if not out.known(file, secret):
                out.add(kind, secret, file=file, line=number, context=text, where=how)
    for run in _runs(added):
        for joined in _joined_forms(run):
            for match in find_credentials(joined.text):
                if not out.known(file, match.secret):
                    out.add(match.kind, match.secret, file=file,
                            line=joined.line_at(match.start), context=joined.text,
                            where=joined.how)
            for kind, secret, decoded in _known_in_decoded(joined.text):
                if not out.known(file, secret):
                    out.add(kind, secret, file=file, line=joined.first_line,
                            context=joined.text, where=f"{joined.how}, {decoded}")


def scan_commit(changes: Iterable[StagedChange], allow: Allowlist | None = None
                ) -> list[SecretFinding]:
    """Findings in what will be committed (see the module docstring), minus those the
    allowlist accepts; at most :data:`MAX_FINDINGS`. A file that was too large to read is a
    finding of its own (``unscanned_file``): it cannot be committed unseen."""
    out = _Collector(allow)
    for change in changes:
        if out.full:
            break
        _scan_name(change, out)
        if change.new is None:
            finding = SecretFinding(
                kind="unscanned_file", file=change.path, line=0,
                redacted=f"({change.size_bytes} bytes)",
                fingerprint=fingerprint(change.path),
                where=f"{change.size_bytes} bytes, over the scan limit")
            if allow is None or not allow.allows(finding, change.path):
                out.findings.append(finding)
        elif is_binary(change.new):
            _scan_binary(change, change.new, out)
        else:
            _scan_text(change, change.new.decode("utf-8"), out)
    return out.findings
