"""Features from heading-structured specs: native PROJECT_SPEC.md, PRDs and plain Markdown.

A feature starts life as a :class:`Draft` (dependencies still written as names); the validator
resolves the names to ids once every feature is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from buildrunnerd.spec._model import Item
from buildrunnerd.spec._scan import BLANK, HEADING, ITEM, TEXT, Line, Section
from buildrunnerd.spec._text import (
    clean_title,
    find_files,
    marked_done,
    norm_name,
    split_label,
    split_refs,
    strip_markup,
    title_aliases,
)

__all__ = [
    "Draft",
    "draft_from_section",
    "drafts_from_items",
    "collect_features",
    "repeated_titles",
    "find_containers",
    "generic_features",
    "prose_dependencies",
    "graph_dependencies",
    "NON_FEATURE",
    "read_lines",
]


# Section titles that hold the features, best first. The first kind found wins.
_CONTAINERS: tuple[re.Pattern[str], ...] = (
    re.compile(
        r"^(?:(?:core|key|main|product|planned|mvp|the)\s+)?(?:features|feature (?:list|set|"
        r"overview|breakdown|priority order|specifications?))\b",
        re.I,
    ),
    re.compile(r"^capabilit(?:y tree|ies)\b", re.I),
    re.compile(r"^user (?:stories|scenarios)\b", re.I),
    re.compile(r"^(?:development |product |implementation )?roadmap\b", re.I),
    re.compile(r"^(?:development|implementation|project|delivery|build)\s+(?:phases|milestones)\b"
               r"|^(?:phases|milestones)$", re.I),
    re.compile(r"^functional requirements\b", re.I),
)
# A child of a container that groups features rather than being one.
_GROUP = re.compile(
    r"^(?:phase|tier|layer|stage|milestone|epic|capability|group|part|release|sprint|week|"
    r"area|category|module group)\b",
    re.I,
)
# Sections that describe the project rather than a feature: prompt context, never features.
# A qualifier in front does not change that ("Project Overview", "Key Technical References").
_NON_FEATURE_RE = re.compile(
    r"^(?:(?:project|product|system|technical|tech|key|general|high[- ]level|implementation|"
    r"important|additional|design|document|architecture|final|quick|brief|executive|"
    r"development|testing|security|performance|related|other|open|known|current|"
    r"non-functional)\s+){0,3}"
    r"(?:overview|introduction|intro|summary|executive summary|background|context|goals?|"
    r"non-goals?|objectives?|glossary|terminology|definitions|references?|"
    r"appendix|appendices|risks?|risks and mitigations|metrics|"
    r"success metrics|success criteria|notes?|license|licen[cs]e & attribution|contact|"
    r"table of contents|contents|tech(?:nology)? stack|status|progress|next steps|faq|"
    r"assumptions|edge cases|key entities|open questions|questions|items requiring "
    r"clarification|changelog|support|acknowledgements|problem statement|target users|"
    r"target audience|personas?|user personas?|out of scope|future enhancements|future work|"
    r"known limitations|limitations|design philosophy|principles|testing strategy|"
    r"test strategy|testing notes|test plan|benefits|migration|timeline|current state|"
    r"architecture|project structure|file structure|directory structure|folder structure|"
    r"(?:the )?vision|examples?|next immediate steps|implementation timeline|"
    r"critical success factors|(?:the )?paradigm|dependencies|installation|usage|"
    r"contributing|deployment|maintenance|development workflow|getting started|constraints|"
    r"requirements? traceability|considerations|decisions|rationale|conventions|"
    r"path conventions|execution order|dependencies (?:&|and) execution order|"
    r"parallel (?:example|opportunities)|implementation strategy|mvp scope|"
    r"review checklist|verification checklist|clarifications|revision history|"
    r"document history|version history|approvals?|sign[- ]off|stakeholders|"
    r"compliance notes|testing|acceptance criteria|risk register|related documents|"
    r"technical approach|(?:[\w-]+\s+)?integration structure|(?:[\w/]+\s+){0,3}recommendations|"
    r"file (?:&|and) repo(?:sitory)? structure|repo(?:sitory)? structure|ux notes|"
    r"non-functional(?: requirements)?(?: / ux notes)?)"
    # The phrase is the whole title, or is followed by a separator, "and ...", or a letter or
    # number ("Appendix A"): "Notes" is a section, "Note taking" a feature.
    r"(?=\s*$|\s*[:\-–—(&,/.]|\s+(?:and|or|for|of)\b|\s+[a-z0-9]{1,2}\b"
    r"|\s+(?:change|changes|analysis|strategy|plan|overview|details|notes|summary|guide|"
    r"process|history|considerations|breakdown|matrix|list|factors|section)\b)"
    # Examples, appendices and glossaries are context whatever follows the word.
    r"|^(?:examples?|sample|appendix|appendices|glossary)\b",
    re.I,
)


class _NonFeature:
    """``NON_FEATURE.match(title)``: the regex above behind a cheap first test. A title can
    only match when its first three letters start some word of the pattern; most feature
    titles ("Store orders", "Search") fail that set lookup and never run the long
    alternation (a 1 MB spec has thousands of headings)."""

    __slots__ = ("_prefixes",)

    def __init__(self) -> None:
        words = re.findall(r"[a-z]{3,}", _NON_FEATURE_RE.pattern.lower())
        self._prefixes = frozenset(w[:3] for w in words)

    def match(self, title: str) -> re.Match[str] | None:
        if title[:3].lower() not in self._prefixes:
            low = title.lower()
            # The alternatives that allow any words in front ("Swift / Architecture
            # Recommendations", "HA Integration Structure").
            if "recommendations" not in low and "integration structure" not in low:
                return None
        return _NON_FEATURE_RE.match(title)


NON_FEATURE = _NonFeature()

_SUBSECTION = re.compile(r"^\d{1,4}\.\d{1,4}")
# A section whose title says it lists things ("Strategy Specifications", "Core Components").
_LIST_PARENT = re.compile(
    r"\b(?:specifications|features|strategies|components|modules|capabilities|services|"
    r"tools|commands|epics|stories|functions|endpoints|screens|pages|integrations)\b",
    re.I,
)
_DEP_LABELS = frozenset(
    {"depends on", "dependencies", "depends", "requires", "dependency", "prerequisites",
     "blocked by"}
)
_REQ_LABELS = frozenset(
    {"requirements", "requirement", "technical requirements", "functional requirements",
     "behavior", "behaviour", "details", "changes", "scope", "tasks"}
)
_CRIT_LABELS = frozenset(
    {"acceptance criteria", "acceptance scenarios", "success criteria", "criteria", "done when",
     "definition of done", "exit criteria", "verification", "acceptance"}
)
_DESC_LABELS = frozenset(
    {"description", "goal", "summary", "purpose", "user story", "why this priority",
     "independent test", "why", "overview"}
)


@dataclass(slots=True)
class Draft:
    """A feature as written, before its dependency names are resolved."""

    name: str
    line: int
    description: list[str] = field(default_factory=list)
    requirements: list[Item] = field(default_factory=list)
    criteria: list[Item] = field(default_factory=list)
    dep_refs: list[tuple[str, int]] = field(default_factory=list)
    priority: str | None = None
    domain: str | None = None
    files: list[str] = field(default_factory=list)
    id_hint: str | None = None  # a preferred id, e.g. "US1"-style refs resolve through it
    aliases: list[str] = field(default_factory=list)  # "Feature 2", "2": see title_aliases
    group: str | None = None  # the phase/tier/milestone heading it was written under
    done_items: int = 0  # requirement or criterion items ticked done ([x]) and left out
    done: bool = False  # the heading marks the whole feature finished ("✅ COMPLETED")

    def add_files(self, text: str, *, bare: bool = False) -> None:
        for path in find_files(text, bare=bare):
            if path not in self.files:
                self.files.append(path)


def _bucket_for(label: str) -> str | None:
    if label in _DEP_LABELS:
        return "deps"
    if label in _REQ_LABELS:
        return "req"
    if label in _CRIT_LABELS or label.startswith(("acceptance", "verification", "success crit")):
        return "crit"
    if label.startswith("file") or label.startswith("tests to") or label == "tests":
        return "files"
    return None


def read_lines(draft: Draft, lines: list[Line], bucket: str = "auto") -> None:
    """Fold a feature's lines into ``draft``: labels switch buckets, items land in them."""
    for line in lines:
        if line.kind == HEADING:
            label = norm_name(clean_title(line.text))
            bucket = _bucket_for(label) or "auto"
            if "`" in line.text:
                draft.add_files(line.text)  # "### Config Flow (`config_flow.py`)"
            continue
        if line.kind not in (TEXT, ITEM):
            continue
        text = line.text
        draft.add_files(text)
        labelled = split_label(text)
        if labelled is not None:
            label, value = labelled
            kind = _bucket_for(label)
            if kind == "deps":
                draft.dep_refs.extend((ref, line.number) for ref in split_refs(value))
                if not value:
                    bucket = "deps"
                continue
            if label == "priority":
                draft.priority = strip_markup(value) or draft.priority
                continue
            if label == "domain":
                draft.domain = strip_markup(value).lower() or draft.domain
                continue
            if label in ("test command", "test cmd"):
                continue  # spec-wide; the parser picks it up
            if label in _DESC_LABELS:
                if value:
                    draft.description.append(strip_markup(value))
                continue
            if kind is None and not value and line.kind == TEXT:
                bucket = "auto"  # "**Worktree A:**": a sub-heading in bold, not content
                continue
            if kind is not None and line.kind == TEXT:
                bucket = kind
                if value and kind in ("req", "crit"):
                    target = draft.requirements if kind == "req" else draft.criteria
                    target.append(Item(strip_markup(value), line.number))
                elif kind == "files":
                    draft.add_files(value, bare=True)
                continue
        if line.kind == TEXT:
            if bucket == "auto" and not draft.requirements and not draft.criteria:
                if text.lower().startswith("depends on "):
                    draft.dep_refs.extend((r, line.number) for r in split_refs(text[11:]))
                else:
                    draft.description.append(strip_markup(text))
            continue
        # A list item.
        if not text:
            continue
        if line.checked and bucket != "deps" and bucket != "files":
            draft.done_items += 1  # "- [x] ..." is already built: nothing to plan
            continue
        if bucket == "deps":
            draft.dep_refs.extend((ref, line.number) for ref in split_refs(text))
        elif bucket == "files":
            draft.add_files(text, bare=True)
        elif bucket == "crit" or (bucket == "auto" and line.checked is not None):
            draft.criteria.append(Item(strip_markup(text), line.number))
        else:
            draft.requirements.append(Item(strip_markup(text), line.number))


