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

from buildrunnerd.plan._model import Task
from buildrunnerd.spec._model import Feature, Item, Spec, SpecTask

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

# Where a named file belongs, judged by its path; first match wins.
_FILE_KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("tests", re.compile(r"(^|/)(tests?|__tests__|spec)/|(^|/)test_|_test\.|\.(test|spec)\.")),
    ("docs", re.compile(r"(^|/)docs?/|\.(md|rst|adoc)$|(^|/)readme", re.IGNORECASE)),
    ("infra", re.compile(
        r"(^|/)(dockerfile|docker-compose|\.github|deploy|infra|terraform|k8s|helm|systemd)"
        r"|\.(ya?ml|tf|service|ini|cfg)$|(^|/)(package\.json|pyproject\.toml|Makefile)$",
        re.IGNORECASE,
    )),
    ("ui", re.compile(
        r"\.(tsx|jsx|vue|svelte|css|scss|html|htm)$|(^|/)(components|pages|ui|views|templates|"
        r"static|public|app/\(.*\))/",
        re.IGNORECASE,
    )),
    ("data", re.compile(r"(^|/)(models?|schemas?|migrations|db|database|entities)(/|\.|_)|\.sql$",
                        re.IGNORECASE)),
    ("api", re.compile(r"(^|/)(api|routes?|endpoints|handlers|controllers|server)(/|\.)"
                       r"|route\.\w+$",
                       re.IGNORECASE)),
]


def _file_kind(path: str) -> str:
    for kind, pattern in _FILE_KINDS:
        if pattern.search(path):
            return kind
    return "logic"


def _complexity(n_items: int, *, critical: bool, floor: str = "simple") -> str:
    if critical:
        return "critical"
    size = "simple" if n_items <= 1 else "medium" if n_items <= 3 else "complex"
    order = ("simple", "medium", "complex")
    return order[max(order.index(size), order.index(floor))]


def _language(spec: Spec) -> str:
    """Guess the project's language for generated paths: named files first, then the prose."""
    counts = {"ts": 0, "py": 0, "go": 0}
    for feature in spec.features:
        for path in feature.files:
            ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
            if ext in ("ts", "tsx", "js", "jsx", "mjs"):
                counts["ts"] += 1
            elif ext == "py":
                counts["py"] += 1
            elif ext == "go":
                counts["go"] += 1
    if any(counts.values()):
        return max(counts, key=lambda k: counts[k])
    prose = f"{spec.title}\n{spec.overview[:20000]}".lower()
    if re.search(r"\b(typescript|javascript|react|next\.js|node\.js|vue|angular|svelte)\b", prose):
        return "ts"
    if re.search(r"\b(golang|go module|go 1\.\d+)\b", prose):
        return "go"
    return "py"


@lru_cache(maxsize=4096)
def _module_name(feature_id: str) -> str:
    name = re.sub(r"\W+", "_", feature_id.lower()).strip("_") or "feature"
    return name if name[0].isalpha() else f"feature_{name}"


def _python_root(spec: Spec) -> str | None:
    """The folder the spec's own Python modules live in (``todo_api``), if it names any:
    generated modules go next to them instead of into a made-up ``src/`` layout."""
    counts: dict[str, int] = {}
    for feature in spec.features:
        for path in feature.files:
            if path.endswith(".py") and "/" in path and _file_kind(path) in _IMPL_KINDS:
                folder = path.rsplit("/", 1)[0]
                counts[folder] = counts.get(folder, 0) + 1
    return max(counts, key=lambda k: (counts[k], -len(k))) if counts else None


