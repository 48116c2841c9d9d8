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

import binascii
import bisect
import hashlib
import io
import itertools
import math
import re
import string
import urllib.parse
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import msgspec

from buildrunnerd.credentials import find_credentials, iter_credentials
from buildrunnerd.workspace._allowlist import ALLOWLIST_FILENAME, Allowlist

__all__ = [
    "SecretFinding", "StagedChange", "scan_commit", "scan_line", "fingerprint", "redact",
    "shannon_entropy", "is_binary", "MAX_FINDINGS",
]

# A quoted value assigned to a name that says it is secret: ``api_key = "..."``,
# ``"password": "..."``, ``TOKEN: '...'``, ``export SECRET="..."``. Found value first (a quote
# is a literal the regex engine can skip to), then the name is checked right before it.
_QUOTED_VALUE = re.compile(r"""(["'`])([^"'`\s]{16,})\1""")
_SECRET_NAME = re.compile(
    r"(?i)secret|token|passw(?:or)?d|pwd|api[_\-]?key|access[_\-]?key|private[_\-]?key"
    r"|auth[_\-]?key|credential|key")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_OPERATORS = (":=", "=>", "==", "=", ":")
_NAME_WINDOW = 128


def _secret_name_before(text: str, quote: int) -> bool:
    """Whether ``name = `` / ``"name": `` / ``name:`` stands right before ``text[quote]``,
    with a name that says it is secret. Parsed backwards by hand: a regex anchored at the
    end would be tried at every start position of the window."""
    before = text[max(0, quote - _NAME_WINDOW):quote].rstrip()
    operator = next((op for op in _OPERATORS if before.endswith(op)), None)
    if operator is None:
        return False
    before = before[: -len(operator)].rstrip()
    if before.endswith(("'", '"')):
        before = before[:-1]
    end = len(before)
    start = end
    while start > 0 and before[start - 1] in _NAME_CHARS:
        start -= 1
    return start < end and _SECRET_NAME.search(before, start, end) is not None
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
_ZLIB_HEADER = re.compile(rb"\x78[\x01\x5e\x9c\xda]")  # zlib's CMF/FLG byte pairs
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


def scan_text(text: str) -> Iterator[tuple[str, str, int]]:
    """Every (kind, secret, offset) in ``text``: known patterns, and random-looking values
    assigned to a name that says it is secret."""
    seen: set[str] = set()
    for match in iter_credentials(text):
        seen.add(match.secret)
        yield match.kind, match.secret, match.start
    for m in _QUOTED_VALUE.finditer(text):
        value = m.group(2)
        if value in seen or any(value in s or s in value for s in seen):
            continue
        quote = m.start()
        if _looks_random(value) and _secret_name_before(text, quote):
            seen.add(value)
            yield "high_entropy_assignment", value, m.start(2)


def scan_line(text: str) -> Iterator[tuple[str, str]]:
    """Every (kind, secret) in one line of text (see :func:`scan_text`)."""
    for kind, secret, _ in scan_text(text):
        yield kind, secret


# --- decoded forms ---------------------------------------------------------------------------

# Long enough for the shortest key of the table (a 15-character Slack token) once encoded.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{20,}={0,2}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{20,}")
_ESCAPED_HEX_RUN = re.compile(r"(?:\\x[0-9a-fA-F]{2}){10,}")
_DECIMAL_LIST = re.compile(r"\d{1,3}, ?\d{1,3}, ?(?:\d{1,3}, ?){7,}\d{1,3}")
_HEX_LIST = re.compile(r"(?:0x[0-9a-fA-F]{1,2}, ?){9,}0x[0-9a-fA-F]{1,2}")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def _text(data: bytes) -> str:
    # latin-1 maps every byte to one character: patterns (all ASCII) match as in the bytes.
    return data.decode("latin-1")


_URLSAFE = str.maketrans("-_", "+/")


