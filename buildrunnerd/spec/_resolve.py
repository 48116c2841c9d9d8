"""Validation: feature ids, dependency names -> ids, duplicates, unknown names, cycles.

Every problem is collected (never raised one at a time) so a user fixes a spec in one pass.
"""

from __future__ import annotations

import re

from buildrunnerd.errors import Problem
from buildrunnerd.spec._features import Draft
from buildrunnerd.spec._model import Feature, SpecTask, SpecWarning
from buildrunnerd.spec._text import is_placeholder, norm_name, slugify, strip_markup

__all__ = ["find_cycles", "is_free_text", "resolve"]

_MAX_KNOWN_SHOWN = 8
_MAX_DESCRIPTION = 2000
_DOMAINS = {
    "database": "database", "db": "database", "data": "database", "storage": "database",
    "backend": "backend", "api": "backend", "server": "backend", "back-end": "backend",
    "frontend": "frontend", "ui": "frontend", "front-end": "frontend", "web": "frontend",
    "tests": "tests", "test": "tests", "testing": "tests", "qa": "tests",
    "docs": "docs", "documentation": "docs", "doc": "docs",
    "infra": "infra", "infrastructure": "infra", "devops": "infra", "ops": "infra", "ci": "infra",
}


def _domain(value: str | None, line: int, warnings: list[SpecWarning]) -> str | None:
    """Normalise a ``Domain:`` value to a protocol.Domain; an unknown one is dropped with a
    warning so the planner picks the domain itself."""
    if not value:
        return None
    domain = _DOMAINS.get(value.strip().lower())
    if domain is None:
        warnings.append(SpecWarning(
            line, f"unknown domain '{value}' ignored; use one of database, backend, frontend, "
            "tests, docs, infra",
        ))
    return domain


# "Phase 1 completion", "Setup complete": the thing named, not its state.
_STATE_SUFFIX = re.compile(r"\s+(?:phase\s+)?(?:completion|complete|completed|done|finished)$",
                           re.I)
_TASK_PREFIX = re.compile(r"^(?:tasks?|subtasks?)\s+", re.I)
_FREE_TEXT_WORDS = frozenset(
    "no none existing infrastructure blocking needed required immediately start starts can "
    "may should all any other previous prior nothing independent independently tbd".split()
)
_MAX_NAME_WORDS = 6


def is_free_text(ref: str) -> bool:
    """A dependency value that is a remark ("Existing infrastructure - no blocking setup
    needed") rather than the name of a feature or task."""
    words = norm_name(ref).split()
    return (
        len(words) > _MAX_NAME_WORDS
        or " - " in ref
        or ref.rstrip().endswith((".", "!"))
        or bool(_FREE_TEXT_WORDS.intersection(words))
    )


def _known(ids: list[str]) -> str:
    shown = ", ".join(ids[:_MAX_KNOWN_SHOWN])
    return shown + (", ..." if len(ids) > _MAX_KNOWN_SHOWN else "")


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every elementary cycle a depth-first search meets, each as ids in dependency order
    with the first id repeated at the end; each set of ids is reported once. Iterative, so a
    10,000-feature chain cannot hit the recursion limit."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in graph:
        if color[start] != white:
            continue
        path: list[str] = [start]
        iters = [iter(graph[start])]
        color[start] = grey
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                color[path.pop()] = black
                iters.pop()
                continue
            if nxt not in color:
                continue
            if color[nxt] == grey:
                cycle = path[path.index(nxt) :] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle)
            elif color[nxt] == white:
                color[nxt] = grey
                path.append(nxt)
                iters.append(iter(graph[nxt]))
    return cycles


