"""The project's stack, read from the spec: the language, where its files go, its test command.

Evidence, strongest first: file names the spec writes (in the text, in task lists, in fenced
layout trees), the info strings of its code fences (```swift), the languages, frameworks and
package managers its prose names. Python is only the answer when nothing says otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buildrunnerd.spec._model import Spec

__all__ = ["LANGUAGE_EXTENSIONS", "Stack", "detect_stack"]

# The source extensions of each language: a generated path in one of these belongs to it.
LANGUAGE_EXTENSIONS: dict[str, frozenset[str]] = {
    "python": frozenset({"py", "pyi"}),
    "typescript": frozenset({"ts", "tsx", "mts", "cts"}),
    "javascript": frozenset({"js", "jsx", "mjs", "cjs"}),
    "swift": frozenset({"swift"}),
    "rust": frozenset({"rs"}),
    "go": frozenset({"go"}),
    "kotlin": frozenset({"kt", "kts"}),
    "java": frozenset({"java"}),
    "ruby": frozenset({"rb"}),
    "csharp": frozenset({"cs"}),
}
_BY_EXTENSION = {ext: lang for lang, exts in LANGUAGE_EXTENSIONS.items() for ext in exts}
_FENCE_LANGUAGE = {
    "python": "python", "py": "python", "typescript": "typescript", "ts": "typescript",
    "tsx": "typescript", "javascript": "javascript", "js": "javascript", "jsx": "javascript",
    "swift": "swift", "rust": "rust", "rs": "rust", "go": "go", "golang": "go",
    "kotlin": "kotlin", "kt": "kotlin", "java": "java", "ruby": "ruby", "rb": "ruby",
    "csharp": "csharp", "cs": "csharp", "c#": "csharp",
}
# Words in the prose, with the language they point at. Frameworks and package managers count.
_PROSE = re.compile(
    r"\b(python|pytest|django|flask|fastapi|pydantic|poetry|pip install|"
    r"typescript|tsx?config|deno|bun|next\.js|nestjs|angular|"
    r"javascript|node\.js|nodejs|npm|pnpm|yarn|react|vue|svelte|express|"
    r"swift|swiftui|xcode|ios|macos app|swift package|uikit|"
    r"rust|cargo|crates?\.io|tokio|"
    r"golang|go modules?|go mod|go 1\.\d+|"
    r"kotlin|android|jetpack compose|gradle|"
    r"java|spring boot|maven|"
    r"ruby|rails|bundler|"
    r"c#|\.net|asp\.net)\b",
    re.I,
)
_PROSE_LANGUAGE = {
    "python": "python", "pytest": "python", "django": "python", "flask": "python",
    "fastapi": "python", "pydantic": "python", "poetry": "python", "pip install": "python",
    "typescript": "typescript", "tsconfig": "typescript", "tsxconfig": "typescript",
    "deno": "typescript", "bun": "typescript", "next.js": "typescript", "nestjs": "typescript",
    "angular": "typescript", "javascript": "javascript", "node.js": "javascript",
    "nodejs": "javascript", "npm": "javascript", "pnpm": "javascript", "yarn": "javascript",
    "react": "javascript", "vue": "javascript", "svelte": "javascript", "express": "javascript",
    "swift": "swift", "swiftui": "swift", "xcode": "swift", "ios": "swift",
    "macos app": "swift", "swift package": "swift", "uikit": "swift",
    "rust": "rust", "cargo": "rust", "crate": "rust", "crates": "rust", "crates.io": "rust",
    "tokio": "rust", "golang": "go", "go module": "go", "go modules": "go", "go mod": "go",
    "kotlin": "kotlin", "android": "kotlin", "jetpack compose": "kotlin", "gradle": "kotlin",
    "java": "java", "spring boot": "java", "maven": "java", "ruby": "ruby", "rails": "ruby",
    "bundler": "ruby", "c#": "csharp", ".net": "csharp", "asp.net": "csharp",
}
# English words too: they count only capitalised ("React", not "react to changes").
_AMBIGUOUS = frozenset({"swift", "express", "bun", "react", "rails", "ruby"})
_TEST_COMMAND = {
    "python": "python -m pytest -q",
    "typescript": "npm test",
    "javascript": "npm test",
    "swift": "swift test",
    "rust": "cargo test",
    "go": "go test ./...",
    "kotlin": "./gradlew test",
    "java": "mvn test",
    "ruby": "bundle exec rake test",
    "csharp": "dotnet test",
}
# The stack is stated early (title, overview, the first features): reading further only costs.
_MAX_PROSE_CHARS = 40_000
_SWIFT_TARGET = re.compile(r"^Sources/([^/]+)/")


@dataclass(frozen=True, slots=True)
class Stack:
    """The stack the planner follows: ``language`` and its conventions."""

    language: str
    test_command: str
    python_root: str | None = None  # the folder the spec's own Python modules live in
    swift_target: str | None = None  # "HabitTracker" of Sources/HabitTracker/...


def _spec_files(spec: Spec) -> list[str]:
    files = [p for f in spec.features for p in f.files]
    files += [p for t in spec.tasks for p in t.files]
    files += [p for t in spec.done_tasks for p in t.files]
    return files + list(spec.layout)


def _prose(spec: Spec) -> str:
    parts = [spec.title, spec.overview, spec.context]
    size = sum(len(p) for p in parts)
    for feature in spec.features:
        if size > _MAX_PROSE_CHARS:
            break
        chunk = " ".join([feature.name, feature.description,
                          *(i.text for i in feature.requirements)])
        parts.append(chunk)
        size += len(chunk)
    for task in spec.tasks[:500]:
        parts.append(task.title)
    return "\n".join(parts)


def _pascal(text: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", text)
    return "".join(w[:1].upper() + w[1:] for w in words[:3]) or "App"


_last: list[tuple[Spec, Stack]] = []  # the decomposer and the plan ask about the same spec


def detect_stack(spec: Spec) -> Stack:
    """The spec's language and conventions (Python when nothing points elsewhere)."""
    if _last and _last[0][0] is spec:
        return _last[0][1]
    stack = _detect(spec)
    _last[:] = [(spec, stack)]
    return stack


