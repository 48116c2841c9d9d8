"""The project's stack and layout, read from the spec (issue 11, part 3)."""

from __future__ import annotations

import pytest

from buildrunnerd.plan import build_plan, detect_stack
from buildrunnerd.spec import parse_spec

SWIFT = """# Habit Tracker

A SwiftUI app for iOS that tracks daily habits.

```
HabitTracker/
├── Package.swift
├── Sources/
│   └── HabitTracker/
│       ├── HabitStore.swift
│       └── Views/
└── Tests/
    └── HabitTrackerTests/
```

## Features

### Habit store
- Save habits to `HabitStore.swift` on disk
- Count the current streak of every habit

### Streak view
- Display the streak of each habit as a ring
"""


def test_a_swift_spec_gets_swift_paths_layout_and_test_command() -> None:
    spec = parse_spec(SWIFT)
    stack = detect_stack(spec)
    assert (stack.language, stack.test_command, stack.swift_target) == (
        "swift", "swift test", "HabitTracker")
    plan = build_plan(spec)
    assert plan.language == "swift" and plan.suggested_test_command == "swift test"
    store = [t for t in plan.tasks if t.feature == "habit-store"]
    # The bare file name the text uses is resolved through the layout tree: required.
    assert store[0].files == ["Sources/HabitTracker/HabitStore.swift"]
    guessed = [f for t in plan.tasks for f in t.suggested_files]
    assert guessed and all(f.endswith(".swift") for f in guessed), guessed
    assert all(f.startswith(("Sources/HabitTracker/", "Tests/HabitTrackerTests/"))
               for f in guessed)


@pytest.mark.parametrize(("text", "language", "command", "ext"), [
    ("# Shortener\n\nA URL shortener written in TypeScript on Node.js.\n\n## Features\n\n"
     "### Links\n- Store short links in a table\n", "typescript", "npm test", ".ts"),
    ("# Grep\n\nA fast grep clone in Rust, built with cargo.\n\n## Features\n\n"
     "### Search\n- Search files for a pattern\n", "rust", "cargo test", ".rs"),
    ("# Proxy\n\nA reverse proxy as a Go module (go 1.22).\n\n## Features\n\n"
     "### Routing\n- Route requests by host\n", "go", "go test ./...", ".go"),
    ("# Notes\n\nNotes in the terminal.\n\n## Features\n\n### Note taking\n- Save notes\n",
     "python", "python -m pytest -q", ".py"),
    ("# Web\n\n```tsx\nexport const App = () => null\n```\n\n## Features\n\n"
     "### Page\n- Render the home page\n", "typescript", "npm test", ".tsx"),
])
def test_the_stated_language_decides_the_guessed_paths(
    text: str, language: str, command: str, ext: str
) -> None:
    spec = parse_spec(text)
    plan = build_plan(spec)
    assert (plan.language, plan.suggested_test_command) == (language, command)
    guessed = [f for t in plan.tasks for f in t.suggested_files if not f.endswith((".md", ".yml"))]
    assert guessed and all(f.endswith(ext) for f in guessed), guessed
    assert all(t.files == [] for t in plan.tasks), "nothing named, nothing required"


def test_english_words_are_not_languages() -> None:
    spec = parse_spec("# Tool\n\nA swift tool that lets people react to express changes.\n\n"
                      "## Features\n\n### Sync\n- Sync notes\n")
    assert detect_stack(spec).language == "python"


def test_named_files_outweigh_the_prose() -> None:
    spec = parse_spec("# Tool\n\nInspired by a React app.\n\n## Features\n\n### Core\n"
                      "- `app/core.py` runs the jobs\n- `app/cli.py` parses arguments\n")
    assert detect_stack(spec).language == "python"
    assert build_plan(spec).suggested_test_command == "python -m pytest -q"


def test_a_stated_test_command_wins_over_the_suggestion() -> None:
    spec = parse_spec("# Tool\n\nIn Rust.\n\nTest command: `make check`\n\n## Features\n\n"
                      "### Core\n- Run\n")
    plan = build_plan(spec)
    assert plan.test_command == "make check" and plan.suggested_test_command is None