def draft_from_section(sec: Section, name: str | None = None) -> Draft:
    """A feature from a heading and everything under it."""
    draft = Draft(name if name is not None else clean_title(sec.title), sec.number)
    draft.aliases = title_aliases(sec.title)
    draft.done = marked_done(sec.title)
    read_lines(draft, sec.body)
    for child in sec.children:
        read_lines(draft, child.all_lines())
    return draft


def _item_name(text: str) -> tuple[str, str]:
    """``**Name** (2 days) - more`` -> ("Name", "(2 days) - more"); plain text -> (text, "")."""
    if text.startswith("**"):
        end = text.find("**", 2)
        if end > 2:
            rest = text[end + 2 :].lstrip(" :-–—")
            return clean_title(text[2:end]), rest
    head, sep, rest = text.partition(": ")
    if sep and len(head) <= 60 and head.count(" ") <= 6:
        return clean_title(head), rest
    return clean_title(text), ""


def _bold_heading(line: Line) -> str | None:
    """``**1. Customizable Trackables**`` alone on a line: a heading written in bold."""
    text = line.text
    if line.kind != TEXT or len(text) < 5 or not text.startswith("**") or not text.endswith("**"):
        return None
    inner = text[2:-2].strip()
    if not inner or "**" in inner or len(inner) > 100 or inner.endswith((":", ".")):
        return None
    return inner