def _default_file(kind: str, feature_id: str, language: str, root: str | None = None) -> str:
    mod = _module_name(feature_id)
    slug = mod.replace("_", "-")
    if kind == "docs":
        return f"docs/{slug}.md"
    if kind == "infra":
        return f"deploy/{slug}.yml"
    if language == "ts":
        pascal = "".join(part.capitalize() for part in mod.split("_"))
        return {
            "data": f"src/models/{slug}.ts",
            "logic": f"src/lib/{slug}.ts",
            "api": f"src/api/{slug}.ts",
            "ui": f"src/components/{pascal}.tsx",
            "tests": f"tests/{slug}.test.ts",
        }[kind]
    if language == "go":
        return {
            "data": f"internal/{mod}/model.go",
            "logic": f"internal/{mod}/{mod}.go",
            "api": f"internal/{mod}/handler.go",
            "ui": f"web/{slug}.html",
            "tests": f"internal/{mod}/{mod}_test.go",
        }[kind]
    if root:
        suffix = {"data": "_model", "logic": "", "api": "_api", "ui": "_ui"}.get(kind)
        if suffix is not None:
            return f"{root}/{mod}{suffix}.py"
    return {
        "data": f"src/models/{mod}.py",
        "logic": f"src/{mod}.py",
        "api": f"src/api/{mod}.py",
        "ui": f"src/ui/{mod}.py",
        "tests": f"tests/test_{mod}.py",
    }[kind]


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
        if spec.tasks:
            domains = {f.id: f.domain for f in spec.features if f.domain}
            return [self._explicit(st, domains) for st in spec.tasks]
        language = _language(spec)
        root = _python_root(spec) if language == "py" else None
        built: dict[str, _FeatureTasks] = {}
        for feature in spec.features:
            built[feature.id] = self._feature(feature, language, root)
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
            kinds = [_file_kind(f) for f in st.files]
            return _KIND_DOMAIN[max(dict.fromkeys(kinds), key=kinds.count)]
        for kind in ("infra", "ui", "data", "api", "logic"):
            if _KIND_WORDS[kind].search(st.title):
                return _KIND_DOMAIN[kind]
        for kind in ("infra", "ui", "data", "api", "logic"):
            if _KIND_WORDS[kind].search(text):
                return _KIND_DOMAIN[kind]
        return feature_domains.get(st.feature, "backend")

    # -- decomposition of one feature ---------------------------------------------------------
    def _feature(self, feature: Feature, language: str, root: str | None) -> _FeatureTasks:
        head = f"{feature.name}\n{feature.description}"
        head_tags = _tags(head)
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

        kinds = set(head_tags.union(*item_tags).intersection(_IMPL_KINDS))
        named: dict[str, list[str]] = {}
        for path in feature.files:
            named.setdefault(_file_kind(path), []).append(path)
        kinds.update(k for k in named if k in _IMPL_KINDS)
        if feature.domain in _DOMAIN_KIND and _DOMAIN_KIND[feature.domain] in _IMPL_KINDS:
            kinds.add(_DOMAIN_KIND[feature.domain])
        wants_tests = (
            bool(feature.acceptance_criteria or test_reqs) or "tests" in named
            or "tests" in head_tags or any("tests" in t for t in item_tags)
        )
        # Docs only when asked for: a named doc file, the feature's own description, or a
        # requirement that says to write them ("documentation" in a list of categories is not).
        wants_docs = bool(doc_reqs) or "docs" in named or "docs" in head_tags or any(
            "docs_request" in t for t in item_tags
        )
        # Sentences that describe behaviour (not just "the tests pass") need code.
        behaviour = [i for i, t in zip(items, item_tags, strict=True) if "tests" not in t]
        if not kinds and (behaviour or not (wants_tests or wants_docs)):
            # Nothing more specific in the text: the feature is its own piece of logic. A
            # feature that only asks for tests or documentation gets just those tasks.
            kinds.add("logic")

        # Each requirement or criterion goes to every component whose words it uses; the rest
        # to the core component, so every sentence of the spec lands in some task's criteria.
        # Behaviour without a more specific word belongs to the logic, else the API, else the
        # UI; a data model alone is the last resort.
        core = next((k for k in ("logic", "api", "ui", "data", "infra") if k in kinds), None)
        assigned: dict[str, list[Item]] = {k: [] for k in kinds}
        for item, tags in zip(items, item_tags, strict=True):
            hits = [k for k in _IMPL_KINDS if k in kinds and k in tags]
            if not hits and core is not None:
                hits = [core]
            for kind in hits:
                assigned[kind].append(item)

        criteria_ids = {id(i) for i in feature.acceptance_criteria}
        routed = {id(i) for i in (*test_reqs, *doc_reqs)}
        critical_feature = "critical" in head_tags
        critical_items = {id(i) for i, t in zip(items, item_tags, strict=True) if "critical" in t}
        out = _FeatureTasks()
        last: dict[str, str] = {}  # kind -> id of its last task
        counter = 0

        def add(kind: str, chunk_items: list[str], complexity: str, deps: list[str],
                part: tuple[int, int] | None) -> Task:
            nonlocal counter
            counter += 1
            title = f"{feature.name}: {_KIND_TITLE[kind]}"
            if part is not None:
                title += f" (part {part[0]}/{part[1]})"
            files = named.get(kind) or [_default_file(kind, feature.id, language, root)]
            task = Task(
                id=f"{feature.id}.{counter}",
                feature=feature.id,
                title=title,
                domain=_KIND_DOMAIN[kind],
                complexity=complexity,
                estimate_minutes=ESTIMATE_MINUTES[complexity],
                depends_on=list(deps),
                files=list(files),
                acceptance_criteria=chunk_items,
                description=feature.description[:_MAX_DESCRIPTION_CHARS],
                line=feature.line,
            )
            out.tasks.append(task)
            if not deps:
                out.entries.append(task)
            return task

        for kind in _IMPL_KINDS:
            if kind not in kinds:
                continue
            upstream = {
                "data": [],
                "logic": ["data"],
                "api": ["logic"] if "logic" in kinds else ["data"],
                "ui": ["api"] if "api" in kinds else ["logic"] if "logic" in kinds else ["data"],
                "infra": [],
            }[kind]
            deps = [last[k] for k in upstream if k in last]
            # Criteria first: they say what "done" means; requirements say what to build.
            kind_items = sorted(
                assigned[kind], key=lambda i: (id(i) not in criteria_ids, i.line)
            )
            chunks = _chunks(kind_items, _MAX_ITEMS_PER_TASK)
            for n, chunk in enumerate(chunks, 1):
                critical = critical_feature or any(id(i) in critical_items for i in chunk)
                floor = "medium" if kind == "logic" and len(chunks) == 1 else "simple"
                if not chunk and feature.description:
                    floor = "medium"
                criteria = [i.text for i in chunk] or [
                    _first_sentence(feature.description)
                    or f"{feature.name} works as the spec describes"
                ]
                task = add(
                    kind, criteria, _complexity(len(chunk), critical=critical, floor=floor),
                    deps, (n, len(chunks)) if len(chunks) > 1 else None,
                )
                deps = [task.id]  # parts of one component touch the same files: in sequence
                last[kind] = task.id

        # Only dependencies inside the feature exist yet: feature dependencies come later.
        depended = {d for t in out.tasks for d in t.depends_on}
        out.impl_sinks = [t for t in last.values() if t not in depended]
        sinks = out.impl_sinks
        if wants_tests:
            checks = feature.acceptance_criteria or [
                r for r in feature.requirements if id(r) not in routed
            ]
            criteria = [i.text for i in test_reqs] + [f"A test checks: {i.text}" for i in checks]
            criteria = criteria or [
                f"Tests cover {feature.name}: {_first_sentence(feature.description)}"
            ]
            criteria.append("The test command passes")
            add("tests", criteria, "medium" if len(checks) > 3 else "simple", sinks, None)
        if wants_docs:
            docs = [i.text for i in doc_reqs] or [
                f"The documentation explains how to use {feature.name}"
            ]
            add("docs", docs + [i.text for i in _docs_items(items)], "simple", sinks, None)
        if not out.impl_sinks:
            # A docs- or tests-only feature: dependents wait for all of it.
            out.impl_sinks = [t.id for t in out.tasks if t.id not in
                              {d for x in out.tasks for d in x.depends_on}]
        return out


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
            kind = _file_kind(path)
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
