"""Order stated in prose: "Phases are sequential", "In order:" lists, "Build order" sections.

Each reader adds dependency names to the feature drafts; names are matched verbatim (ignoring
case and punctuation), so prose that names no feature adds nothing.
"""

from __future__ import annotations

import re

from buildrunnerd.spec._features import Draft
from buildrunnerd.spec._scan import HEADING, ITEM, TEXT, Line
from buildrunnerd.spec._text import clean_title, norm_name, strip_markup

__all__ = ["ordered_lists", "sequential_phases"]

_SEQUENTIAL = re.compile(
    r"\bphases (?:are|run|must be (?:done|completed|built)) (?:strictly )?(?:sequential|in order)"
    r"|\bsequential phases\b|\bcomplete each phase before\b"
    r"|\beach phase (?:depends on|builds on|requires|starts after) the previous",
    re.I,
)
_IN_ORDER = re.compile(r"\b(?:in (?:this |the following )?order|in sequence|one after another)"
                       r"\s*:?$", re.I)
_ORDER_HEADING = re.compile(
    r"^(?:(?:recommended|suggested|proposed)\s+)?(?:build|implementation|development|work|"
    r"delivery) (?:order|sequence)\b|^order of (?:implementation|work|development)\b",
    re.I,
)


def sequential_phases(lines: list[Line], drafts: list[Draft]) -> bool:
    """"Phases are sequential": every feature of a phase waits for every feature of the phase
    before it. Returns whether the spec says so (and the drafts have phases)."""
    if not any(ln.kind in (TEXT, ITEM) and _SEQUENTIAL.search(strip_markup(ln.text))
               for ln in lines):
        return False
    groups: dict[str, list[Draft]] = {}
    for draft in drafts:
        if draft.group is not None:
            groups.setdefault(draft.group, []).append(draft)
    ordered = list(groups.values())
    for before, after in zip(ordered, ordered[1:], strict=False):
        for draft in after:
            for dep in before:
                if (dep.name, draft.line) not in draft.dep_refs:
                    draft.dep_refs.append((dep.name, draft.line))
    return len(ordered) > 1


def _mentioned(text: str, names: list[tuple[str, Draft]]) -> Draft | None:
    padded = f" {norm_name(clean_title(text))} "
    for key, draft in names:
        if key and f" {key} " in padded:
            return draft
    return None


def ordered_lists(lines: list[Line], drafts: list[Draft]) -> None:
    """A list introduced by "... in order:" or under a "Build order" heading: each feature it
    names waits for the feature named by the item before it."""
    names = sorted(((norm_name(d.name), d) for d in drafts), key=lambda p: -len(p[0]))
    active = False
    top: int | None = None
    previous: Draft | None = None
    for line in lines:
        if line.kind == HEADING:
            active = bool(_ORDER_HEADING.match(clean_title(line.text)))
            top, previous = None, None
            continue
        if line.kind == TEXT:
            if _IN_ORDER.search(strip_markup(line.text)):
                active, top, previous = True, None, None
            elif top is not None:
                active = False  # prose after the list ends it
            continue
        if line.kind != ITEM or not active or not line.text:
            continue
        if top is None:
            top = line.indent
        if line.indent != top:
            continue
        draft = _mentioned(line.text, names)
        if draft is None:
            continue
        if previous is not None and previous is not draft:
            if (previous.name, line.number) not in draft.dep_refs:
                draft.dep_refs.append((previous.name, line.number))
        previous = draft