def drafts_from_bold(lines: list[Line]) -> list[Draft]:
    """Features under bold one-line headings (``**1. Trackables**`` then its bullets), when a
    section has at least two of them; else none."""
    marks = [n for n, ln in enumerate(lines) if _bold_heading(ln) is not None]
    if len(marks) < 2:
        return []
    drafts: list[Draft] = []
    for k, start in enumerate(marks):
        end = marks[k + 1] if k + 1 < len(marks) else len(lines)
        head = lines[start]
        name = clean_title(_bold_heading(head) or head.text)
        draft = Draft(name, head.number)
        draft.aliases = title_aliases(_bold_heading(head) or "")
        draft.done = marked_done(head.text)
        read_lines(draft, lines[start + 1 : end])
        drafts.append(draft)
    return drafts


def drafts_from_items(lines: list[Line]) -> list[Draft]:
    """Features written as a list: each outermost item is one, nested items are its details."""
    items = [ln for ln in lines if ln.kind == ITEM and ln.text]
    if not items:
        return []
    top = min(ln.indent for ln in items)
    drafts: list[Draft] = []
    pending: list[Line] = []
    after_gap = False  # prose after a blank line at the list's end is not part of an item
    for line in lines:
        if line.kind == BLANK:
            after_gap = True
            continue
        if line.kind == ITEM and line.indent == top and line.text:
            after_gap = False
            if drafts:
                read_lines(drafts[-1], pending)
            name, rest = _item_name(line.text)
            draft = Draft(name, line.number)
            draft.add_files(line.text)
            if rest:
                draft.description.append(strip_markup(rest))
            drafts.append(draft)
            pending = []
        elif drafts and (line.kind == ITEM or line.kind == TEXT and not after_gap):
            pending.append(line)
    if drafts:
        read_lines(drafts[-1], pending)
    return drafts


