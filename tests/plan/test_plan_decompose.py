"""The heuristic decomposer: tasks only where the feature's text calls for them."""

from __future__ import annotations

from buildrunnerd.plan import ESTIMATE_MINUTES, HeuristicPlanner, Planner, Task
from buildrunnerd.spec._model import Feature, Item, Spec, SpecTask


def _spec(*features: Feature, tasks: list[SpecTask] | None = None, overview: str = "") -> Spec:
    return Spec(title="Test project", path="SPEC.md", format="native", features=list(features),
                tasks=tasks or [], overview=overview)


def _items(*texts: str, start: int = 10) -> list[Item]:
    return [Item(text, start + n) for n, text in enumerate(texts)]


def _by_file(tasks: list[Task]) -> dict[str, Task]:
    """Each task by its first file, required or suggested."""
    return {(t.files or t.suggested_files)[0]: t for t in tasks}


TODOS = Feature(
    id="todo-lists", name="Todo lists", line=5,
    description="Users keep todo lists.",
    requirements=_items("Store todo items in a SQLite table with a title and a done flag",
                        "GET /api/todos returns every item as JSON",
                        "The todo page displays the items with a checkbox each"),
    acceptance_criteria=_items("Ticking a checkbox marks the item done", start=20),
)


def test_a_feature_becomes_the_tasks_its_text_calls_for() -> None:
    tasks = HeuristicPlanner().decompose_sync(_spec(TODOS))
    parts = _by_file(tasks)
    assert list(parts) == ["src/models/todo_lists.py", "src/api/todo_lists.py",
                           "src/ui/todo_lists.py", "tests/test_todo_lists.py"]
    data, api, ui, tests = (parts[p] for p in parts)
    assert [t.domain for t in tasks] == ["database", "backend", "frontend", "tests"]
    assert all(t.estimate_minutes in (60, 90, 120) for t in tasks)
    assert all(t.estimate_minutes == ESTIMATE_MINUTES[t.complexity] for t in tasks)
    # The spec names no file: every path is a guess, suggested and never required.
    assert all(t.files == [] and len(t.suggested_files) == 1 for t in tasks)
    # Titles say what to do, in the spec's words.
    assert data.title == "Store todo items in a SQLite table"
    assert api.title == "GET /api/todos returns every item as JSON"
    # Criteria are the spec's own sentences, each where it belongs.
    assert data.acceptance_criteria == [
        "Store todo items in a SQLite table with a title and a done flag"
    ]
    assert "GET /api/todos returns every item as JSON" in api.acceptance_criteria
    assert "Ticking a checkbox marks the item done" in ui.acceptance_criteria
    assert "A test checks: Ticking a checkbox marks the item done" in tests.acceptance_criteria
    # Inside the feature: data -> API -> UI -> tests.
    assert api.depends_on == [data.id]
    assert ui.depends_on == [api.id]
    assert tests.depends_on == [ui.id]
    assert [t.id for t in tasks] == ["todo-lists.1", "todo-lists.2", "todo-lists.3", "todo-lists.4"]
    assert all(t.feature == "todo-lists" and t.line == 5 for t in tasks)


def test_pure_logic_gets_no_database_api_or_ui_task() -> None:
    feature = Feature(
        id="csv-totals", name="CSV totals", line=3,
        description="Parse a CSV export and calculate the totals per category.",
        requirements=_items("Parse rows with a category and an amount",
                            "Calculate the sum per category"),
    )
    tasks = HeuristicPlanner().decompose_sync(_spec(feature))
    assert [t.title for t in tasks] == ["Parse rows with a category and an amount"]
    assert tasks[0].domain == "backend"
    assert (tasks[0].files, tasks[0].suggested_files) == ([], ["src/csv_totals.py"])


def test_auth_and_payments_are_critical_and_docs_are_simple() -> None:
    auth = Feature(id="login", name="Login", line=1,
                   description="Users log in with a password; see the docs for the README.",
                   requirements=_items("Verify the password hash"))
    pay = Feature(id="pay", name="Checkout", line=9, description="Take a card payment.",
                  requirements=_items("Charge the card through the payment provider API"))
    tasks = HeuristicPlanner().decompose_sync(_spec(auth, pay))
    impl = [t for t in tasks if t.domain not in ("docs", "tests")]
    assert impl and all(t.complexity == "critical" and t.estimate_minutes == 120 for t in impl)
    docs = [t for t in tasks if t.domain == "docs"]
    assert [t.feature for t in docs] == ["login"] and docs[0].complexity == "simple"


