"""Line scanner: turns Markdown text into classified lines and a tree of heading sections.

One linear pass, no regex that can backtrack badly: every dialect parser works on the output of
:func:`scan`, so fenced code, HTML comments and template instructions are dealt with once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from buildrunnerd.spec._text import split_label

__all__ = ["Line", "Section", "CodeLine", "scan", "build_sections"]

# Kinds of line the dialect parsers care about. Code, comments and instructions are dropped.
HEADING = "heading"
ITEM = "item"
TEXT = "text"
BLANK = "blank"
TAG = "tag"
RULE = "rule"

# XML-ish blocks whose content explains how to fill in a template (taskmaster's RPG PRD): they
# describe a spec, they are not one, so their lines are dropped like code.
_SKIPPED_TAGS = frozenset({"instruction", "example", "rpg-method"})
_MAX_TAG_NAME = 40


@dataclass(slots=True)
class Line:
    """One significant source line. ``number`` is 1-based, as editors show it."""

    kind: str
    number: int
    text: str  # heading title, item text (after marker and checkbox), or the stripped line
    level: int = 0  # heading level 1-6
    indent: int = 0  # item indentation in columns (a tab counts 4)
    ordered: bool = False  # item marker "1." rather than "-"
    checked: bool | None = None  # "- [ ]" -> False, "- [x]" -> True, no checkbox -> None
    optional: bool = False  # Kiro's optional task "- [ ]* 2.3"
    region: str = ""  # innermost open XML-ish tag (taskmaster PRDs), "" outside any


@dataclass(slots=True)
class Section:
    """A heading and the lines up to the next heading; ``children`` are deeper headings."""

    title: str
    level: int
    number: int  # line of the heading (0 for the synthetic root)
    region: str = ""
    body: list[Line] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)
    parent: Section | None = None

    def walk(self) -> list[Section]:
        """This section and every section below it, in document order."""
        out: list[Section] = []
        stack: list[Section] = [self]
        while stack:
            sec = stack.pop()
            out.append(sec)
            stack.extend(reversed(sec.children))
        return out

    def all_lines(self) -> list[Line]:
        """Body lines of this section and all its descendants, headings included, in order."""
        out: list[Line] = []
        for sec in self.walk():
            if sec.number:
                out.append(Line(HEADING, sec.number, sec.title, level=sec.level, region=sec.region))
            out.extend(sec.body)
        return out


def _indent_width(raw: str) -> tuple[int, int]:
    """(columns, characters) of leading whitespace."""
    cols = 0
    n = 0
    for ch in raw:
        if ch == " ":
            cols += 1
        elif ch == "\t":
            cols += 4 - cols % 4
        else:
            break
        n += 1
    return cols, n


def _fence(stripped: str) -> tuple[str, int] | None:
    """The fence character and length if the line opens/closes a fenced code block."""
    if not stripped or stripped[0] not in "`~":
        return None
    ch = stripped[0]
    n = len(stripped) - len(stripped.lstrip(ch))
    if n < 3:
        return None
    if ch == "`" and "`" in stripped[n:]:
        return None  # an inline code span such as ```a``` on one line is not a fence
    return ch, n


def _heading(stripped: str) -> tuple[int, str] | None:
    n = len(stripped) - len(stripped.lstrip("#"))
    if n < 1 or n > 6:
        return None
    rest = stripped[n:]
    if rest and rest[0] not in " \t":
        return None
    title = rest.strip()
    # A closing sequence of #s is decoration ("## Title ##"), but "# C#" keeps its #.
    trimmed = title.rstrip("#")
    if trimmed != title and (not trimmed or trimmed[-1] in " \t"):
        title = trimmed.rstrip()
    return n, title


def _item(stripped: str) -> tuple[bool, str] | None:
    """(ordered, text) if the line is a list item."""
    if len(stripped) >= 2 and stripped[0] in "-*+" and stripped[1] in " \t":
        return False, stripped[2:].strip()
    if stripped == "-" or stripped == "*":
        return False, ""
    i = 0
    while i < len(stripped) and i < 9 and stripped[i].isascii() and stripped[i].isdigit():
        i += 1
    if 0 < i < len(stripped) and stripped[i] in ".)" and (
        i + 1 == len(stripped) or stripped[i + 1] in " \t"
    ):
        return True, stripped[i + 1 :].strip()
    return None


def _checkbox(text: str) -> tuple[bool | None, str, bool]:
    """(checked, text after the box, optional)."""
    if len(text) >= 3 and text[0] == "[" and text[2] == "]" and text[1] in " xX-~":
        rest = text[3:]
        if not rest or rest[0] in " \t*":
            # Kiro marks optional tasks "- [ ]* 2.3"; the star is not part of the title.
            optional = rest.startswith("*") and not rest.startswith("**")
            if optional:
                rest = rest[1:]
            # "[-]" / "[~]": started, not done.
            return text[1] in "xX", rest.strip(), optional
    return None, text, False


def _is_rule(stripped: str) -> bool:
    compact = stripped.replace(" ", "")
    return len(compact) >= 3 and compact[0] in "-*_" and compact == compact[0] * len(compact)


def _tag(stripped: str) -> tuple[str, bool] | None:
    """(name, closing) for a line that is just ``<name ...>`` or ``</name>``."""
    if len(stripped) < 3 or stripped[0] != "<" or stripped[-1] != ">" or stripped.startswith("<!"):
        return None
    inner = stripped[1:-1].strip()
    closing = inner.startswith("/")
    if closing:
        inner = inner[1:]
    name = inner.split(None, 1)[0] if inner else ""
    if (
        not name
        or len(name) > _MAX_TAG_NAME
        or not name[0].isascii()
        or not name[0].isalpha()
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    ):
        return None
    return name.lower(), closing


_ITEM_FIRST = frozenset("-*+0123456789")  # what an item marker can start with (see _item)


@dataclass(slots=True)
class CodeLine:
    """A line inside a fenced code block, kept for layout hints (file trees, path lists)."""

    number: int
    info: str  # the fence's info string, lowercased: "swift", "bash", "" ...
    block: int  # which fenced block of the document (0, 1, ...)
    text: str  # the raw line, trailing whitespace removed


def _continues(stripped: str) -> bool:
    """Whether a text line right after a list item continues it (a wrapped sentence), rather
    than being a labelled line of its own (``Priority: high``, ``_Requirements: 1.2_``)."""
    labelled = split_label(stripped)
    return labelled is None or len(labelled[0].split()) > 3


def scan(text: str, code: list[CodeLine] | None = None) -> list[Line]:
    """Classify every significant line of ``text``.

    Dropped: fenced code blocks (so ``# comment`` in a shell snippet is not a heading), HTML
    comments, template instructions (``<instruction>``/``<example>`` blocks) and bracketed
    placeholder paragraphs (``[Describe the feature here ...]``) that span several lines.
    Fenced lines go to ``code`` when it is given. A list item wrapped over several lines is
    one item: the wrapped lines are joined to its text.
    """
    out: list[Line] = []
    fence: tuple[str, int] | None = None
    fence_info = ""
    blocks = 0
    last_item: Line | None = None  # the item the next text line may continue
    in_comment = False
    in_placeholder = False
    skip_depth = 0
    regions: list[str] = []
    raw_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    front_matter = bool(raw_lines) and raw_lines[0].strip() == "---"
    for number, raw in enumerate(raw_lines, start=1):
        stripped = raw.strip()
        if front_matter:
            # YAML front matter ("---" ... "---" on the first lines) is metadata, not prose.
            if number > 1 and stripped in ("---", "..."):
                front_matter = False
            continue
        if fence is not None:
            f = _fence(stripped)
            if f is not None and f[0] == fence[0] and f[1] >= fence[1] and not stripped.lstrip(
                f[0]
            ).strip():
                fence = None
                blocks += 1
            elif code is not None:
                code.append(CodeLine(number, fence_info, blocks, raw.rstrip()))
            continue
        if in_comment:
            if "-->" in stripped:
                in_comment = False
            continue
        if stripped.startswith("<!--"):
            in_comment = "-->" not in stripped[4:]
            continue
        # Each line kind has its own first character: test that before calling its parser
        # (a 1 MB spec has tens of thousands of lines, most of them plain text or items).
        first = stripped[:1]
        tag = _tag(stripped) if first == "<" else None
        if tag is not None:
            name, closing = tag
            if name in _SKIPPED_TAGS:
                skip_depth = max(0, skip_depth - 1) if closing else skip_depth + 1
            elif skip_depth == 0:
                if closing:
                    if name in regions:
                        # Close up to the matching tag; tolerates unclosed inner tags.
                        del regions[len(regions) - 1 - regions[::-1].index(name) :]
                else:
                    regions.append(name)
                out.append(Line(TAG, number, ("/" if closing else "") + name))
            continue
        if skip_depth:
            continue
        f = _fence(stripped) if first == "`" or first == "~" else None
        if f is not None:
            fence = f
            fence_info = stripped.lstrip(f[0]).strip().split(" ", 1)[0].lower()
            last_item = None
            continue
        region = regions[-1] if regions else ""
        if not stripped:
            in_placeholder = False
            last_item = None
            out.append(Line(BLANK, number, "", region=region))
            continue
        head = _heading(stripped) if first == "#" else None
        if head is not None:
            in_placeholder = False
            last_item = None
            out.append(Line(HEADING, number, head[1], level=head[0], region=region))
            continue
        if in_placeholder:
            if stripped.endswith("]"):
                in_placeholder = False
            continue
        if stripped[0] == "[" and "]" not in stripped:
            in_placeholder = True
            continue
        if (first == "-" or first == "*" or first == "_") and _is_rule(stripped):
            last_item = None
            out.append(Line(RULE, number, "", region=region))
            continue
        item = _item(stripped) if first in _ITEM_FIRST else None
        if item is not None:
            cols, _ = _indent_width(raw)
            checked, body, optional = _checkbox(item[1])
            last_item = Line(ITEM, number, body, indent=cols, ordered=item[0], checked=checked,
                             optional=optional, region=region)
            out.append(last_item)
            continue
        if last_item is not None and last_item.text and _continues(stripped):
            last_item.text = f"{last_item.text} {stripped}"
            continue
        last_item = None
        out.append(Line(TEXT, number, stripped, region=region))
    return out


def build_sections(lines: list[Line]) -> Section:
    """The heading tree: a synthetic level-0 root holding everything."""
    root = Section(title="", level=0, number=0)
    stack: list[Section] = [root]
    for line in lines:
        if line.kind == HEADING:
            while stack[-1].level >= line.level:
                stack.pop()
            sec = Section(line.text, line.level, line.number, region=line.region, parent=stack[-1])
            stack[-1].children.append(sec)
            stack.append(sec)
        else:
            stack[-1].body.append(line)
    return root