def _group_key(title: str) -> list[str]:
    """Names a group can be referred to by: "Tier 2: Enhanced Systems" -> both halves."""
    cleaned = strip_markup(title)
    keys = [norm_name(cleaned)]
    head, sep, _ = cleaned.partition(":")
    if sep:
        keys.append(norm_name(head))
    return keys


# "**Status:** pending", "**Actions:**": a phase written as one piece of work.
_WORK_LABELS = frozenset({"status", "actions", "steps", "deliverables", "output", "outputs",
                          "findings", "goals", "objective", "objectives", "key insights"})
_BDD = re.compile(r"^\W*(?:given|when|then|and|but)\b", re.I)


def _one_feature(lines: list[Line]) -> bool:
    """Lines that describe one feature (a user story, its labelled criteria, Given/When/Then
    steps, a checklist of its work) rather than list several."""
    items = [ln for ln in lines if ln.kind == ITEM and ln.text]
    if items and sum(1 for ln in items if ln.checked is not None) * 2 >= len(items):
        return True  # "- [ ] Implement crypto.py": the phase's work items, not features
    for line in lines:
        if line.kind == TEXT:
            labelled = split_label(strip_markup(line.text))
            if labelled is not None and (
                _bucket_for(labelled[0]) in ("req", "crit") or labelled[0] in _DESC_LABELS
                or labelled[0] in _WORK_LABELS or labelled[0].startswith("user story")
            ):
                return True
        elif line.kind == ITEM and _BDD.match(strip_markup(line.text)):
            return True
    return False


