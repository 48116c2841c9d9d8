"""``parse_spec``: bytes or text in, a validated :class:`Spec` out, or one ``SpecError``
carrying every problem found. Recognises the dialect, then hands the lines to its reader."""

from __future__ import annotations

import gc
import re
from pathlib import Path

from buildrunnerd.errors import Problem, SpecError
from buildrunnerd.spec._features import (
    NON_FEATURE,
    Draft,
    collect_features,
    draft_from_section,
    find_containers,
    generic_features,
    graph_dependencies,
    prose_dependencies,
    read_lines,
)
from buildrunnerd.spec._layout import layout_paths
from buildrunnerd.spec._model import Item, Spec, SpecTask, SpecWarning
from buildrunnerd.spec._order import ordered_lists, sequential_phases
from buildrunnerd.spec._resolve import resolve
from buildrunnerd.spec._scan import (
    HEADING,
    ITEM,
    TAG,
    TEXT,
    CodeLine,
    Line,
    Section,
    build_sections,
    scan,
)
from buildrunnerd.spec._tasks import (
    KIRO_TASK,
    PLAN_TASK,
    SPECKIT_TASK,
    TaskPairs,
    kiro_tasks,
    plan_tasks,
    speckit_tasks,
)
from buildrunnerd.spec._text import (
    clean_title,
    norm_name,
    split_label,
    split_priority,
    strip_markup,
)

__all__ = ["parse_spec", "parse_spec_file"]

_MAX_OVERVIEW = 4000
_MAX_CONTEXT = 20000
_MAX_TITLE = 200
_BINARY_SAMPLE = 8192
_MAX_FILE_BYTES = 64 * 1024 * 1024  # a spec is prose; anything larger is not one
_USER_STORY = re.compile(r"^user story\s+(\d{1,4})\b", re.I)
_KIRO_REQUIREMENT = re.compile(r"^requirement\s+(\d{1,4})\b", re.I)
_FR = re.compile(r"^FR-\d{1,5}\b")
_OVERVIEW = re.compile(
    r"^(?:overview|introduction|summary|executive summary|problem statement|purpose)\b", re.I
)
_NO_FEATURES_HINT = (
    "add a '## Features' section with one '### <feature name>' heading (or '- ' item) per "
    "feature; see docs/spec-format.md"
)


def _decode(text: str | bytes) -> tuple[str | None, list[Problem]]:
    """Text ready to scan, or the problems that make it unreadable."""
    if isinstance(text, (bytearray, memoryview)):
        text = bytes(text)
    if isinstance(text, bytes):
        if b"\x00" in text:
            return None, [Problem(None, "binary content (NUL bytes), not a Markdown spec; "
                                  "pass the spec's text file")]
        try:
            decoded = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return None, [Problem(None, f"not UTF-8 text (invalid byte at offset {exc.start}); "
                                  "save the spec as UTF-8")]
    else:
        decoded = text[1:] if text.startswith("\ufeff") else text
    try:
        # A str can hold lone surrogates that no file or JSON message can carry.
        decoded.encode("utf-8")
    except UnicodeEncodeError as exc:
        return None, [Problem(None, f"not valid Unicode text (lone surrogate at offset "
                              f"{exc.start}); save the spec as UTF-8")]
    if "\x00" in decoded:
        return None, [Problem(None, "binary content (NUL characters), not a Markdown spec; "
                              "pass the spec's text file")]
    sample = decoded[:_BINARY_SAMPLE]
    controls = sum(1 for c in sample if (c < " " and c not in "\t\n\r\f") or c == "\x7f")
    if controls > 8 and controls * 20 > len(sample):
        return None, [Problem(None, "binary content (mostly control characters), not a "
                              "Markdown spec; pass the spec's text file")]
    return decoded, []


def _title(lines: list[Line], path: str | None) -> str:
    for line in lines:
        if line.kind == HEADING and line.level == 1 and line.text:
            return strip_markup(line.text)[:_MAX_TITLE]
    for line in lines:
        if line.kind == HEADING:
            break
        if line.kind == TEXT and line.text:
            return strip_markup(line.text)[:_MAX_TITLE]
    if path and Path(path).stem:
        return Path(path).stem
    for line in lines:
        if line.kind == HEADING and line.text:
            return strip_markup(line.text)[:_MAX_TITLE]
    return "Untitled spec"


def _overview(root: Section, lines: list[Line]) -> str:
    for sec in root.walk()[1:]:
        if _OVERVIEW.match(clean_title(sec.title)):
            text = " ".join(ln.text for ln in sec.body if ln.kind in (TEXT, ITEM))
            if text:
                return strip_markup(text)[:_MAX_OVERVIEW]
    # Otherwise the prose before the second heading (the first is usually the title).
    out: list[str] = []
    headings = 0
    for line in lines:
        if line.kind == HEADING:
            headings += 1
            if headings > 1:
                break
        elif line.kind == TEXT:
            label = split_label(line.text)
            if label is None or len(label[1]) > 40:
                out.append(line.text)
    return strip_markup(" ".join(out))[:_MAX_OVERVIEW]


