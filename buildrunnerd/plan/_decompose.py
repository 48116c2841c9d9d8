"""Decomposers: turn a parsed :class:`Spec` into tasks.

:class:`Planner` is the pluggable part (the Claude planner of ``buildrunnerd.agent`` is another
one). :class:`HeuristicPlanner` is the deterministic, offline default: it reads each feature's
own words to decide which 1-2 hour tasks the feature needs (data model, API, business logic, UI,
infrastructure, tests, docs), and nothing more. An explicit task list in the spec wins: it is
used as written and only missing fields are filled in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

import anyio.to_thread

from buildrunnerd.plan._files import LayoutIndex, default_file, file_kind
from buildrunnerd.plan._language import Stack, detect_stack
from buildrunnerd.plan._model import Task
from buildrunnerd.plan._titles import task_title
from buildrunnerd.spec._model import Feature, Item, Spec, SpecTask
from buildrunnerd.spec._text import find_files

__all__ = ["Planner", "HeuristicPlanner", "ESTIMATE_MINUTES"]

# The three sizes a task may have; complex and critical share the longest slot.
ESTIMATE_MINUTES: dict[str, int] = {"simple": 60, "medium": 90, "complex": 120, "critical": 120}

# A component's items beyond this are split into a further task, so no task outgrows ~2 hours.
_MAX_ITEMS_PER_TASK = 4
_MAX_DESCRIPTION_CHARS = 600


class Planner(Protocol):
    """Something that decomposes a spec into tasks (heuristic, Claude, ...)."""

    async def decompose(self, spec: Spec) -> list[Task]:
        """Return the spec's tasks with ids, dependencies, files and acceptance criteria."""
        ...


# Underscores keep identifiers whole: "todo_api" is a name, not the word "api".
_WORD = re.compile(r"[a-z0-9_]+")
# Code spans hold paths and commands (`todo_api/db.py`, `pytest -q`): named files are judged by
# their path (see _FILE_KINDS), and a command's words say nothing about the kind of work.
_CODE_SPAN = re.compile(r"`[^`\n]*`")


@lru_cache(maxsize=8192)
def _analyse(text: str) -> tuple[frozenset[str], str]:
    """The words of ``text`` (lower case, code spans left out) and the text as
    " word word ... " for phrases."""
    words = _WORD.findall(_CODE_SPAN.sub(" ", text.lower()))
    return frozenset(words), f" {' '.join(words)} "


class _Vocab:
    """A family of keywords: whole words, word stems (``"validat"`` finds "validation") and
    phrases. Matching works on whole words, so "table" finds a data model but "stable" does
    not. Sets instead of one big regex: a 1 MB spec has tens of thousands of sentences."""

    __slots__ = ("words", "others")

    def __init__(self, words: str, stems: str = "", phrases: tuple[str, ...] = ()) -> None:
        self.words = frozenset(words.split())
        # Stems and phrases in one pattern over the " word word " form of the text.
        alternatives = [re.escape(s) for s in stems.split()]
        alternatives += [re.escape(p) + " " for p in phrases]
        self.others = re.compile(" (?:" + "|".join(alternatives) + ")") if alternatives else None

    def search(self, text: str) -> bool:
        """Whether ``text`` uses any keyword of this family."""
        return self.found(*_analyse(text))

    def found(self, words: frozenset[str], joined: str) -> bool:
        """:meth:`search` on a text already analysed by :func:`_analyse`."""
        if not self.words.isdisjoint(words):
            return True
        return self.others is not None and self.others.search(joined) is not None