def repeated_titles(sections: list[Section]) -> frozenset[str]:
    """Sub-heading titles that recur under two or more of ``sections`` ("Files to Create" under
    every phase): document structure, not features."""
    seen: dict[str, int] = {}
    for sec in sections:
        for key in {norm_name(clean_title(c.title)) for c in sec.children}:
            seen[key] = seen.get(key, 0) + 1
    return frozenset(k for k, n in seen.items() if n > 1 and k)


def _feature_children(sec: Section, structural: frozenset[str]) -> list[Section]:
    return [c for c in sec.children if not NON_FEATURE.match(clean_title(c.title))
            and norm_name(clean_title(c.title)) not in structural]


def collect_features(sec: Section, structural: frozenset[str] = frozenset()) -> list[Draft]:
    """Features inside a container section: sub-headings, grouped sub-headings, or list items.

    A group ("Phase 1", "Tier 2", "Capability: X") that holds features contributes those; a
    group line such as "Depends on Tier 1" makes every feature of the group depend on every
    feature of the named group. A group whose sub-headings are only structure (the same
    titles under every group) is one feature itself.
    """
    drafts: list[Draft] = []
    groups: dict[str, list[Draft]] = {}
    group_deps: list[tuple[list[Draft], str, int]] = []
    kids = _feature_children(sec, structural)
    inner_structural = repeated_titles(kids)
    for child in kids:
        if _GROUP.match(strip_markup(child.title)):
            if child.children and not _feature_children(child, inner_structural):
                whole = draft_from_section(child)
                whole.group = child.title
                drafts.append(whole)
                continue
            if not child.children and _one_feature(child.body):
                # "### Epic 1: Seed Generation" with a user story and its acceptance
                # criteria: one feature, not one per bullet.
                whole = draft_from_section(child)
                whole.group = child.title
                drafts.append(whole)
                continue
            inner = collect_features(child, inner_structural)
            for draft in inner:
                draft.group = draft.group or child.title
            if inner:
                drafts.extend(inner)
                for key in _group_key(child.title):
                    groups.setdefault(key, inner)
                for line in child.body:
                    text = strip_markup(line.text)
                    if line.kind == TEXT and text.lower().startswith("depends on "):
                        for ref in split_refs(text[11:]):
                            group_deps.append((inner, ref, line.number))
                continue
        drafts.append(draft_from_section(child))
    if not drafts:
        drafts = drafts_from_bold(sec.body) or drafts_from_items(sec.body)
    for members, ref, number in group_deps:
        target = groups.get(norm_name(ref))
        if target is None:
            # Not a group name: leave it to the validator as an ordinary feature reference.
            for draft in members:
                draft.dep_refs.append((ref, number))
            continue
        for draft in members:
            draft.dep_refs.extend((dep.name, number) for dep in target)
    return drafts


def find_containers(root: Section) -> list[Section]:
    """The sections that hold the features, by the first container kind present."""
    sections = [(s, clean_title(s.title)) for s in root.walk()[1:]]
    for pattern in _CONTAINERS:
        found = [s for s, title in sections if pattern.match(title)]
        # A container nested in another one of the same kind is part of it.
        outer = [s for s in found if not any(_is_below(s, o) for o in found if o is not s)]
        if outer:
            return outer
    return []


def _is_below(sec: Section, other: Section) -> bool:
    parent = sec.parent
    while parent is not None:
        if parent is other:
            return True
        parent = parent.parent
    return False