def _context(root: Section) -> str:
    """The project sections' own words (not features), for prompts and the stack."""
    out: list[str] = []
    size = 0
    for sec in root.walk()[1:]:
        if not NON_FEATURE.match(clean_title(sec.title)):
            continue
        for line in sec.body:
            if line.kind in (TEXT, ITEM) and line.text:
                out.append(line.text)
                size += len(line.text) + 1
        if size > _MAX_CONTEXT:
            break
    return strip_markup("\n".join(out))[:_MAX_CONTEXT] if out else ""


def _test_command(lines: list[Line]) -> str | None:
    for line in lines:
        if line.kind in (TEXT, ITEM):
            labelled = split_label(line.text)
            if labelled and labelled[0] in ("test command", "test cmd") and labelled[1]:
                return labelled[1].strip().strip("`").strip() or None
    return None


def _story_features(root: Section, pattern: re.Pattern[str], kind: str) -> list[Draft]:
    """spec-kit ``### User Story 1 - Title (Priority: P1)`` / Kiro ``### Requirement 1``."""
    drafts: list[Draft] = []
    for sec in root.walk()[1:]:
        title = clean_title(sec.title)
        m = pattern.match(title)
        if m is None:
            continue
        name, priority = split_priority(title)
        draft = draft_from_section(sec, name)
        draft.priority = priority
        draft.id_hint = f"US{m.group(1)}" if kind == "speckit" else m.group(1)
        drafts.append(draft)
    return drafts


def _count(lines: list[Line], kinds: tuple[str, ...], pattern: re.Pattern[str], *,
           checkbox: bool = False) -> int:
    n = 0
    for line in lines:
        if line.kind in kinds and (not checkbox or line.checked is not None):
            text = line.text
            # Only emphasis or a status emoji in front can hide a match; skip the copy otherwise.
            if line.kind == ITEM and text and (text[0] == "*" or not text[0].isascii()):
                text = strip_markup(text)
            if pattern.match(text):
                n += 1
    return n


def _enrich(drafts: list[Draft], root: Section) -> None:
    """Give plan groups ("Build A: ...") the goals and criteria written above their tasks."""
    by_line = {sec.number: sec for sec in root.walk()[1:]}
    for draft in drafts:
        sec = by_line.get(draft.line)
        if sec is None:
            continue
        read_lines(draft, sec.body)
        for child in sec.children:
            lines = child.all_lines()
            if not any(ln.kind == HEADING and PLAN_TASK.match(strip_markup(ln.text))
                       for ln in lines):
                read_lines(draft, lines)


def _detect(
    lines: list[Line], root: Section, title: str, code: list[CodeLine]
) -> tuple[str, list[Draft], TaskPairs, list[tuple[int, str]], list[Item], Problem | None]:
    """(format, drafts, tasks, warnings, spec-wide requirements, why-no-features)."""
    warnings: list[tuple[int, str]] = []
    if _count(lines, (ITEM,), SPECKIT_TASK, checkbox=True) >= 1:
        drafts, pairs, warnings = speckit_tasks(lines, code)
        return "speckit", drafts, pairs, warnings, [], None
    if _count(lines, (HEADING,), PLAN_TASK) >= 1:
        drafts, pairs, warnings = plan_tasks(lines, title)
        _enrich(drafts, root)
        return "plan", drafts, pairs, warnings, [], None
    if _count(lines, (ITEM,), KIRO_TASK, checkbox=True) >= 2:
        drafts, pairs, warnings = kiro_tasks(lines)
        return "kiro", drafts, pairs, warnings, [], None
    if _count(lines, (ITEM,), PLAN_TASK) >= 2:
        drafts, pairs, warnings = plan_tasks(lines, title)
        return "tasklist", drafts, pairs, warnings, [], None
    if _count(lines, (HEADING,), _KIRO_REQUIREMENT) >= 1:
        return "kiro", _story_features(root, _KIRO_REQUIREMENT, "kiro"), [], [], [], None
    if _count(lines, (HEADING,), _USER_STORY) >= 1:
        reqs = [
            Item(strip_markup(ln.text), ln.number)
            for ln in lines
            if ln.kind == ITEM and _FR.match(strip_markup(ln.text))
        ]
        drafts = _story_features(root, _USER_STORY, "speckit")
        return "speckit", drafts, [], [], reqs, None
    is_prd = any(ln.kind == TAG for ln in lines) or "prd" in norm_name(title).split() or (
        "product requirements" in title.lower()
    )
    containers = find_containers(root)
    if containers:
        drafts = [d for sec in containers for d in collect_features(sec)]
        if is_prd:
            prose_dependencies(root, drafts)
        sequential_phases(lines, drafts)
        ordered_lists(lines, drafts)
        warnings = graph_dependencies(lines, drafts)
        why = None
        if not drafts:
            first = containers[0]
            why = Problem(
                first.number,
                f"no features found: the '{first.title}' section holds no feature headings or "
                f"list items; {_NO_FEATURES_HINT}",
            )
        return ("prd" if is_prd else "native"), drafts, [], warnings, [], why
    drafts = generic_features(root)
    if is_prd:
        warnings = graph_dependencies(lines, drafts)
    ordered_lists(lines, drafts)
    why = None
    if not drafts:
        headings = root.walk()[1:]
        skipped = [s.title for s in headings if NON_FEATURE.match(clean_title(s.title))]
        if skipped:
            detail = f"only project sections ({', '.join(skipped[:5])})"
        elif headings:
            detail = f"only the title '{headings[0].title}' and prose, no sections or list items"
        else:
            detail = "no headings or list items"
        why = Problem(None, f"no features found: the spec has {detail}; {_NO_FEATURES_HINT}")
    return ("prd" if is_prd else "markdown"), drafts, [], warnings, [], why