# Keyword families, in the order the tasks of a feature are built.
_KIND_WORDS: dict[str, _Vocab] = {
    "data": _Vocab(
        "database databases db schema schemas table tables model models migration migrations "
        "store stores stored storage save saves saved saving record records entity entities "
        "mysql sqlite redis orm crud column columns index indexes",
        stems="persist sql postgres mongo",
    ),
    "logic": _Vocab(
        "rule rules algorithm algorithms engine logic workflow workflows queue queues retry "
        "retries",
        stems="calculat recalculat comput validat process analy pars generat transform schedul "
              "detect classif scor convert filter sort search merg sync rank notif import export "
              "cach aggregat",
    ),
    "api": _Vocab(
        "api apis endpoint endpoints rest restful graphql http https route routes webhook "
        "webhooks request requests response responses rpc grpc server",
        phrases=("status code", "status codes"),
    ),
    "ui": _Vocab(
        "ui page pages screen screens button buttons form forms view views component "
        "components dashboard dashboards modal modals dialog dialogs frontend css layout "
        "layouts menu menus widget widgets tab tabs browser responsive html react vue svelte "
        "cli terminal dropdown dropdowns icon icons",
        stems="display click render checkbox navigat",
        phrases=("user interface", "front end", "command line", "dark mode"),
    ),
    "infra": _Vocab(
        "containers container kubernetes k8s ci cd pipeline pipelines terraform helm "
        "infrastructure vercel aws gcp azure nginx systemd monitoring lint linting linter "
        "linters formatter formatters",
        stems="deploy docker provision",
        phrases=("environment variable", "environment variables", "env var", "env vars"),
    ),
}
# HTTP verbs only count in capitals ("GET /users"), not as English verbs ("get a list").
_HTTP_VERB = re.compile(r"\b(?:GET|POST|PUT|PATCH|DELETE)\b|/api/")
_TESTS_WORDS = _Vocab("test tests testing tested coverage e2e qa unittest pytest jest vitest")
_DOCS_WORDS = _Vocab(
    "documentation document documents documented doc docs readme guide guides tutorial tutorials "
    "manual changelog docstring docstrings"
)
_DOCS_REQUEST = re.compile(
    r"^\W*(?:document|write|add|update|provide|include|publish|generate|create|design|"
    r"prepare|produce|draft|extend)\b.*\b(?:docs?|"
    r"documentation|readme|guides?|tutorials?|manual|changelog|docstrings?)\b"
    r"|^\W*document\b",
    re.IGNORECASE,
)
_CRITICAL_WORDS = _Vocab(
    "auth authn authz authentication authenticate authenticated authorization authorize "
    "authorized login logins logout password passwords payment payments billing "
    "security secure credential credentials permission permissions secret secrets 2fa mfa "
    "rbac csrf xss pii",
    stems="invoic encrypt decrypt oauth",
    phrases=("log in", "sign in", "sign up", "signin", "signup", "access control"),
)

_IMPL_KINDS = ("data", "logic", "api", "ui", "infra")
_KIND_TITLE = {
    "data": "Data model",
    "logic": "Business logic",
    "api": "API endpoints",
    "ui": "User interface",
    "infra": "Infrastructure",
    "tests": "Tests",
    "docs": "Documentation",
}
_KIND_DOMAIN = {
    "data": "database",
    "logic": "backend",
    "api": "backend",
    "ui": "frontend",
    "infra": "infra",
    "tests": "tests",
    "docs": "docs",
}
_DOMAIN_KIND = {
    "database": "data",
    "backend": "logic",
    "frontend": "ui",
    "infra": "infra",
    "tests": "tests",
    "docs": "docs",
}

def _complexity(n_items: int, *, critical: bool, floor: str = "simple") -> str:
    if critical:
        return "critical"
    size = "simple" if n_items <= 1 else "medium" if n_items <= 3 else "complex"
    order = ("simple", "medium", "complex")
    return order[max(order.index(size), order.index(floor))]


# What each component builds on when the spec names no files.
_UPSTREAM: dict[str, tuple[str, ...]] = {
    "data": (), "logic": ("data",), "api": ("logic", "data"), "ui": ("api", "logic", "data"),
    "infra": (),
}
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=4096)
def _words(feature_id: str) -> tuple[str, ...]:
    """The words of a feature id worth matching a layout file name against."""
    words = [w for w in _WORD_SPLIT.split(feature_id.lower()) if len(w) >= 3]
    return ("".join(words), *words) if len(words) > 1 else tuple(words)


def _group_kind(files: list[str]) -> str:
    kinds = [file_kind(f) for f in files]
    return max(dict.fromkeys(kinds), key=kinds.count)