def generic_features(root: Section) -> list[Draft]:
    """Fallback for any Markdown: the sections one level below the title become features.

    A section whose sub-headings are numbered ("### 1. Parser", "### 2. Planner") is a list of
    features itself. A document without headings gives its top-level list items.
    """
    top = root.children
    if len(top) == 1 and top[0].level == 1:
        if not top[0].children:
            # Only a title: the features, if any, are the list under it.
            return drafts_from_items(root.body + top[0].body)
        top = top[0].children
    elif all(s.level == 1 for s in top) and len(top) > 0:
        # Several "#" sections (PRD style): features live one level down if there is one.
        structural = repeated_titles(top)
        nested: list[Section] = []
        for sec in top:
            inner = _feature_children(sec, structural)
            # A section whose sub-headings are all structure is one feature itself.
            nested.extend(inner or ([sec] if sec.children else []))
        top = nested or top
    drafts: list[Draft] = []
    structural = repeated_titles(top)
    for sec in top:
        if NON_FEATURE.match(clean_title(sec.title)):
            continue
        # "### 1. Parser" under a section lists features; "### 4.1. Goal" is a subsection
        # of the numbered feature "4. ...", which stays one feature.
        lists_features = _LIST_PARENT.search(clean_title(sec.title)) is not None
        numbered = [c for c in _feature_children(sec, structural)
                    if c.title[:1].isdigit()
                    and (lists_features or not _SUBSECTION.match(c.title))]
        if len(numbered) >= 2 and len(numbered) == len(sec.children):
            drafts.extend(draft_from_section(c) for c in numbered)
        else:
            drafts.append(draft_from_section(sec))
    if not drafts and not root.walk()[1:]:
        drafts = drafts_from_items(root.body)
    return drafts


def _find_name_mentions(text: str, names: list[tuple[str, Draft]]) -> list[Draft]:
    low = norm_name(text)
    padded = f" {low} "
    return [d for key, d in names if key and f" {key} " in padded]


def prose_dependencies(root: Section, drafts: list[Draft]) -> None:
    """Read a PRD's "Logical Dependency Chain": items naming a feature, with prose such as
    "Depends on Claude API integration and task data structure" below them.

    Prose is fuzzy, so only feature names that appear verbatim (ignoring case) count, and an
    unmatched phrase is not an error.
    """
    names = sorted(((norm_name(d.name), d) for d in drafts), key=lambda p: -len(p[0]))
    exact = {key: d for key, d in reversed(names)}
    for sec in root.walk():
        if sec.level > 2 or "dependenc" not in sec.title.lower():
            continue
        current: Draft | None = None
        for line in sec.all_lines():
            if line.kind == HEADING or (line.kind == ITEM and line.text.startswith("**")):
                key = norm_name(_item_name(line.text)[0])
                # "Command Line Interface" names the feature "Command Line Interface Foundation".
                current = exact.get(key) or next(
                    (d for k, d in names if key and k.startswith(key + " ")), None
                )
                continue
            if current is None or line.kind not in (ITEM, TEXT):
                continue
            text = strip_markup(line.text)
            low = text.lower()
            if not (low.startswith(("depends on", "built on", "built after")) or any(
                w in low for w in ("requires", "needs", "depends on", "after ", "on top of")
            )):
                continue
            for dep in _find_name_mentions(text, names):
                if dep is not current and (dep.name, line.number) not in current.dep_refs:
                    current.dep_refs.append((dep.name, line.number))


def graph_dependencies(lines: list[Line], drafts: list[Draft]) -> list[tuple[int, str]]:
    """An RPG PRD's ``<dependency-graph>``: ``- **module**: Depends on [a, b]`` lines.

    Entries whose module is a feature add dependencies (unknown targets are reported by the
    validator); entries for modules that are not features come back as (line, warning).
    """
    by_name = {norm_name(d.name): d for d in drafts}
    by_name.update({norm_name(d.id_hint): d for d in drafts if d.id_hint})
    warnings: list[tuple[int, str]] = []
    for line in lines:
        if line.region != "dependency-graph" or line.kind != ITEM:
            continue
        labelled = split_label(line.text)
        if labelled is None:
            continue
        module, value = labelled
        low = value.lower()
        if not low.startswith("depends on"):
            continue
        draft = by_name.get(norm_name(module))
        if draft is None:
            warnings.append(
                (line.number, f"dependency graph names module '{module}', which is not a "
                 "feature; its dependencies were ignored")
            )
            continue
        for ref in split_refs(value[len("depends on") :]):
            draft.dep_refs.append((ref, line.number))
    return warnings