def _detect(spec: Spec) -> Stack:
    scores: dict[str, float] = {}
    files = _spec_files(spec)
    for path in files:
        ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
        lang = _BY_EXTENSION.get(ext)
        if lang is not None:
            scores[lang] = scores.get(lang, 0) + 3
        name = path.rsplit("/", 1)[-1]
        if name in ("Package.swift",):
            scores["swift"] = scores.get("swift", 0) + 6
        elif name in ("Cargo.toml",):
            scores["rust"] = scores.get("rust", 0) + 6
        elif name in ("go.mod",):
            scores["go"] = scores.get("go", 0) + 6
        elif name in ("tsconfig.json",):
            scores["typescript"] = scores.get("typescript", 0) + 6
        elif name in ("package.json",):
            scores["javascript"] = scores.get("javascript", 0) + 2
        elif name in ("pyproject.toml", "requirements.txt", "setup.py"):
            scores["python"] = scores.get("python", 0) + 6
    for info in spec.code_languages:
        lang = _FENCE_LANGUAGE.get(info)
        if lang is not None:
            scores[lang] = scores.get(lang, 0) + 2
    seen: dict[str, int] = {}
    for m in _PROSE.finditer(_prose(spec)):
        word = m.group(1)
        lang = _PROSE_LANGUAGE.get(word.lower())
        if lang is None or (word.lower() in _AMBIGUOUS and not word[:1].isupper()):
            continue
        # Each word counts a little, and less each time: one long rant about React does not
        # outweigh the file names.
        seen[lang] = seen.get(lang, 0) + 1
        if seen[lang] <= 5:
            scores[lang] = scores.get(lang, 0) + (2 if seen[lang] == 1 else 0.5)
    if scores.get("typescript") and scores.get("javascript"):
        # TypeScript projects use npm and React too: TS wins when it is named at all.
        scores["typescript"] += scores.pop("javascript")
    language = max(scores, key=lambda k: (scores[k], k == "python")) if scores else "python"
    root = None
    target = None
    if language == "python":
        counts: dict[str, int] = {}
        for path in files:
            if path.endswith(".py") and "/" in path and not re.search(
                r"(^|/)(tests?|docs?|scripts?)/|(^|/)test_", path
            ):
                folder = path.rsplit("/", 1)[0]
                counts[folder] = counts.get(folder, 0) + 1
        root = max(counts, key=lambda k: (counts[k], -len(k))) if counts else None
    elif language == "swift":
        found = (_SWIFT_TARGET.match(p) for p in files)
        targets = [t.group(1) for t in found if t is not None]
        # One or two folders under Sources/ are SwiftPM targets (Sources/HabitTracker/);
        # more are the app's own groups (Sources/Models/, Sources/Views/, ...): no target.
        if len(set(targets)) > 2:
            target = ""
        else:
            target = max(set(targets), key=targets.count) if targets else _pascal(spec.title)
    return Stack(language, _TEST_COMMAND[language], python_root=root, swift_target=target)
