"""Which files a task touches: the ones the spec names (required) and the planner's guesses
(suggested, never required), in the project's language and layout."""

from __future__ import annotations

import re
from functools import lru_cache

from buildrunnerd.plan._language import Stack
from buildrunnerd.plan._model import Task
from buildrunnerd.spec._model import Spec
from buildrunnerd.spec._text import looks_like_path

__all__ = ["LayoutIndex", "default_file", "file_kind", "hold_files_to_spec", "module_name"]

# Where a named file belongs, judged by its path; first match wins.
_FILE_KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("tests", re.compile(r"(^|/)(tests?|__tests__|spec|Tests)/|(^|/)test_|_test\.|\.(test|spec)\."
                         r"|Tests?\.(swift|kt|java|cs)$")),
    ("docs", re.compile(r"(^|/)docs?/|\.(md|rst|adoc)$|(^|/)readme", re.IGNORECASE)),
    ("infra", re.compile(
        r"(^|/)(dockerfile|docker-compose|\.github|deploy|infra|terraform|k8s|helm|systemd)"
        r"|\.(ya?ml|tf|service|ini|cfg)$|(^|/)(package\.json|pyproject\.toml|Makefile|"
        r"Cargo\.toml|Package\.swift|go\.mod|tsconfig\.json)$",
        re.IGNORECASE,
    )),
    ("ui", re.compile(
        r"\.(tsx|jsx|vue|svelte|css|scss|html|htm)$|(^|/)(components|pages|ui|views|templates|"
        r"static|public|app/\(.*\))/|View\.swift$",
        re.IGNORECASE,
    )),
    ("data", re.compile(r"(^|/)(models?|schemas?|migrations|db|database|entities)(/|\.|_)|\.sql$",
                        re.IGNORECASE)),
    ("api", re.compile(r"(^|/)(api|routes?|endpoints|handlers|controllers|server)(/|\.)"
                       r"|route\.\w+$",
                       re.IGNORECASE)),
]


def file_kind(path: str) -> str:
    """The component a path belongs to: tests, docs, infra, ui, data, api, else logic."""
    for kind, pattern in _FILE_KINDS:
        if pattern.search(path):
            return kind
    return "logic"


@lru_cache(maxsize=4096)
def module_name(feature_id: str) -> str:
    """A feature id as a module name: "user-accounts" -> "user_accounts"."""
    name = re.sub(r"\W+", "_", feature_id.lower()).strip("_") or "feature"
    return name if name[0].isalpha() else f"feature_{name}"


def _pascal(mod: str) -> str:
    return "".join(part.capitalize() for part in mod.split("_"))


def default_file(kind: str, feature_id: str, stack: Stack) -> str:
    """A sensible path for a component of a feature, in the stack's conventions (a guess: it
    goes into ``suggested_files``)."""
    mod = module_name(feature_id)
    slug = mod.replace("_", "-")
    lang = stack.language
    pascal = _pascal(mod) if lang not in ("python", "go", "rust") else ""
    if kind == "docs":
        return f"docs/{slug}.md"
    if kind == "infra":
        return f"deploy/{slug}.yml"
    if lang in ("typescript", "javascript"):
        ext = "ts" if lang == "typescript" else "js"
        return {
            "data": f"src/models/{slug}.{ext}",
            "logic": f"src/lib/{slug}.{ext}",
            "api": f"src/api/{slug}.{ext}",
            "ui": f"src/components/{pascal}.{ext}x",
            "tests": f"tests/{slug}.test.{ext}",
        }[kind]
    if lang == "go":
        return {
            "data": f"internal/{mod}/model.go",
            "logic": f"internal/{mod}/{mod}.go",
            "api": f"internal/{mod}/handler.go",
            "ui": f"web/{slug}.html",
            "tests": f"internal/{mod}/{mod}_test.go",
        }[kind]
    if lang == "rust":
        return {
            "data": f"src/models/{mod}.rs",
            "logic": f"src/{mod}.rs",
            "api": f"src/api/{mod}.rs",
            "ui": f"src/ui/{mod}.rs",
            "tests": f"tests/{mod}.rs",
        }[kind]
    if lang == "swift":
        target = "App" if stack.swift_target is None else stack.swift_target
        src = f"Sources/{target}/" if target else "Sources/"
        return {
            "data": f"{src}Models/{pascal}.swift",
            "logic": f"{src}{pascal}.swift",
            "api": f"{src}API/{pascal}API.swift",
            "ui": f"{src}Views/{pascal}View.swift",
            "tests": f"Tests/{target}Tests/{pascal}Tests.swift" if target
            else f"Tests/{pascal}Tests.swift",
        }[kind]
    if lang in ("kotlin", "java"):
        ext = "kt" if lang == "kotlin" else "java"
        return {
            "data": f"src/main/{lang}/model/{pascal}.{ext}",
            "logic": f"src/main/{lang}/{pascal}.{ext}",
            "api": f"src/main/{lang}/api/{pascal}Controller.{ext}",
            "ui": f"src/main/{lang}/ui/{pascal}Screen.{ext}",
            "tests": f"src/test/{lang}/{pascal}Test.{ext}",
        }[kind]
    if lang == "ruby":
        return {
            "data": f"app/models/{mod}.rb", "logic": f"lib/{mod}.rb",
            "api": f"app/controllers/{mod}_controller.rb", "ui": f"app/views/{mod}/index.html.erb",
            "tests": f"test/{mod}_test.rb",
        }[kind]
    if lang == "csharp":
        return {
            "data": f"src/Models/{pascal}.cs", "logic": f"src/{pascal}.cs",
            "api": f"src/Controllers/{pascal}Controller.cs", "ui": f"src/Views/{pascal}.cshtml",
            "tests": f"tests/{pascal}Tests.cs",
        }[kind]
    root = stack.python_root
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