def test_named_files_go_to_the_task_that_touches_them() -> None:
    feature = Feature(
        id="search", name="Search", line=2, description="Search the catalogue.",
        requirements=_items("Search books by title", "Show results in a list"),
        acceptance_criteria=_items("Searching 'dune' finds Dune"),
        files=["src/search/index.py", "web/components/SearchBox.tsx", "tests/test_search.py"],
    )
    parts = _by_file(HeuristicPlanner().decompose_sync(_spec(feature)))
    assert list(parts) == ["src/search/index.py", "web/components/SearchBox.tsx",
                           "tests/test_search.py"]
    # Named files are required; nothing is guessed next to them.
    assert all(t.files and not t.suggested_files for t in parts.values())


def test_requirements_naming_disjoint_files_are_parallel_tasks() -> None:
    feature = Feature(
        id="storage", name="Storage", line=1, domain="database",
        requirements=_items(
            "A `todo_api/db.py` module opens the database and creates the tables.",
            "A `todo_api/models.py` module defines the Todo dataclass and its queries.",
            "Deleting a list deletes its todos.",
        ),
        acceptance_criteria=_items("Opening the database twice keeps the data.", start=20),
        files=["todo_api/db.py", "todo_api/models.py"],
    )
    tasks = HeuristicPlanner().decompose_sync(_spec(feature))
    impl = [t for t in tasks if t.domain != "tests"]
    assert [(t.title, t.files, t.depends_on) for t in impl] == [
        ("Open the database in `todo_api/db.py`", ["todo_api/db.py"], []),
        ("Define the Todo dataclass and its queries in `todo_api/models.py`",
         ["todo_api/models.py"], []),
    ]
    # Sentences naming no file join a task of the files the spec names: none is invented.
    assert "Deleting a list deletes its todos." in impl[0].acceptance_criteria
    assert all(not t.suggested_files for t in impl)
    assert tasks[-1].domain == "tests" and tasks[-1].depends_on == [t.id for t in impl]


def test_feature_dependencies_become_task_dependencies() -> None:
    base = Feature(id="accounts", name="Accounts", line=1, description="Store accounts.",
                   requirements=_items("Save accounts in the database", "Validate emails"))
    child = Feature(id="reports", name="Reports", line=8, depends_on=["accounts"],
                    description="Generate a monthly report.",
                    requirements=_items("Generate a report of the month"),
                    acceptance_criteria=_items("The report lists every account"))
    tasks = HeuristicPlanner().decompose_sync(_spec(base, child))
    by_id = {t.id: t for t in tasks}
    first_of_child = next(t for t in tasks if t.feature == "reports")
    assert first_of_child.depends_on == ["accounts.2"]  # the base's last implementation task
    assert by_id["accounts.2"].title == "Validate emails"
    assert all(t.depends_on for t in tasks if t.feature == "reports")


def test_a_big_feature_is_split_into_tasks_of_at_most_two_hours() -> None:
    reqs = [f"Validate rule number {n} of the tax code" for n in range(1, 11)]
    feature = Feature(id="tax", name="Tax rules", line=1, description="Apply tax rules.",
                      requirements=_items(*reqs))
    tasks = HeuristicPlanner().decompose_sync(_spec(feature))
    # Each part is titled by its own first requirement, never "(part 1/3)".
    assert [t.title for t in tasks] == [
        f"Validate rule number {n} of the tax code" for n in (1, 5, 8)
    ]
    assert [len(t.acceptance_criteria) for t in tasks] == [4, 3, 3], "balanced parts"
    assert all(t.estimate_minutes <= 120 for t in tasks)
    assert [c for t in tasks for c in t.acceptance_criteria] == reqs
    assert tasks[1].depends_on == [tasks[0].id] and tasks[2].depends_on == [tasks[1].id]


def test_a_docs_only_feature_gets_only_a_docs_task() -> None:
    feature = Feature(id="user-guide", name="User guide", line=1,
                      description="Write the user guide documentation.")
    tasks = HeuristicPlanner().decompose_sync(_spec(feature))
    assert [(t.domain, t.files, t.suggested_files) for t in tasks] == [
        ("docs", [], ["docs/user-guide.md"])
    ]


def test_typescript_projects_get_typescript_paths() -> None:
    feature = Feature(id="cart", name="Cart", line=1, description="A shopping cart.",
                      requirements=_items("Display the cart as a component"))
    tasks = HeuristicPlanner().decompose_sync(
        _spec(feature, overview="A Next.js app written in TypeScript.")
    )
    assert tasks[0].suggested_files == ["src/components/Cart.tsx"]