def _base64_views(run: str, *, alignments: int = 4) -> Iterator[bytes]:
    # A key embedded in a longer run may start at any of four alignments.
    core = run.rstrip("=").translate(_URLSAFE)
    for skip in range(alignments):
        piece = core[skip:]
        if len(piece) < 16:
            break
        piece = piece[: len(piece) // 4 * 4] if skip else piece + "=" * (-len(piece) % 4)
        try:
            yield binascii.a2b_base64(piece)
        except (binascii.Error, ValueError):
            continue


def _decoded_segments(text: str) -> Iterator[tuple[str, str, int]]:
    """(how, decoded text, offset of the encoded stretch) for every encoded stretch of
    ``text`` that decodes."""
    decoded_lines: set[int] = set()
    for m in _PERCENT.finditer(text):
        # URL-encoding mixes plain and %XX characters: decode the whole line around it.
        start = text.rfind("\n", 0, m.start()) + 1
        if start in decoded_lines:
            continue
        decoded_lines.add(start)
        end = text.find("\n", m.end())
        line = text[start:end if end >= 0 else len(text)]
        yield "URL-encoded", urllib.parse.unquote(line, encoding="latin-1"), start
    for m in _BASE64_RUN.finditer(text):
        run = m.group()
        # Base64 of a key mixes cases; snake_case and kebab-case words do not.
        if run.islower() or run.isupper():
            continue
        for data in _base64_views(run):
            yield "base64-encoded", _text(data), m.start()
        if "/" in run:
            # "/" is base64 and a path separator: "cache/<base64>" piece by piece too.
            for piece in run.split("/"):
                for data in _base64_views(piece, alignments=1):
                    yield "base64-encoded", _text(data), m.start()
    for m in _HEX_RUN.finditer(text):
        run = m.group()
        for skip in (0, 1):  # a run may start one digit before the encoded bytes
            digits = run[skip:]
            yield "hex-encoded", _text(bytes.fromhex(digits[: len(digits) // 2 * 2])), m.start()
    # The substring tests are cheap; these rarely occur at all.
    if "\\x" in text:
        for m in _ESCAPED_HEX_RUN.finditer(text):
            yield "hex-escaped", _text(bytes.fromhex(m.group().replace("\\x", ""))), m.start()
    lists = [*_DECIMAL_LIST.finditer(text), *(_HEX_LIST.finditer(text) if "0x" in text else ())]
    for m in lists:
        values = [int(v, 0) for v in m.group().replace(" ", "").split(",")]
        if all(v < 256 for v in values):
            yield "a list of byte values", _text(bytes(values)), m.start()


def _known_in_segments(segments: Sequence[tuple[str, str, int]]
                       ) -> Iterator[tuple[str, str, str, int]]:
    # One pattern pass over all segments glued together (no pattern matches across "\n"),
    # not one per segment: a minified bundle has tens of thousands of them.
    if not segments:
        return
    starts: list[int] = []
    offset = 0
    for _, decoded, _ in segments:
        starts.append(offset)
        offset += len(decoded) + 1
    glued = "\n".join(decoded for _, decoded, _ in segments)
    for match in iter_credentials(glued):
        how, _, where = segments[bisect.bisect_right(starts, match.start) - 1]
        yield match.kind, match.secret, how, where


def _known_in_decoded(text: str) -> Iterator[tuple[str, str, str, int]]:
    """(kind, secret, how, offset in ``text``) for known credentials in the decoded forms of
    ``text``, decoded once or twice (base64 of a hex string, URL-encoded base64...)."""
    first = list(_decoded_segments(text))
    yield from _known_in_segments(first)
    second = [(f"{inner}, then {how}", again, where)
              for how, decoded, where in first if decoded.isprintable()
              for inner, again, _ in _decoded_segments(decoded)]
    yield from _known_in_segments(second)


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

    # Distinct secrets remembered per file, allowlisted ones included: past this a file is
    # not worth looking at further (its findings are capped anyway).
    _MAX_SECRETS_PER_FILE = 4 * MAX_FINDINGS

    def __init__(self, allow: Allowlist | None) -> None:
        self.allow = allow
        self.findings: list[SecretFinding] = []
        self._lines: set[tuple[str, int, str]] = set()
        self._secrets: dict[str, set[str]] = {}

    @property
    def full(self) -> bool:
        return len(self.findings) >= MAX_FINDINGS

    def add(self, kind: str, secret: str, *, file: str, line: int, context: str,
            where: str = "", once_per_file: bool = False) -> None:
        secrets = self._secrets.setdefault(file, set())
        if self.full or len(secrets) >= self._MAX_SECRETS_PER_FILE:
            return
        if secret in secrets and (once_per_file or (file, line, secret) in self._lines):
            return
        self._lines.add((file, line, secret))
        secrets.add(secret)
        finding = SecretFinding(kind=kind, file=file, line=line, redacted=redact(secret),
                                fingerprint=fingerprint(secret), where=where)
        if self.allow is None or not self.allow.allows(finding, context):
            self.findings.append(finding)

    def known(self, file: str, secret: str) -> bool:
        """Whether ``secret``, or a secret it contains, was already found in ``file``: a
        joined form that runs a known key into the next piece names nothing new."""
        secrets = self._secrets.get(file, set())
        return secret in secrets or any(s in secret for s in secrets)


def _scan_name(change: StagedChange, out: _Collector) -> None:
    name = change.path
    for kind, secret in scan_line(name):
        out.add(kind, secret, file=name, line=0, context=name, where="in the file name",
                once_per_file=True)
    for kind, secret, how, _ in _known_in_decoded(name):
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
    gzip = data.startswith(b"\x1f\x8b")
    starts = [0] if gzip else []
    starts += [m.start() for m in itertools.islice(_ZLIB_HEADER.finditer(data), _MAX_ZLIB_STREAMS)]
    view = memoryview(data)  # no copy of the blob per candidate stream
    for start in starts[:_MAX_ZLIB_STREAMS]:
        if budget <= 0:
            return
        wbits = 31 if start == 0 and gzip else 15
        inflater = zlib.decompressobj(wbits)
        try:
            content = inflater.decompress(view[start:], budget)
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
        for kind, secret, decoded, offset in _known_in_decoded(text):
            context = text[max(0, offset - _CONTEXT_BYTES):offset + _CONTEXT_BYTES]
            yield kind, secret, f"{how}, {decoded} at byte {offset}", context


def _scan_binary(change: StagedChange, new: bytes, out: _Collector) -> None:
    already = ({secret for _, secret, _, _ in _secrets_in_binary(change.old)}
               if change.old is not None else set())
    for kind, secret, how, context in _secrets_in_binary(new):
        if secret not in already:
            out.add(kind, secret, file=change.path, line=0, context=context, where=how,
                    once_per_file=True)


def _lines(text: str) -> list[str]:
    # Only "\n" ends a line (as for git and editors): splitlines() would also split at form
    # feeds and U+2028, and the line numbers would no longer match the file.
    return [t.removesuffix("\r") for t in text.split("\n")]


def _scan_text(change: StagedChange, new: str, out: _Collector) -> None:
    """The lines of ``new`` that the old content does not have are what the batch added (a
    line that moved is not new; nor is a secret that was already there). Patterns run over
    the whole text at once, and matches are kept on added lines: one pass of each pattern
    per file, not one per line."""
    file = change.path
    lines = _lines(new)
    before = set(_lines(change.old.decode("utf-8", "replace"))) if change.old else set()
    added = [(n, t) for n, t in enumerate(lines, start=1) if t not in before]
    if not added:
        return
    is_added = {n for n, _ in added}
    starts = [0]
    for raw in new.split("\n")[:-1]:
        starts.append(starts[-1] + len(raw) + 1)

    def line_of(position: int) -> int:
        return bisect.bisect_right(starts, position)

    for kind, secret, position in scan_text(new):
        number = line_of(position)
        if number in is_added:
            out.add(kind, secret, file=file, line=number, context=lines[number - 1])
    for kind, secret, how, position in _known_in_decoded(new):
        number = line_of(position)
        if number in is_added and not out.known(file, secret):
            out.add(kind, secret, file=file, line=number, context=lines[number - 1], where=how)
    for run in _runs(added):
        for joined in _joined_forms(run):
            for match in find_credentials(joined.text):
                if not out.known(file, match.secret):
                    out.add(match.kind, match.secret, file=file,
                            line=joined.line_at(match.start), context=joined.text,
                            where=joined.how)
            for kind, secret, decoded, position in _known_in_decoded(joined.text):
                if not out.known(file, secret):
                    out.add(kind, secret, file=file, line=joined.line_at(position),
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