_STEM_SPLIT = re.compile(r"[^a-z0-9]+")


class LayoutIndex:
    """The spec's layout paths, by file name and by stem, for resolving and suggesting."""

    __slots__ = ("by_name", "by_stem", "dirs", "paths")

    def __init__(self, layout: list[str]) -> None:
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        files = [p for p in layout if not p.endswith("/")]
        self.paths = frozenset(files)
        dirs = {p.rstrip("/") for p in layout if p.endswith("/")}
        for path in files:
            parts = path.split("/")[:-1]
            dirs.update("/".join(parts[: n + 1]) for n in range(len(parts)))
        self.dirs = frozenset(dirs)
        for path in files:
            name = path.rsplit("/", 1)[-1]
            self.by_name.setdefault(name, []).append(path)
            stem = _STEM_SPLIT.sub("", name.rsplit(".", 1)[0].lower())
            if stem:
                self.by_stem.setdefault(stem, []).append(path)

    def resolve(self, path: str) -> str:
        """A file name the text mentions (``auth.ts``, ``radiacode_ble/client.py``) as the one
        place the layout puts it (``src/services/auth.ts``); anything else unchanged."""
        if path in self.paths:
            return path
        name = path.rsplit("/", 1)[-1]
        found = [p for p in self.by_name.get(name, ()) if p == path or p.endswith("/" + path)]
        return found[0] if len(found) == 1 else path

    def required(self, path: str) -> bool:
        """Whether verification may require ``path``: with a layout tree, only what the tree
        places, in it or in one of its folders (a path elsewhere, like an upstream file to
        study, is a hint); without one, every path the spec names."""
        if not self.paths and not self.dirs:
            return True
        if path in self.paths:
            return True
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        return bool(parent) and parent in self.dirs

    def suggest(self, kind: str, words: tuple[str, ...]) -> str | None:
        """A layout file of this kind whose name is one of the feature's words."""
        if not self.by_stem:
            return None
        for word in words:
            for path in self.by_stem.get(word, ()):
                if file_kind(path) == kind:
                    return path
        return None


def spec_files(spec: Spec) -> set[str]:
    """Every path the spec names: in its features, its task lists, its fenced layouts."""
    named = {p for f in spec.features for p in f.files}
    named.update(p for t in spec.tasks for p in t.files)
    named.update(spec.layout)
    return named


def hold_files_to_spec(tasks: list[Task], spec: Spec) -> int:
    """Hold another planner's tasks to the rule: ``files`` (which verification requires) keep
    only paths the spec names or its layout places; every other path becomes a suggestion.
    A path that is not a plain relative path (absolute, ``..``, a URL: a hostile or confused
    answer) is dropped altogether. Returns how many paths were moved or dropped."""
    named = spec_files(spec)
    index = LayoutIndex(spec.layout)
    changed = 0
    for task in tasks:
        required: list[str] = []
        suggested: list[str] = []
        for raw in [*task.files, *task.suggested_files]:
            path = raw[2:] if raw.startswith("./") else raw
            if not looks_like_path(path) or "\\" in path or any(
                part in ("..", ".", "") for part in path.split("/")
            ):
                changed += 1
                continue
            resolved = index.resolve(path)
            if resolved in named and raw in task.files:
                if resolved not in required:
                    required.append(resolved)
            else:
                changed += raw in task.files
                if resolved not in suggested and resolved not in required:
                    suggested.append(resolved)
        task.files = required
        task.suggested_files = [p for p in suggested if p not in required]
    return changed