def resolve(
    drafts: list[Draft], pairs: list[tuple[SpecTask, Draft]]
) -> tuple[list[Feature], list[SpecTask], list[Problem], list[SpecWarning]]:
    """Turn drafts into features with unique ids and resolved dependencies; check it all."""
    problems: list[Problem] = []
    warnings: list[SpecWarning] = []
    ids: list[str] = []
    used: set[str] = set()
    first_by_name: dict[str, Draft] = {}
    for draft in drafts:
        if is_placeholder(draft.name):
            problems.append(Problem(
                draft.line,
                f"feature name '{draft.name}' is an unfilled template placeholder; replace it "
                "with the feature's real name",
            ))
        elif not draft.name.strip():
            problems.append(Problem(draft.line, "a feature has no name; give it a heading text"))
        else:
            # Case and spacing do not make two features different; punctuation does ("C++").
            key = " ".join(draft.name.casefold().split())
            first = first_by_name.get(key)
            if first is not None:
                problems.append(Problem(
                    draft.line,
                    f"duplicate feature name '{draft.name}' (first defined at line {first.line}); "
                    "rename one of them or merge the two sections",
                ))
            else:
                first_by_name[key] = draft
        base = slugify(draft.name)
        fid, n = base, 1
        while fid in used:
            n += 1
            fid = f"{base}-{n}"
        used.add(fid)
        ids.append(fid)

    lookup: dict[str, str] = {}
    for draft, fid in zip(drafts, ids, strict=True):
        # The first feature with a name wins a reference; duplicates were reported above.
        for key in (fid, norm_name(draft.name), norm_name(draft.id_hint or "")):
            if key:
                lookup.setdefault(key, fid)
    for draft, fid in zip(drafts, ids, strict=True):
        lookup.setdefault(slugify(draft.name), fid)
        for alias in draft.aliases:
            lookup.setdefault(norm_name(alias), fid)

    features: list[Feature] = []
    graph: dict[str, list[str]] = {}
    line_of: dict[tuple[str, str], int] = {}
    for draft, fid in zip(drafts, ids, strict=True):
        deps: list[str] = []
        for ref, number in draft.dep_refs:
            target = None
            for name in dict.fromkeys((ref, _STATE_SUFFIX.sub("", ref.strip()))):
                target = (lookup.get(name) or lookup.get(norm_name(name))
                          or lookup.get(slugify(name, "")))
                if target is not None:
                    break
            if target is None and is_free_text(ref):
                warnings.append(SpecWarning(
                    number,
                    f"feature '{draft.name}': the dependency text '{strip_markup(ref)[:120]}' "
                    "names no feature of this spec and was ignored; write feature names "
                    "(or ids) to make it a dependency",
                ))
                continue
            if target is None:
                problems.append(Problem(
                    number,
                    f"feature '{draft.name}' depends on unknown feature '{strip_markup(ref)}'; "
                    f"use the name or id of a feature in this spec (ids: {_known(ids)})",
                ))
                continue
            if target not in deps:
                deps.append(target)
                line_of.setdefault((fid, target), number)
        graph[fid] = deps
        description = " ".join(draft.description)
        features.append(Feature(
            id=fid, name=draft.name, line=draft.line,
            description=description[:_MAX_DESCRIPTION],
            requirements=draft.requirements, acceptance_criteria=draft.criteria,
            depends_on=deps, priority=draft.priority,
            domain=_domain(draft.domain, draft.line, warnings), files=draft.files,
            done=draft.done,
        ))

    for cycle in find_cycles(graph):
        problems.append(Problem(
            line_of.get((cycle[0], cycle[1])),
            f"dependency cycle between features: {' -> '.join(cycle)}; remove one of these "
            "dependencies so the features can be built in order",
        ))

    id_of = {id(d): fid for d, fid in zip(drafts, ids, strict=True)}
    tasks: list[SpecTask] = []
    task_ids = {task.id for task, _ in pairs}
    folded = {tid.casefold(): tid for tid in task_ids}
    for task, draft in pairs:
        task.feature = id_of[id(draft)]
        kept: list[str] = []
        for written in task.depends_on:
            # "Task 1.2" and "t001" name the tasks "1.2" and "T001".
            dep = folded.get(_TASK_PREFIX.sub("", written.strip()).casefold(), written)
            if dep in task_ids and dep != task.id:
                if dep not in kept:
                    kept.append(dep)
            else:
                warnings.append(SpecWarning(
                    task.line,
                    f"task {task.id} depends on '{dep}', which is not a task id in this spec; "
                    "the dependency was dropped",
                ))
        task.depends_on = kept
        if task.domain is not None:
            task.domain = _domain(task.domain, task.line, warnings)
        tasks.append(task)
    return features, tasks, problems, warnings