def _parse(text: str | bytes, path: str | None) -> Spec:
    decoded, problems = _decode(text)
    if decoded is None:
        raise SpecError(problems, path=path)
    code: list[CodeLine] = []
    lines = scan(decoded, code)
    root = build_sections(lines)
    title = _title(lines, path)
    fmt, drafts, pairs, raw_warnings, reqs, why = _detect(lines, root, title, code)
    done_items = [(d.line, d.done_items) for d in drafts if d.done_items]
    features, all_tasks, problems, warnings = resolve(drafts, pairs)
    if not features:
        problems.insert(0, why or Problem(None, f"no features found; {_NO_FEATURES_HINT}"))
    if problems:
        raise SpecError(problems, path=path)
    tasks, done_tasks = _split_done(all_tasks, warnings)
    done_features = [f for f in features if f.done]
    if done_features and not tasks and not done_tasks:
        warnings.append(SpecWarning(
            done_features[0].line,
            f"{len(done_features)} of {len(features)} features are marked done in their "
            "headings and are not planned: "
            + ", ".join(f.name for f in done_features[:5])
            + (", ..." if len(done_features) > 5 else ""),
        ))
    if done_items:
        warnings.append(SpecWarning(
            done_items[0][0],
            f"{sum(n for _, n in done_items)} requirement or criterion items are ticked done "
            "([x]) and are not planned; untick an item to have it built again",
        ))
    return Spec(
        title=title,
        path=path,
        format=fmt,
        features=features,
        tasks=tasks,
        overview=_overview(root, lines),
        test_command=_test_command(lines),
        warnings=[SpecWarning(n, m) for n, m in raw_warnings] + warnings,
        requirements=reqs,
        done_tasks=done_tasks,
        layout=layout_paths(code),
        code_languages=list(dict.fromkeys(c.info for c in code if c.info)),
        context=_context(root),
    )


def _split_done(
    tasks: list[SpecTask], warnings: list[SpecWarning]
) -> tuple[list[SpecTask], list[SpecTask]]:
    """Tasks still to do, and the ones ticked done (``- [x]``): a done task is not planned and
    nothing waits for it any more."""
    done = [t for t in tasks if t.done]
    if not done:
        return tasks, []
    done_ids = {t.id for t in done}
    todo = [t for t in tasks if not t.done]
    for task in todo:
        task.depends_on = [d for d in task.depends_on if d not in done_ids]
    warnings.append(SpecWarning(
        done[0].line,
        f"{len(done)} of {len(tasks)} tasks are marked done ([x]) and are not planned: "
        + ", ".join(t.id for t in done[:10]) + (", ..." if len(done) > 10 else ""),
    ))
    return todo, done


def parse_spec(text: str | bytes, path: str | None = None) -> Spec:
    """Parse a spec in any supported dialect and validate it.

    ``path`` only names the spec in messages and in ``Spec.path``. Raises
    :class:`~buildrunnerd.errors.SpecError` listing every problem (line and fix hint); no
    other exception escapes, whatever the input.
    """
    # The cyclic collector is paused while parsing: a 1 MB spec allocates hundreds of
    # thousands of small objects that stay alive (lines, sections, items), and the collections
    # they trigger re-scan all of them for nothing (~15% of the parse). The few cycles (a
    # section and its parent) are collected later as usual. Only the caller that found the
    # collector enabled turns it back on, so nested calls leave it as they found it.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(text, path)
    except SpecError:
        raise
    except Exception as exc:  # a parser bug must still reach the user as a clean error
        raise SpecError(
            [Problem(None, f"internal parser error ({type(exc).__name__}: {exc}); "
                     "please report this spec to the BuildRunner maintainers")],
            path=path,
        ) from exc
    finally:
        if was_enabled:
            gc.enable()


def parse_spec_file(path: str | Path) -> Spec:
    """Read and parse a spec file; an unreadable, binary or non-UTF-8 file is a SpecError
    that names the file."""
    name = str(path)
    try:
        p = Path(path)
        size = p.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise SpecError(
                [Problem(None, f"file is {size} bytes, larger than a spec can be "
                         f"({_MAX_FILE_BYTES} bytes); pass the spec's Markdown file")],
                path=name,
            )
        data = p.read_bytes()
    except SpecError:
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SpecError(
            [Problem(None, f"cannot read the spec file ({reason}); check the path and its "
                     "permissions")],
            path=name,
        ) from exc
    return parse_spec(data, path=name)
