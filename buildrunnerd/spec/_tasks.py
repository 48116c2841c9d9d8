"""Explicit task lists, kept as written: spec-kit ``T001``, Kiro ``1.1``, plans ``Task A.1``.

Each reader returns the feature drafts the tasks are grouped under and the tasks paired with
their draft; the parser gives the drafts ids and fills ``SpecTask.feature`` afterwards.
Dependencies come from how each format orders its work (see docs/spec-format.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from buildrunnerd.spec._features import Draft, read_lines
from buildrunnerd.spec._model import Item, SpecTask
from buildrunnerd.spec._scan import HEADING, ITEM, TEXT, CodeLine, Line
from buildrunnerd.spec._text import (
    clean_title,
    find_files,
    parse_minutes,
    split_label,
    split_priority,
    split_refs,
    strip_duration,
    strip_markup,
)

__all__ = [
    "TaskPairs",
    "SPECKIT_TASK",
    "KIRO_TASK",
    "PLAN_TASK",
    "speckit_tasks",
    "kiro_tasks",
    "plan_tasks",
]

TaskPairs = list[tuple[SpecTask, Draft]]

SPECKIT_TASK = re.compile(r"^(T\d{1,5}|TXXX)\b\s*(.*)$")
_PHASE = re.compile(r"^phase\s+(\d{1,4}|[a-z])\b", re.I)
_SPECKIT_MARK = re.compile(r"^\[([A-Za-z]{1,3}\d{0,4})\]\s*")
_SPECKIT_DEPS = re.compile(r"\(\s{0,3}depends on\s{1,3}([^()]{1,200})\)", re.I)
KIRO_TASK = re.compile(r"^(\d{1,4}\.(?:\d{1,4}(?:\.\d{1,4}){0,2}\.?)?)\s+(\S.*)$")
_KIRO_REQS = re.compile(r"^_?requirements?:\s{0,3}(.*?)_?$", re.I)
PLAN_TASK = re.compile(
    r"^(?:task\s+([A-Za-z]{0,3}\d{1,4}(?:[.\-]\d{1,4}){0,3}|[A-Z]{1,3}\.\d{1,4}(?:\.\d{1,4}){0,2})"
    r"|(?-i:([A-Z]{1,3}\d{0,3}\.\d{1,4})))"
    r"\s{0,3}[:\-–—]\s{0,3}(\S.*)$",
    re.I,
)
_TRAILING_PAREN = re.compile(r"\s{0,3}\([^()]{0,80}\)$")
_GENERIC_PARENT = re.compile(
    r"^(?:tasks?|task list|implementation(?: tasks| plan)?|work items|steps|todo|batches)$", re.I
)


def _add_task(
    pairs: TaskPairs, seen: dict[str, int], warnings: list[tuple[int, str]],
    task: SpecTask, draft: Draft,
) -> None:
    """Append, renaming a repeated id ("TXXX" in a template) so every id stays unique."""
    if task.id in seen:
        seen[task.id] += 1
        new_id = f"{task.id}-{seen[task.id]}"
        warnings.append(
            (task.line, f"task id '{task.id}' is used more than once; this one was renamed "
             f"'{new_id}' (give each task its own id)")
        )
        task.id = new_id
    else:
        seen[task.id] = 1
    pairs.append((task, draft))


def _unique_names(drafts: list[Draft]) -> list[Draft]:
    """Task groups are named by the task list, not by a person listing features, so a repeat
    ("5. Checkpoint", "9. Checkpoint" in Kiro) is told apart by its line, not an error."""
    seen: set[str] = set()
    for draft in drafts:
        key = " ".join(draft.name.casefold().split())
        if key in seen:
            draft.name = f"{draft.name} (line {draft.line})"
        seen.add(" ".join(draft.name.casefold().split()))
    return drafts


def speckit_tasks(
    lines: list[Line], code: Sequence[CodeLine] = ()
) -> tuple[list[Draft], TaskPairs, list[tuple[int, str]]]:
    """A spec-kit ``tasks.md``: every ``## Phase N`` is a feature, ``- [ ] T001 ...`` tasks.

    Order as spec-kit means it: user-story phases wait for the last shared phase before them
    and may run side by side; other phases wait for everything before them. Inside a phase a
    task without ``[P]`` waits for the task written before it.
    """
    drafts: list[Draft] = []
    pairs: TaskPairs = []
    seen: dict[str, int] = {}
    warnings: list[tuple[int, str]] = []
    phase: Draft | None = None
    phase_is_story: dict[int, bool] = {}
    phase_tasks: dict[int, list[SpecTask]] = {}
    prev_in_phase: SpecTask | None = None
    current_task: SpecTask | None = None
    phase_notes: list[tuple[Draft, str]] = []  # a phase's own "Dependencies: ..." line
    for line in lines:
        if line.kind == HEADING and line.level <= 2:
            current_task = None
            title = clean_title(line.text)
            if _PHASE.match(title) or phase is not None:
                # "Phase 3: User Story 1 - Browse (Priority: P1) 🎯 MVP"
                name, priority = split_priority(title)
                phase = Draft(name, line.number)
                phase.priority = priority
                drafts.append(phase)
                phase_is_story[id(phase)] = "user story" in title.lower()
                phase_tasks[id(phase)] = []
                prev_in_phase = None
            continue
        if line.kind == ITEM and line.checked is not None:
            m = SPECKIT_TASK.match(line.text)
            if m is None:
                continue
            if phase is None:
                phase = Draft("Tasks", line.number)
                drafts.append(phase)
                phase_is_story[id(phase)] = False
                phase_tasks[id(phase)] = []
            rest = m.group(2)
            parallel = False
            refs: list[str] = []
            while True:
                mark = _SPECKIT_MARK.match(rest)
                if mark is None:
                    break
                if mark.group(1).upper() == "P":
                    parallel = True
                else:
                    refs.append(mark.group(1))
                rest = rest[mark.end() :]
            deps: list[str] = []
            dm = _SPECKIT_DEPS.search(rest)
            if dm is not None:
                deps = [r for r in split_refs(dm.group(1)) if r]
                rest = (rest[: dm.start()] + rest[dm.end() :]).strip()
            task = SpecTask(
                id=m.group(1), title=strip_markup(strip_duration(rest)) or m.group(1),
                line=line.number, feature="", estimate_minutes=parse_minutes(rest),
                files=find_files(rest, bare=True), depends_on=deps, parallel=parallel,
                done=bool(line.checked), requirements=refs,
            )
            if not parallel and prev_in_phase is not None and prev_in_phase.id not in deps:
                task.depends_on = [prev_in_phase.id, *deps]
            _add_task(pairs, seen, warnings, task, phase)
            phase_tasks[id(phase)].append(task)
            prev_in_phase = task
            current_task = task
            continue
        if current_task is not None and line.kind == ITEM and line.indent > 0 and line.text:
            current_task.details.append(Item(strip_markup(line.text), line.number))
        elif phase is not None and line.kind == TEXT:
            read_lines(phase, [line])  # "**Goal**: ...", "**Purpose**: ..." describe the phase
            m = _PHASE_DEPS.search(strip_markup(line.text))
            if m is not None:
                # "**Duration**: 2-3 days | **Dependencies**: Phase 3 + Phase 4 complete"
                phase_notes.append((phase, m.group(1)))
    # Sections without tasks ("## Notes" between phases) are not phases of the work.
    drafts = _unique_names([d for d in drafts if phase_tasks[id(d)]])
    stated = _stated_phase_order(lines, drafts, phase_is_story, phase_notes, code)
    # Phase barriers: the first tasks of a phase wait for the phases it depends on: as the
    # spec's "Dependencies & Execution Order" says, else as spec-kit means it.
    barrier: list[Draft] = []  # phases the next shared phase must wait for
    last_shared: Draft | None = None
    for draft in drafts:
        is_story = phase_is_story[id(draft)]
        waits_for = ([last_shared] if last_shared is not None else []) if is_story else barrier
        waits_for = stated.get(id(draft), waits_for)
        sinks = [t.id for p in waits_for for t in _sinks(phase_tasks[id(p)])]
        for task in phase_tasks[id(draft)]:
            if not any(d in {t.id for t in phase_tasks[id(draft)]} for d in task.depends_on):
                task.depends_on = [*sinks, *(d for d in task.depends_on if d not in sinks)]
        draft.dep_refs.extend((p.name, draft.line) for p in waits_for)
        if is_story:
            barrier.append(draft)
        else:
            last_shared = draft
            barrier = [draft]
    return drafts, pairs, warnings


_PHASE_REF = re.compile(
    r"\bphase\s+(\d{1,3})(\+)?|\b(?:US|user\s+stor(?:y|ies)\s*)(\d{1,3})\b"
    r"|\b(all(?:\s+desired)?\s+user\s+stories|user\s+stories)\b"
    r"|\b(setup|foundational|foundation|polish|final)\b",
    re.I,
)
_AFTER = re.compile(r"\b(?:depends?\s+on|after|requires|blocked\s+by|waits?\s+for|needs)\b",
                    re.I)
_PHASE_DEPS = re.compile(r"\bdependencies\s*:\s*(.{1,200})$", re.I)
_NO_DEPS = re.compile(r"^(?:no\s+dependenc|none\b|can\s+start\s+immediately)", re.I)


def _phase_mentions(text: str, phases: list[Draft], numbers: dict[int, int],
                    stories: dict[int, bool]) -> list[Draft]:
    """The phases a piece of text names: "Phase 2", "Phase 3+", "US1", "User Story 2",
    "all user stories", "Setup", "Foundational", "Polish"."""
    found: list[Draft] = []
    for m in _PHASE_REF.finditer(text):
        if m.group(1):
            n = int(m.group(1))
            found += [p for p in phases if (numbers.get(id(p)) == n or (
                m.group(2) and numbers.get(id(p), -1) >= n))]
        elif m.group(3):
            found += [p for p in phases if re.search(
                rf"\buser story {int(m.group(3))}\b", p.name, re.I)]
        elif m.group(4):
            found += [p for p in phases if stories[id(p)]]
        else:
            word = m.group(5).lower()
            word = "foundation" if word.startswith("foundation") else word
            found += [p for p in phases if word in p.name.lower()]
    return list({id(p): p for p in found}.values())


def _stated_phase_order(
    lines: list[Line], phases: list[Draft], stories: dict[int, bool],
    notes: Sequence[tuple[Draft, str]] = (), code: Sequence[CodeLine] = (),
) -> dict[int, list[Draft]]:
    """The phase order a spec-kit ``tasks.md`` writes down: its "Dependencies & Execution
    Order" items (``- **User Story 2 (P2)**: Can start after Foundational (Phase 2)``), a
    phase's own ``**Dependencies**: Phase 3 + Phase 4 complete`` line and a Mermaid graph
    (``B[Phase 2] --> C[Phase 3: US1]``) -> phase -> the phases it waits for."""
    numbers: dict[int, int] = {}
    for p in phases:
        m = _PHASE.match(p.name)
        if m is not None and m.group(1).isdigit():
            numbers[id(p)] = int(m.group(1))
    position = {id(p): n for n, p in enumerate(phases)}
    stated: dict[int, list[Draft]] = {}

    def add(subject: Draft, targets: list[Draft]) -> None:
        before = [t for t in targets if position.get(id(t), 1 << 30) < position[id(subject)]]
        if before:
            have = stated.setdefault(id(subject), [])
            have += [t for t in before if all(t is not h for h in have)]

    live = {id(p) for p in phases}
    for phase, value in notes:
        if id(phase) in live:
            if _NO_DEPS.match(value.strip()):
                stated.setdefault(id(phase), [])
            add(phase, _phase_mentions(value, phases, numbers, stories))
    for source, target in _mermaid_edges(code):
        subjects = _phase_mentions(target, phases, numbers, stories)
        for subject in subjects[:1]:
            add(subject, _phase_mentions(source, phases, numbers, stories)[:1])
    active = False
    for line in lines:
        if line.kind == HEADING:
            low = line.text.lower()
            active = "dependenc" in low or "execution order" in low
            continue
        if not active or line.kind != ITEM:
            continue
        labelled = split_label(strip_markup(line.text))
        if labelled is None:
            continue
        subjects = _phase_mentions(labelled[0], phases, numbers, stories)
        value = labelled[1]
        if not subjects:
            continue
        clauses = list(_AFTER.finditer(value))
        if not clauses:
            if _NO_DEPS.match(value):
                for subject in subjects:
                    stated.setdefault(id(subject), [])
            continue
        targets: list[Draft] = []
        for clause in clauses:
            # A clause ends at a dash or a full stop: "- May integrate with US1 but ..." is
            # not a dependency; "; depends on ... from US1" is another one.
            tail = re.split(r"\s[-–—]\s|[.;]\s", value[clause.end():], maxsplit=1)[0]
            targets += _phase_mentions(tail, phases, numbers, stories)
        for subject in subjects:
            add(subject, targets)
    return stated


_MERMAID_NODE = re.compile(r"([A-Za-z_][\w-]{0,40})\s*(?:\[([^\]]{1,200})\]|\(([^)]{1,200})\))?")
_MERMAID_EDGE = re.compile(r"\s*(?:-->|==>|---)\s*(?:\|[^|]{0,80}\|\s*)?")


def _mermaid_edges(code: Sequence[CodeLine]) -> list[tuple[str, str]]:
    """(source label, target label) of each solid edge of a ```mermaid graph: the target
    comes after the source. Dotted edges (``-.->``) are notes, not order."""
    labels: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    for line in code:
        if line.info != "mermaid" or "-.-" in line.text:
            continue
        parts = _MERMAID_EDGE.split(line.text.strip())
        if len(parts) < 2:
            continue
        names: list[str] = []
        for part in parts:
            m = _MERMAID_NODE.match(part.strip())
            if m is None:
                names = []
                break
            node, label = m.group(1), m.group(2) or m.group(3)
            if label:
                labels[node] = label
            names.append(node)
        edges += list(zip(names, names[1:], strict=False))
    return [(labels.get(a, a), labels.get(b, b)) for a, b in edges]


def _sinks(tasks: list[SpecTask]) -> list[SpecTask]:
    """Tasks of a phase nothing else in the phase waits for (the phase is done after them)."""
    waited = {d for t in tasks for d in t.depends_on}
    return [t for t in tasks if t.id not in waited]


_CHECKPOINT = re.compile(r"^(?:final\s+)?checkpoint\b", re.I)
_RANGE = re.compile(r"^(\d{1,4})\.(\d{1,4})\s{0,2}[-–]\s{0,2}(?:(\d{1,4})\.)?(\d{1,4})$")
_DEP_LABELS = frozenset({"depends on", "dependencies", "depends", "requires", "blocked by",
                         "prerequisites", "dependency"})


def _expand_refs(refs: list[str]) -> list[str]:
    """Kiro traces as single refs: "4.1-4.6" -> 4.1 ... 4.6 (a range within one requirement)."""
    out: list[str] = []
    for ref in refs:
        m = _RANGE.match(ref.strip())
        if m is not None and (m.group(3) in (None, m.group(1))) and int(m.group(4)) - int(
            m.group(2)
        ) < 50:
            out.extend(f"{m.group(1)}.{n}" for n in range(int(m.group(2)), int(m.group(4)) + 1))
        else:
            out.append(ref.strip())
    return out


def _kiro_order(tasks: list[SpecTask], stated: set[int]) -> None:
    """Dependencies of a Kiro list, from what it writes down.

    - A task with its own ``Depends on:`` keeps exactly those.
    - When most tasks trace requirements (``_Requirements: 1.2_``), a task waits for the
      latest earlier tasks that trace one of the same requirements (not for unrelated work
      listed in between); a task whose requirements nothing before traced waits for the task
      before it, as the list is an order.
    - Otherwise the numbering is the order: each task waits for the one before it.
    - A checkpoint waits for all the work before it; an optional task (``- [ ]*``) waits for
      the task before it, and nothing waits for it.
    """
    traced = sum(1 for t in tasks if t.requirements and t.requirements != ["All"])
    use_traces = traced * 2 >= len(tasks) > 1
    latest: dict[str, SpecTask] = {}
    previous: SpecTask | None = None
    open_ends: list[SpecTask] = []  # required tasks nothing waits for yet
    for task in tasks:
        if id(task) in stated:
            deps = list(task.depends_on)
        elif _CHECKPOINT.match(task.title):
            deps = [t.id for t in open_ends]
        elif task.optional or not use_traces:
            deps = [previous.id] if previous is not None else []
        else:
            refs = [r for r in _expand_refs(task.requirements) if r.lower() != "all"]
            found = [latest[r].id for r in refs if r in latest]
            if not found:
                deps = [previous.id] if previous is not None else []
            else:
                deps = list(dict.fromkeys(found))
        task.depends_on = deps
        if task.optional:
            continue
        waited = set(deps)
        open_ends = [t for t in open_ends if t.id not in waited] + [task]
        for ref in _expand_refs(task.requirements):
            latest[ref] = task
        previous = task


def kiro_tasks(lines: list[Line]) -> tuple[list[Draft], TaskPairs, list[tuple[int, str]]]:
    """A Kiro ``tasks.md``: ``- [ ] 1. Group`` is a feature, ``- [ ] 1.1 Task`` its tasks.

    Sub-bullets are details; ``_Requirements: 7.4_`` lines are kept as requirement traces and
    order the work (see :func:`_kiro_order`); a group without sub-tasks is a task itself;
    ``- [ ]* 1.4`` is an optional task. A group waits for the groups its tasks wait for.
    """
    drafts: list[Draft] = []
    pairs: TaskPairs = []
    seen: dict[str, int] = {}
    warnings: list[tuple[int, str]] = []
    group: Draft | None = None
    group_task: SpecTask | None = None  # the group line itself, used when it has no sub-tasks
    group_has_sub = False
    current: SpecTask | None = None
    ordered: list[SpecTask] = []
    stated: set[int] = set()

    group_added = False  # the group line became a task (its sub-tasks are all optional)
    required_sub = False

    def close_group() -> None:
        if group is None or group_task is None or group_added:
            return
        if group_has_sub:
            # The group line's own bullets describe the whole group: the feature keeps them.
            group.requirements.extend(group_task.details)
        else:
            ordered.append(group_task)
            _add_task(pairs, seen, warnings, group_task, group)

    for line in lines:
        if line.kind == HEADING:
            continue
        m = KIRO_TASK.match(line.text) if line.kind == ITEM and line.checked is not None else None
        if m is not None:
            number, title = m.group(1).rstrip("."), m.group(2)
            task = SpecTask(
                id=number, title=strip_markup(strip_duration(title)), line=line.number,
                feature="", estimate_minutes=parse_minutes(title), files=find_files(title),
                done=bool(line.checked), optional=line.optional,
            )
            if "." not in number or group is None:
                close_group()
                group_added = required_sub = False
                group = Draft(clean_title(strip_duration(title)), line.number)
                drafts.append(group)
                if "." in number:  # a sub-task with no group line above it
                    group_task, group_has_sub = None, True
                    ordered.append(task)
                    _add_task(pairs, seen, warnings, task, group)
                else:
                    group_task, group_has_sub = task, False
            else:
                group_has_sub = True
                if task.optional and not required_sub and not group_added and (
                    group_task is not None
                ):
                    # Only optional work below the group line so far: the line itself is the
                    # required task, done before the optional one.
                    ordered.append(group_task)
                    _add_task(pairs, seen, warnings, group_task, group)
                    group_added = True
                required_sub = required_sub or not task.optional
                ordered.append(task)
                _add_task(pairs, seen, warnings, task, group)
            current = task
            continue
        if current is None or line.kind not in (ITEM, TEXT) or not line.text:
            continue
        rm = _KIRO_REQS.match(line.text.strip("_ "))
        if rm is not None:
            current.requirements.extend(split_refs(rm.group(1).strip("_ ")))
            continue
        labelled = split_label(strip_markup(line.text))
        if labelled is not None and labelled[0] in _DEP_LABELS:
            current.depends_on.extend(split_refs(labelled[1]))
            stated.add(id(current))
            continue
        current.details.append(Item(strip_markup(line.text), line.number))
        for path in find_files(line.text):
            if path not in current.files:
                current.files.append(path)
    close_group()
    _unique_names(drafts)
    _kiro_order(ordered, stated)
    group_of = {t.id: d for t, d in pairs}
    for task, draft in pairs:
        for dep in task.depends_on:
            before = group_of.get(dep)
            if before is not None and before is not draft and (
                before.name, draft.line) not in draft.dep_refs:
                draft.dep_refs.append((before.name, draft.line))
    return drafts, pairs, warnings


def _plan_parent(stack: list[tuple[int, str, int]], level: int) -> tuple[str, int] | None:
    """The nearest enclosing heading above ``level`` that names a group (not "Tasks")."""
    for lvl, title, number in reversed(stack):
        if lvl < level and not _GENERIC_PARENT.match(title):
            return _TRAILING_PAREN.sub("", title) or title, number
    return None


def plan_tasks(
    lines: list[Line], spec_title: str
) -> tuple[list[Draft], TaskPairs, list[tuple[int, str]]]:
    """A plan with ``#### Task A.1: Title (90 min)`` headings (or ``- Task A.1: ...`` items).

    Tasks are grouped under the heading (or list item) around them — a batch or a build —
    and, as written in a plan, each waits for the task before it in the same group.
    """
    drafts: dict[tuple[str, int], Draft] = {}
    pairs: TaskPairs = []
    seen: dict[str, int] = {}
    warnings: list[tuple[int, str]] = []
    stack: list[tuple[int, str, int]] = []  # open headings: (level, clean title, line)
    last_in_group: dict[int, SpecTask] = {}
    current: SpecTask | None = None
    body: list[Line] = []
    parent_item: tuple[int, str, int] | None = None  # (indent, title, line) of a "Batch" item
    implicit: dict[int, str] = {}  # task -> the task before it in its group
    stated = False  # some task writes its own dependencies

    def finish() -> None:
        nonlocal stated
        if current is not None:
            stated = _fill_task(current, body) or stated

    current_indent = -1  # indentation of a list-item task; -1 for a heading task
    for line in lines:
        m = PLAN_TASK.match(strip_markup(line.text)) if line.kind in (HEADING, ITEM) else None
        if line.kind == HEADING:
            parent_item = None
            while stack and stack[-1][0] >= line.level:
                stack.pop()
            if m is None:
                finish()
                current = None
                stack.append((line.level, clean_title(strip_duration(line.text)), line.number))
                continue
        if m is not None:
            finish()
            body = []
            if line.kind == HEADING:
                parent = _plan_parent(stack, line.level)
                current_indent = -1
            else:
                if parent_item is not None and parent_item[0] >= line.indent:
                    parent_item = None
                parent = (parent_item[1], parent_item[2]) if parent_item else _plan_parent(
                    stack, 7
                )
                current_indent = line.indent
            key = parent or (spec_title or "Tasks", 1)
            draft = drafts.get(key)
            if draft is None:
                draft = drafts[key] = Draft(key[0], key[1])
            title = m.group(3)
            current = SpecTask(
                id=m.group(1) or m.group(2),
                title=strip_markup(strip_duration(title)).rstrip(" -") or title,
                line=line.number, feature="", estimate_minutes=parse_minutes(title),
                files=find_files(title, bare=True),
                done="✅" in line.text or bool(line.checked),
            )
            previous = last_in_group.get(id(draft))
            if previous is not None:
                current.depends_on = [previous.id]
                implicit[id(current)] = previous.id
            last_in_group[id(draft)] = current
            _add_task(pairs, seen, warnings, current, draft)
            continue
        if line.kind == ITEM and line.text and (current is None or line.indent <= current_indent):
            # A list item outside any task: a "Batch A1: ..." line that groups the tasks below.
            finish()
            current = None
            name = clean_title(strip_duration(line.text.split(" (")[0])) or line.text
            parent_item = (line.indent, name, line.number)
            continue
        if current is not None and line.kind in (ITEM, TEXT):
            body.append(line)
    finish()
    if stated:
        # The plan writes its dependencies down ("**Depends on:** Task 2.1, Task 2.2"): those
        # are the order, not the sequence the tasks happen to be listed in.
        for task, _ in pairs:
            before = implicit.get(id(task))
            if before is not None and task.depends_on.count(before) == 1 and (
                task.depends_on[0] == before
            ):
                task.depends_on = task.depends_on[1:]
    return _unique_names(list(drafts.values())), pairs, warnings


def _fill_task(task: SpecTask, body: list[Line]) -> bool:
    """Files, acceptance criteria, dependencies and details from a task's own lines; whether
    the task states its dependencies."""
    scratch = Draft(task.title, task.line)
    read_lines(scratch, body)
    for line in body:
        labelled = split_label(line.text)
        if labelled is not None and labelled[0] in ("complexity",):
            task.complexity = strip_markup(labelled[1]).lower() or None
        if labelled is not None and labelled[0] == "domain":
            task.domain = strip_markup(labelled[1]).lower() or None
        if line.kind == ITEM or line.kind == TEXT:
            for path in find_files(line.text, bare=line.kind == ITEM):
                if path not in task.files:
                    task.files.append(path)
    task.acceptance_criteria = scratch.criteria
    task.details = scratch.requirements
    task.depends_on = [*task.depends_on, *(r for r, _ in scratch.dep_refs)]
    if task.domain is None and scratch.domain:
        task.domain = scratch.domain
    return bool(scratch.dep_refs) or any(
        (lab := split_label(strip_markup(ln.text))) is not None and lab[0] in _DEP_LABELS
        for ln in body
    )
