"""Small text helpers shared by the dialect parsers: slugs, labels, durations, file paths.

All of them are linear in the length of their input: no regex here has nested or adjacent
overlapping quantifiers, so a hostile 1 MB line cannot make parsing slow.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = [
    "slugify",
    "clean_title",
    "split_label",
    "parse_minutes",
    "strip_duration",
    "CODE_EXTENSIONS",
    "find_files",
    "looks_like_path",
    "split_refs",
    "is_placeholder",
    "marked_done",
    "strip_markup",
    "norm_name",
    "title_aliases",
    "split_priority",
]

_MAX_SLUG = 60
_MAX_TOKEN = 300

_NUMBER_PREFIX = re.compile(
    r"^(?:\d{1,4}(?:\.\d{1,4}){0,3}[.)]|\d{1,4}(?:\.\d{1,4}){1,3}|[A-Za-z]\)"
    r"|\d{1,4}\s{1,3}[—–-])\s+"
)
_FEATURE_PREFIX = re.compile(
    r"^(?:feature|capability|epic|module)(?:\s{0,3}\d{1,4})?\s{0,3}(?::|\.|\s[-–—])\s*", re.I
)
_PRIORITY = re.compile(r"\(\s{0,3}priority:\s{0,3}([^()]{1,20})\)", re.I)
_ALIAS_NUMBER = re.compile(r"^(?:(feature|capability|epic|module)\s{0,3})?(\d{1,4})\b", re.I)
_DURATION = re.compile(
    r"\(\s{0,3}~?\s{0,3}(\d{1,4}(?:\.\d{1,2})?)\s{0,3}(min|mins|minutes|m|h|hr|hrs|hour|hours)\s{0,3}\)",
    re.I,
)
_FILE_TOKEN = re.compile(r"[\w.\-\[\]/@+]{1,300}\.[A-Za-z0-9]{1,8}")
_STATUS_SUFFIX = re.compile(
    r"\s[-–—]\s{1,3}(?:complete[d]?|done|in progress|todo|wip|pending)$"
    r"|(?-i:\s+(?:COMPLETED?|DONE|IN PROGRESS|NEXT PHASE|PLANNED|WIP|TODO|PENDING))$",
    re.I,
)
_DONE_MARK = re.compile(
    r"✅|✔|☑|\[x\]|(?:\s[-–—]\s{1,3}|\s)(?:complete[d]?|done)\s*$|\((?:complete[d]?|done)\)\s*$",
    re.I,
)
# Status marks people put in titles ("✅ Done"); "⚠️" is two code points, both dropped.
_EMOJI_MARKS = dict.fromkeys(map(ord, "✅❌⚠\ufe0f🎯✓✔☐☑⏳🚧🔄📋🚀"))
_NON_WORD = re.compile(r"[\W_]+")
_SLUG_WORD = re.compile(r"[a-z0-9]+")
_LABEL_CHARS = re.compile(r"[\w \-/&'()]{1,60}")


def strip_markup(text: str) -> str:
    """Text without Markdown emphasis markers and status emoji, whitespace collapsed."""
    out = text
    if "*" in out or "_" in out:
        out = out.replace("**", "").replace("__", "")
    if not out.isascii():
        out = out.translate(_EMOJI_MARKS)
    return " ".join(out.split())


@lru_cache(maxsize=16384)
def clean_title(title: str) -> str:
    """A heading or item turned into a feature name: no numbering, emphasis or "Feature:"."""
    out = strip_markup(title)
    out = _NUMBER_PREFIX.sub("", out, count=1)
    out = _FEATURE_PREFIX.sub("", out, count=1)
    out = _STATUS_SUFFIX.sub("", out)
    if out.startswith("`") and out.endswith("`") and out.count("`") == 2:
        out = out[1:-1]
    return out.strip(" :*_-") or out.strip()


def marked_done(title: str) -> bool:
    """A heading that says its work is finished: "Storage ✅", "Login - Done", "API COMPLETED"."""
    return _DONE_MARK.search(title) is not None and "❌" not in title


@lru_cache(maxsize=16384)
def norm_name(name: str) -> str:
    """The key two names are compared by: case, punctuation and spacing do not matter."""
    return _NON_WORD.sub(" ", name.casefold()).strip()


def slugify(name: str, default: str = "feature") -> str:
    """A stable, readable id: lowercase ASCII words joined by '-', at most 60 characters."""
    # "Ünïcode" -> "Unicode": decompose accents and drop the combining marks.
    if not name.isascii():
        name = "".join(
            c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)
        )
    words = _SLUG_WORD.findall(name.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > _MAX_SLUG:
            break
        slug = candidate
    if not slug and words:
        slug = words[0][:_MAX_SLUG]
    return slug or default


def split_label(text: str) -> tuple[str, str] | None:
    """``**Depends on:** a, b`` / ``Priority: high`` / ``**Goal**: x`` -> (label, value).

    The label is lowercased with emphasis removed; ``None`` when the line has no short label.
    """
    head, sep, rest = text.partition(":")
    if not sep or len(head) > 60:
        return None
    label = head.replace("*", "").replace("_", " ").strip()
    if not label or "`" in label or "[" in label or "(" in label and ")" not in label:
        return None
    if _LABEL_CHARS.fullmatch(label) is None:
        return None
    value = rest.strip()
    # "**Label:** value" leaves the closing ** at the start of the value.
    if value.startswith("**"):
        value = value[2:].strip()
    elif value.startswith("*") and not value.startswith("* "):
        value = value[1:].strip()
    return " ".join(label.lower().split()), value


def parse_minutes(text: str) -> int | None:
    """The first duration written as ``(90 min)``, ``(2 hours)``, ``(1.5h)`` in minutes."""
    m = _DURATION.search(text)
    if m is None:
        return None
    amount = float(m.group(1))
    unit = m.group(2).lower()
    minutes = amount if unit.startswith("m") else amount * 60
    return max(1, round(minutes))


def strip_duration(text: str) -> str:
    """``Spec Parser (90 min)`` -> ``Spec Parser``."""
    return _DURATION.sub("", text).strip(" -–—:")


# Extensions of real source, config and doc files. A dotted token without a slash is a file
# only with one of these: `hashlib.scrypt`, `os.path` and `http.server` are Python names.
CODE_EXTENSIONS = frozenset(
    "py pyi ipynb ts tsx js jsx mjs cjs vue svelte astro go rs swift kt kts java scala rb php "
    "c h cc cpp cxx hpp hh cs fs m mm dart ex exs erl hs lua pl r jl zig nim sol "
    "sh bash zsh ps1 bat sql graphql gql proto html htm css scss sass less "
    "md mdx rst adoc txt json jsonc yaml yml toml ini cfg conf env xml csv lock plist "
    "gradle tf hcl dockerfile mk cmake".split()
)
# Framework names that look like files ("Node.js" is a runtime, not a file to create).
_NOT_FILES = frozenset(
    "node.js next.js vue.js nuxt.js express.js react.js angular.js three.js chart.js d3.js "
    "ember.js socket.io nest.js deno.js bun.js alpine.js backbone.js p5.js tailwind.css "
    "asp.net ado.net vb.net".split()
)
_EXTENSIONLESS = frozenset({"Makefile", "Dockerfile", "Procfile", "Gemfile", "Rakefile",
                            "Justfile", "Brewfile", "Vagrantfile", "Jenkinsfile"})


def looks_like_path(token: str) -> bool:
    """A relative file path: a slash or a known extension; never a URL, an absolute or home
    path, a glob, a placeholder or a dotted code name."""
    if not token or len(token) > _MAX_TOKEN or " " in token or "://" in token:
        return False
    if token[0] in "-$<{(~/\\" or token.endswith("/") or "*" in token or ":" in token:
        return False
    if token.lower() in _NOT_FILES or ".." in token.replace("../", "").replace("./", ""):
        return False
    name = token.rsplit("/", 1)[-1]
    if name in _EXTENSIONLESS:
        return "/" in token or name == token
    if "." not in name.strip("."):
        return False
    if _FILE_TOKEN.fullmatch(token) is None:
        return False
    ext = name.rsplit(".", 1)[-1]
    if "/" in token:
        return ext.isalnum() and not ext.isdigit()
    # Without a directory only a real extension counts (`config.json`, not `hashlib.scrypt`),
    # and a capitalised dotted name is a type or a product (`Vue.js`), unless it is a file name
    # people write capitalised (`README.md`, `App.tsx`).
    return ext.lower() in CODE_EXTENSIONS and not name.startswith(".")


def find_files(text: str, *, bare: bool = False) -> list[str]:
    """Paths named in backticks (``src/app.py``); with ``bare``, also unquoted path tokens.

    A "path" has a directory part or a known extension and no spaces; ``POST /api/x``,
    ``hashlib.scrypt``, ``~/.config/x`` and URLs are not. A leading ``./`` is dropped.
    """
    out: list[str] = []
    if "`" in text:
        parts = text.split("`")
        for i in range(1, len(parts) - 1, 2):
            token = parts[i].strip()
            if token.startswith("./"):
                token = token[2:]
            if looks_like_path(token) and token not in out:
                out.append(token)
    else:
        parts = [text]
    if bare:
        for i in range(0, len(parts), 2):
            for raw in parts[i].split():
                token = raw.strip("\"'()[],;:").rstrip(".")
                if token.startswith("./"):
                    token = token[2:]
                if "/" in token and token not in out and looks_like_path(token):
                    out.append(token)
    return out


def split_refs(value: str) -> list[str]:
    """``a, b and c`` / ``[a], [b]`` / ``none`` -> ["a", "b", "c"] / [] (order kept)."""
    cleaned = strip_markup(value).replace("`", "")
    if norm_name(cleaned) in {"", "none", "n a", "na", "nothing", "no dependencies", "no"}:
        return []
    for sep in (";", " and ", " & "):
        cleaned = cleaned.replace(sep, ",")
    refs: list[str] = []
    for part in cleaned.split(","):
        ref = part.strip().strip("[]").strip().rstrip(".").strip()
        if ref and norm_name(ref) not in {"none", "n a"}:
            refs.append(ref)
    return refs


def is_placeholder(name: str) -> bool:
    """A name that is an unfilled template slot: ``[Name]``, ``[Feature name]``, ``<name>``."""
    s = name.strip()
    return len(s) >= 2 and (
        (s[0] == "[" and s[-1] == "]" and s.count("[") == 1)
        or (s[0] == "<" and s[-1] == ">" and s.count("<") == 1)
    )


def title_aliases(title: str) -> list[str]:
    """Other names a numbered heading answers to: "Feature 2: Search" / "2. Search" can be
    named in a dependency as "Feature 2", "2" or by its full heading text."""
    raw = strip_markup(title)
    m = _ALIAS_NUMBER.match(raw)
    if m is None:
        return []
    number = m.group(2)
    kind = (m.group(1) or "feature").lower()
    return [raw, f"{kind} {number}", number]


def split_priority(title: str) -> tuple[str, str | None]:
    """``Browse (Priority: P1) MVP`` -> ("Browse MVP", "P1")."""
    m = _PRIORITY.search(title)
    if m is None:
        return title, None
    return " ".join((title[: m.start()] + title[m.end() :]).split()), m.group(1).strip()