def _chunks(items: list[Item], size: int) -> list[list[Item]]:
    """``items`` in as few chunks of at most ``size`` as possible, of near-equal length
    (9 items make 3+3+3, not 4+4+1: no part is a token afterthought)."""
    if not items:
        return [[]]
    n = -(-len(items) // size)
    base, extra = divmod(len(items), n)
    chunks, start = [], 0
    for k in range(n):
        end = start + base + (1 if k < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return (match.group(1) if match else text)[:300]


class _FeatureTasks:
    """The tasks of one feature while they are being built, with the entry/exit points."""

    __slots__ = ("tasks", "entries", "impl_sinks")

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self.entries: list[Task] = []  # tasks with no dependency inside the feature
        self.impl_sinks: list[str] = []  # what a dependent feature waits for


class HeuristicPlanner:
    """The deterministic, offline decomposer (the default planner)."""

    name = "heuristic"

    async def decompose(self, spec: Spec) -> list[Task]:
        """Decompose ``spec`` in a worker thread (a 1 MB spec takes a noticeable moment)."""
        return await anyio.to_thread.run_sync(self.decompose_sync, spec)

    def decompose_sync(self, spec: Spec) -> list[Task]:
        """Return the tasks of ``spec``: its explicit task list if it has one, else the tasks
        each feature's text calls for, with feature dependencies as task dependencies."""
        if spec.tasks or spec.done_tasks:
            # A task list is the plan, even when every task on it is done already.
            domains = {f.id: f.domain for f in spec.features if f.domain}
            return [self._explicit(st, domains) for st in spec.tasks]
        stack = detect_stack(spec)
        layout = LayoutIndex(spec.layout)
        built: dict[str, _FeatureTasks] = {}
        for feature in spec.features:
            # A feature its heading marks done ("✅ COMPLETED") is built already: no tasks,
            # and nothing waits for it.
            built[feature.id] = _FeatureTasks() if feature.done else self._feature(
                feature, stack, layout
            )
        for feature in spec.features:
            waits_for: list[str] = []
            for dep in feature.depends_on:
                if dep in built and dep != feature.id:
                    waits_for.extend(built[dep].impl_sinks)
            for task in built[feature.id].entries:
                task.depends_on = [*dict.fromkeys([*waits_for, *task.depends_on])]
        return [task for feature in spec.features for task in built[feature.id].tasks]

    # -- explicit tasks -----------------------------------------------------------------------
    def _explicit(self, st: SpecTask, feature_domains: dict[str, str]) -> Task:
        text = " ".join([st.title, *(d.text for d in st.details)])
        domain = st.domain or self._explicit_domain(st, text, feature_domains)
        if st.complexity:
            complexity = st.complexity
        elif _CRITICAL_WORDS.search(text):
            complexity = "critical"
        elif st.estimate_minutes is not None:
            m = st.estimate_minutes
            complexity = "simple" if m <= 60 else "medium" if m <= 90 else "complex"
        else:
            complexity = _complexity(len(st.details), critical=False)
        criteria = [c.text for c in st.acceptance_criteria] or [d.text for d in st.details]
        return Task(
            id=st.id,
            feature=st.feature,
            title=st.title,
            domain=domain,
            complexity=complexity,
            estimate_minutes=st.estimate_minutes or ESTIMATE_MINUTES.get(complexity, 90),
            depends_on=list(st.depends_on),
            files=list(st.files),
            acceptance_criteria=criteria or [st.title],
            description="\n".join(d.text for d in st.details)[:_MAX_DESCRIPTION_CHARS],
            line=st.line,
            optional=st.optional,
        )

    @staticmethod
    def _explicit_domain(st: SpecTask, text: str, feature_domains: dict[str, str]) -> str:
        # The title's opening says what the task is: "Write tests for X" is tests work,
        # "Create parser.py - 28 tests" is not.
        if _TEST_OPENING.match(st.title):
            return "tests"
        if _about(st.title) == "docs" or _DOCS_OPENING.match(st.title):
            return "docs"
        if st.files:
            kinds = [file_kind(f) for f in st.files]
            return _KIND_DOMAIN[max(dict.fromkeys(kinds), key=kinds.count)]
        for kind in ("infra", "ui", "data", "api", "logic"):
            if _KIND_WORDS[kind].search(st.title):
                return _KIND_DOMAIN[kind]
        for kind in ("infra", "ui", "data", "api", "logic"):
            if _KIND_WORDS[kind].search(text):
                return _KIND_DOMAIN[kind]
        return feature_domains.get(st.feature, "backend")

    # -- decomposition of one feature ---------------------------------------------------------
    def _feature(self, feature: Feature, stack: Stack, layout: LayoutIndex) -> _FeatureTasks:
        head_tags = _tags(f"{feature.name}\n{feature.description}")
        # A requirement that is about tests or docs ("`tests/test_api.py` exercises every
        # endpoint", "`README.md` explains how to run it") is work for the tests or docs task;
        # its other words ("endpoint") are no reason for implementation tasks.
        test_reqs: list[Item] = []
        doc_reqs: list[Item] = []
        items: list[Item] = []
        for req in feature.requirements:
            about = _about(req.text)
            (test_reqs if about == "tests" else doc_reqs if about == "docs" else items).append(req)
        items.extend(feature.acceptance_criteria)
        item_tags = [_tags(i.text) for i in items]

        # Items that name implementation files, grouped by the files they touch: one task per
        # group, and groups with disjoint files do not wait for each other.
        groups: list[tuple[list[str], list[Item]]] = []
        loose: list[tuple[Item, frozenset[str]]] = []
        hinted: list[str] = []  # named, but not placed by the spec's layout: suggestions
        for item, tags in zip(items, item_tags, strict=True):
            files: list[str] = []
            for path in dict.fromkeys(layout.resolve(f) for f in find_files(item.text)):
                if file_kind(path) not in _IMPL_KINDS:
                    continue
                (files if layout.required(path) else hinted).append(path)
            if not files:
                loose.append((item, tags))
                continue
            hits = [g for g in groups if not set(g[0]).isdisjoint(files)]
            if not hits:
                groups.append(([], []))
                hits = [groups[-1]]
            target = hits[0]
            for other in hits[1:]:  # this item joins two groups: they are one piece of work
                target[0].extend(f for f in other[0] if f not in target[0])
                target[1].extend(other[1])
                groups.remove(other)
            target[0].extend(f for f in files if f not in target[0])
            target[1].append(item)
        grouped = {f for g in groups for f in g[0]}
        named: dict[str, list[str]] = {}
        for path in dict.fromkeys(layout.resolve(f) for f in feature.files):
            if path not in grouped and path not in hinted and layout.required(path):
                named.setdefault(file_kind(path), []).append(path)
        for item in (*test_reqs, *doc_reqs):
            for path in find_files(item.text):
                kind = file_kind(layout.resolve(path))
                if kind in ("tests", "docs") and path not in named.get(kind, []):
                    named.setdefault(kind, []).append(layout.resolve(path))

        wants_tests = (
            bool(feature.acceptance_criteria or test_reqs) or "tests" in named
            or "tests" in head_tags or any("tests" in t for t in item_tags)
        )
        # Docs only when asked for: a named doc file, the feature's own description, or a
        # requirement that says to write them ("documentation" in a list of categories is not).
        wants_docs = bool(doc_reqs) or "docs" in named or "docs" in head_tags or any(
            "docs_request" in t for t in item_tags
        )

        units: list[tuple[str, list[Item], list[str]]] = []  # (kind, items, required files)
        if groups:
            # The spec says which files the work goes into: follow it, and give every other
            # sentence to the group of its kind (else the first), inventing no file.
            kinds = [_group_kind(g[0]) for g in groups]
            for item, tags in loose:
                at = next((n for n, k in enumerate(kinds) if k in tags), 0)
                groups[at][1].append(item)
            for kind, (files, group_items) in zip(kinds, groups, strict=True):
                units.append((kind, sorted(group_items, key=lambda i: i.line), files))
        else:
            units = self._kind_units(feature, loose, head_tags, named, wants_tests or wants_docs)

        critical_feature = "critical" in head_tags
        criteria_ids = {id(i) for i in feature.acceptance_criteria}
        routed = {id(i) for i in (*test_reqs, *doc_reqs)}
        out = _FeatureTasks()
        counter = 0
        guesses: dict[str, str] = {}  # kind -> the guessed path, once per feature

        def add(kind: str, chunk: list[Item] | list[str], complexity: str, deps: list[str],
                files: list[str], title_text: str) -> Task:
            nonlocal counter
            counter += 1
            criteria = [c.text if isinstance(c, Item) else c for c in chunk]
            if files:
                suggested = []
            else:
                guess = guesses.get(kind)
                if guess is None:
                    guess = guesses[kind] = (layout.suggest(kind, _words(feature.id))
                                             or default_file(kind, feature.id, stack))
                suggested = [guess]
            if kind in _IMPL_KINDS and hinted and not files:
                suggested = list(dict.fromkeys([*hinted[:3], *suggested]))
            task = Task(
                id=f"{feature.id}.{counter}",
                feature=feature.id,
                title=task_title(title_text, files, feature.name,
                                 f"{_KIND_TITLE[kind]} for {feature.name}"),
                domain=_KIND_DOMAIN[kind],
                complexity=complexity,
                estimate_minutes=ESTIMATE_MINUTES[complexity],
                depends_on=list(deps),
                files=list(files),
                suggested_files=suggested,
                acceptance_criteria=criteria,
                description=feature.description[:_MAX_DESCRIPTION_CHARS],
                line=feature.line,
            )
            out.tasks.append(task)
            if not deps:
                out.entries.append(task)
            return task

        last_of_kind: dict[str, str] = {}
        impl: list[Task] = []
        for kind, unit_items, files in units:
            # Without named files the components build on each other (model -> logic -> API
            # -> UI); with named files, work on disjoint files runs side by side.
            deps = [] if groups else [
                last_of_kind[k] for k in _UPSTREAM[kind] if k in last_of_kind
            ][:1]
            chunks = _chunks(unit_items, _MAX_ITEMS_PER_TASK)
            for chunk in chunks:
                critical = critical_feature or any("critical" in _tags(i.text) for i in chunk)
                floor = "medium" if kind == "logic" and len(chunks) == 1 else "simple"
                if not chunk and feature.description:
                    floor = "medium"
                ordered = sorted(chunk, key=lambda i: (id(i) in criteria_ids, i.line))
                criteria: list[Item] | list[str] = ordered or [
                    _first_sentence(feature.description)
                    or f"{feature.name} works as the spec describes"
                ]
                first = ordered[0].text if ordered else feature.description or feature.name
                task = add(kind, criteria, _complexity(len(chunk), critical=critical, floor=floor),
                           deps, files, first)
                deps = [task.id]  # parts of one component touch the same files: in sequence
                last_of_kind[kind] = task.id
                impl.append(task)

        # Only dependencies inside the feature exist yet: feature dependencies come later.
        depended = {d for t in impl for d in t.depends_on}
        out.impl_sinks = [t.id for t in impl if t.id not in depended]
        sinks = out.impl_sinks
        if wants_tests:
            checks = feature.acceptance_criteria or [
                r for r in feature.requirements if id(r) not in routed
            ]
            tests = [i.text for i in test_reqs] + [f"A test checks: {i.text}" for i in checks]
            tests = tests or [
                f"Tests cover {feature.name}: {_first_sentence(feature.description)}"
            ]
            tests.append("The test command passes")
            first = test_reqs[0].text if test_reqs else f"Write tests for {feature.name}"
            add("tests", tests, "medium" if len(checks) > 3 else "simple", sinks,
                named.get("tests", []), first)
        if wants_docs:
            docs = [i.text for i in doc_reqs] or [
                f"The documentation explains how to use {feature.name}"
            ]
            first = doc_reqs[0].text if doc_reqs else f"Document {feature.name}"
            add("docs", docs + [i.text for i in _docs_items(items)], "simple", sinks,
                named.get("docs", []), first)
        if not out.impl_sinks:
            # A docs- or tests-only feature: dependents wait for all of it.
            out.impl_sinks = [t.id for t in out.tasks if t.id not in
                              {d for x in out.tasks for d in x.depends_on}]
        return out

    @staticmethod
    def _kind_units(
        feature: Feature, loose: list[tuple[Item, frozenset[str]]], head_tags: frozenset[str],
        named: dict[str, list[str]], wants_checks: bool,
    ) -> list[tuple[str, list[Item], list[str]]]:
        """No sentence names a file: the components the feature's words call for, each with
        the sentences that use its words (the rest go to the core component)."""
        kinds = set(head_tags.union(*(t for _, t in loose)).intersection(_IMPL_KINDS))
        kinds.update(k for k in named if k in _IMPL_KINDS)
        if feature.domain in _DOMAIN_KIND and _DOMAIN_KIND[feature.domain] in _IMPL_KINDS:
            kinds.add(_DOMAIN_KIND[feature.domain])
        # Sentences that describe behaviour (not just "the tests pass") need code.
        behaviour = [i for i, t in loose if "tests" not in t]
        if not kinds and (behaviour or not wants_checks):
            # Nothing more specific in the text: the feature is its own piece of logic. A
            # feature that only asks for tests or documentation gets just those tasks.
            kinds.add("logic")
        core = next((k for k in ("logic", "api", "ui", "data", "infra") if k in kinds), None)
        assigned: dict[str, list[Item]] = {k: [] for k in kinds}
        for item, tags in loose:
            hits = [k for k in _IMPL_KINDS if k in kinds and k in tags]
            if not hits and core is not None:
                hits = [core]
            for kind in hits:
                assigned[kind].append(item)
        return [(k, assigned[k], named.get(k, [])) for k in _IMPL_KINDS if k in kinds]


_DOCS_OPENING = re.compile(
    r"^\W*(?:(?:fix|update|write|create|add)\s+(?:the\s+)?(?:user\s+)?)?"
    r"(?:docs?|documentation|readme|guides?|tutorials?|changelog)\b",
    re.IGNORECASE,
)
_TEST_OPENING = re.compile(
    r"^\W*(?:(?:write|add|create)\s+(?:unit\s+|integration\s+|e2e\s+)?tests?|"
    r"(?:unit|integration|e2e|end-to-end)\s+tests?|tests?)\b",
    re.IGNORECASE,
)


def _about(requirement: str) -> str | None:
    """"tests" or "docs" when a requirement is work for the tests or docs task: it names a
    test or doc file, or opens by asking for tests or docs."""
    for span in _CODE_SPAN.findall(requirement):
        path = span.strip("`").split()[0] if span.strip("`").split() else ""
        if "." in path or "/" in path:
            kind = file_kind(path)
            if kind in ("tests", "docs"):
                return kind
            return None  # names an implementation file first: implementation work
    if _TEST_OPENING.match(requirement):
        return "tests"
    if "docs_request" in _tags(requirement):
        return "docs"
    return None


def _docs_items(items: Iterable[Item]) -> list[Item]:
    return [i for i in items if "docs" in _tags(i.text)][:_MAX_ITEMS_PER_TASK]


@lru_cache(maxsize=16384)
def _tags(text: str) -> frozenset[str]:
    """Every keyword family ``text`` uses: the components, "tests", "docs", "docs_request"
    (a sentence asking for documentation) and "critical". One pass per distinct sentence."""
    analysed = _analyse(text)  # once for every family, not once per family
    tags = {kind for kind, vocab in _KIND_WORDS.items() if vocab.found(*analysed)}
    if _HTTP_VERB.search(text):
        tags.add("api")
    if _TESTS_WORDS.found(*analysed):
        tags.add("tests")
    if _DOCS_WORDS.found(*analysed):
        tags.add("docs")
        if _DOCS_REQUEST.search(text):  # needs a docs word too: only then worth the regex
            tags.add("docs_request")
    if _CRITICAL_WORDS.found(*analysed):
        tags.add("critical")
    return frozenset(tags)