def test_explicit_tasks_are_used_as_written() -> None:
    feature = Feature(id="core", name="Core", line=1)
    written = [
        SpecTask(id="T001", title="Create the project skeleton", line=4, feature="core",
                 estimate_minutes=30, files=["pyproject.toml"]),
        SpecTask(id="T002", title="Write tests for the parser", line=5, feature="core",
                 depends_on=["T001"], files=["tests/test_parser.py"],
                 details=_items("Cover empty input")),
        SpecTask(id="A.1", title="Implement the login flow", line=6, feature="core",
                 depends_on=["T001"], acceptance_criteria=_items("Bad passwords are refused")),
        SpecTask(id="A.2", title="Build the settings page", line=7, feature="core",
                 estimate_minutes=90, domain="frontend", complexity="simple"),
    ]
    tasks = HeuristicPlanner().decompose_sync(_spec(feature, tasks=written))
    assert [t.id for t in tasks] == ["T001", "T002", "A.1", "A.2"]
    t001, t002, a1, a2 = tasks
    assert (t001.estimate_minutes, t001.files, t001.domain) == (30, ["pyproject.toml"], "infra")
    assert (t002.depends_on, t002.domain) == (["T001"], "tests")
    assert t002.acceptance_criteria == ["Cover empty input"]
    assert (a1.complexity, a1.estimate_minutes) == ("critical", 120)
    assert a1.acceptance_criteria == ["Bad passwords are refused"]
    assert (a2.domain, a2.complexity, a2.estimate_minutes) == ("frontend", "simple", 90)
    assert [t.line for t in tasks] == [4, 5, 6, 7]


async def test_decompose_is_deterministic_and_async_matches_sync() -> None:
    spec = _spec(TODOS)
    planner: Planner = HeuristicPlanner()  # satisfies the Protocol (mypy checks this line)
    assert isinstance(planner, HeuristicPlanner)
    first = planner.decompose_sync(spec)
    assert await planner.decompose(spec) == first == planner.decompose_sync(spec)


def test_test_and_doc_requirements_are_tests_and_docs_work() -> None:
    feature = Feature(
        id="qa", name="Tests and documentation", line=1, domain="tests",
        requirements=_items(
            "`tests/test_api.py` starts the server and exercises every endpoint with "
            "urllib.request, including the 401 and 404 cases.",
            "`README.md` explains how to run the server and shows a curl session.",
        ),
        acceptance_criteria=_items("python -m unittest discover passes on a fresh checkout."),
        files=["tests/test_api.py", "README.md"],
    )
    tasks = HeuristicPlanner().decompose_sync(_spec(feature))
    assert [(t.domain, t.files, t.complexity) for t in tasks] == [
        ("tests", ["tests/test_api.py"], "simple"), ("docs", ["README.md"], "simple"),
    ], "no API task from the words of a test, nothing critical about a git checkout"
    assert tasks[0].acceptance_criteria[0].startswith("`tests/test_api.py` starts the server")
    assert tasks[1].acceptance_criteria[0].startswith("`README.md` explains")


def test_paths_in_code_spans_do_not_decide_the_work_and_new_files_join_the_package() -> None:
    storage = Feature(
        id="storage", name="Storage", line=1, domain="database",
        requirements=_items("A `todo_api/db.py` module opens the database and creates tables."),
        files=["todo_api/db.py"],
    )
    search = Feature(id="search", name="Search", line=9,
                     requirements=_items("Search todos by title", "GET /todos?q=milk filters"))
    tasks = HeuristicPlanner().decompose_sync(_spec(storage, search))
    assert [(t.title, t.files) for t in tasks if t.feature == "storage"] == [
        ("Open the database in `todo_api/db.py`", ["todo_api/db.py"])
    ]
    # Guessed paths follow the spec's package, and they are only suggestions.
    assert {t.title: (t.files, t.suggested_files) for t in tasks if t.feature == "search"} == {
        "Search todos by title": ([], ["todo_api/search.py"]),
        "GET /todos filters": ([], ["todo_api/search_api.py"]),
    }


def test_another_planners_files_are_held_to_the_spec() -> None:
    from buildrunnerd.plan import hold_files_to_spec

    spec = Spec(title="T", path=None, format="native", layout=["src/services/auth.ts"],
                features=[Feature(id="a", name="A", line=1, files=["src/app.ts"])])
    task = Task(id="a.1", feature="a", title="t", domain="backend", complexity="simple",
                estimate_minutes=60,
                files=["./src/app.ts", "auth.ts", "src/invented.ts", "/etc/passwd",
                       "../outside.ts", "https://x.test/a.ts", "hashlib.scrypt"],
                suggested_files=["src/helpers.ts"])
    moved = hold_files_to_spec([task], spec)
    # Named by the spec (or placed by its layout) stays required; guesses become suggestions;
    # paths outside the project, URLs and dotted names are dropped.
    assert task.files == ["src/app.ts", "src/services/auth.ts"]
    assert task.suggested_files == ["src/invented.ts", "src/helpers.ts"]
    assert moved == 5
