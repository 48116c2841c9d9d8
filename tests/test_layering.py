"""The layering contracts in pyproject.toml hold, and they catch what they are there to catch.

``lint-imports`` (import-linter) checks them in scripts/test; running it here too means the check
cannot silently stop running. The planted-import tests run it on a copy of the packages with one
import added, so a contract that was loosened until it checks nothing fails here. The last tests
keep docs/architecture.md's layer diagram and module names true to the contract and the code.
"""

from __future__ import annotations

import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import buildrunnerd

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = "buildrunnerd: no module imports from a layer above its own"
SANDBOX = "sandbox imports nothing of buildrunnerd but errors and config"
BRCTL = "brctl imports only buildrunnerd's codes, errors and paths, and no heavy dependency"


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return {contract["id"]: contract for contract in contracts}


def _lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.is_file(), "no lint-imports: install the dev extra (scripts/bootstrap)"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=project, capture_output=True, text=True, timeout=60, check=False)


def _one_line(output: str) -> str:
    # rich wraps long contract names at the terminal width: compare words, not lines.
    return " ".join(output.split())


def test_the_contracts_hold_on_the_code() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    text = _one_line(result.stdout)
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in text
    for name in (LAYERS, SANDBOX, BRCTL):
        assert f"{name} KEPT" in text


def test_every_top_level_module_has_a_layer_and_brctl_may_import_only_three() -> None:
    children = {module.name for module in pkgutil.iter_modules(buildrunnerd.__path__)}
    contracts = _contracts()
    layers = contracts["layers"]
    assert layers["exhaustive"] is True  # a new top-level module must be placed
    placed = {name.strip() for layer in layers["layers"]
              for name in layer.replace(":", "|").split("|")}
    assert placed == children
    # A forbidden contract lists what is forbidden: a new part of buildrunnerd must be added to
    # brctl's list, or brctl could import it unnoticed.
    forbidden = {name.removeprefix("buildrunnerd.")
                 for name in contracts["brctl"]["forbidden_modules"]
                 if name.startswith("buildrunnerd.")}
    assert forbidden == children - {"codes", "errors", "paths"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the packages and pyproject.toml that a test may plant an import in."""
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("buildrunnerd", "brctl"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _plant(project: Path, module: str, code: str) -> None:
    path = project / module
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + code, encoding="utf-8")


PLANTED = [
    pytest.param(  # upward, and inside a function: a late import counts as much as any
        "buildrunnerd/spec/_model.py",
        "def _late() -> None:\n    from buildrunnerd.daemon import _app  # noqa: F401\n",
        LAYERS, "buildrunnerd.spec._model -> buildrunnerd.daemon._app", id="spec-imports-daemon"),
    pytest.param(  # upward, and under TYPE_CHECKING only
        "buildrunnerd/plan/_model.py",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        "    from buildrunnerd.prompt import BatchPrompt  # noqa: F401\n",
        LAYERS, "buildrunnerd.plan._model -> buildrunnerd.prompt", id="plan-imports-prompt"),
    pytest.param(  # sideways between independent siblings of one layer
        "buildrunnerd/rpc/_codec.py", "from buildrunnerd.store import Store  # noqa: F401\n",
        LAYERS, "buildrunnerd.rpc._codec -> buildrunnerd.store", id="rpc-imports-store"),
    pytest.param(  # the one the comment in errors.py warns of: brctl gets msgspec through it
        "buildrunnerd/errors.py", "from buildrunnerd import protocol  # noqa: F401,E402\n",
        BRCTL, "buildrunnerd.errors -> buildrunnerd.protocol", id="errors-imports-protocol"),
    pytest.param(
        "brctl/_describe.py", "from buildrunnerd.store import Store  # noqa: F401,E402\n",
        BRCTL, "brctl._describe -> buildrunnerd.store", id="brctl-imports-store"),
    pytest.param(  # a heavy third-party package (brctl --json status starts without it)
        "brctl/_output.py", "def _late() -> None:\n    import msgspec  # noqa: F401\n",
        BRCTL, "brctl._output -> msgspec", id="brctl-imports-msgspec"),
    pytest.param(
        "buildrunnerd/sandbox/_run.py", "from buildrunnerd import paths  # noqa: F401,E402\n",
        SANDBOX, "buildrunnerd.sandbox._run -> buildrunnerd.paths", id="sandbox-imports-paths"),
]


@pytest.mark.parametrize(("module", "code", "contract", "chain"), PLANTED)
def test_a_planted_import_breaks_its_contract(
        project: Path, module: str, code: str, contract: str, chain: str) -> None:
    _plant(project, module, code)
    result = _lint_imports(project)
    assert result.returncode == 1, result.stdout + result.stderr
    text = _one_line(result.stdout)
    assert f"{contract} BROKEN" in text
    assert chain in text  # the copy was checked, not the installed package


def test_a_new_top_level_module_without_a_layer_breaks_the_layers(project: Path) -> None:
    (project / "buildrunnerd" / "scratchpad.py").write_text('"""Unplaced."""\n', encoding="utf-8")
    result = _lint_imports(project)
    assert result.returncode == 1, result.stdout + result.stderr
    text = _one_line(result.stdout)
    assert f"{LAYERS} BROKEN" in text
    assert "buildrunnerd.scratchpad" in text


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _diagram_layers() -> list[str]:
    """The layers drawn in docs/architecture.md ("## Layers"), highest first."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    lines = block.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("buildrunnerd, "))
    layers = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name = re.split(r"\s{2,}", line.strip())[0]
        if not name.startswith("- -"):
            layers.append(name)
    return layers


def test_the_architecture_doc_draws_the_contracts_layers() -> None:
    assert _diagram_layers() == _contracts()["layers"]["layers"]


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py")
                  if p.name != "__init__.py" and "__pycache__" not in p.parts)


def test_the_architecture_doc_names_every_module_and_only_modules_that_exist() -> None:
    text = re.sub(r"```.*?```", "", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.S)
    named = {" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)}
    words = set(re.findall(r"[\w.]+", " ".join(named)))
    missing = [str(p.relative_to(ROOT)) for p in _modules("buildrunnerd") + _modules("brctl")
               if p.name not in words and p.stem not in words]
    assert missing == [], f"docs/architecture.md does not say what these are: {missing}"
    files = {p.name for p in _modules("buildrunnerd") + _modules("brctl")}
    stale = [name for name in named
             if re.fullmatch(r"_?\w+\.py", name) and name not in files | {"__init__.py"}]
    assert stale == [], f"docs/architecture.md names modules that do not exist: {stale}"
    subpackages = {p.name for p in (ROOT / "buildrunnerd").iterdir() if p.is_dir()}
    tops = {"buildrunnerd", "brctl", "tests", "bench", "scripts", "systemd", "config", "docs"}
    paths = [name for name in named if re.fullmatch(r"[\w.-]+/[\w./-]*", name)
             and name.split("/")[0] in tops | subpackages]
    gone = [name for name in paths
            if not (ROOT / name).exists() and not (ROOT / "buildrunnerd" / name).exists()]
    assert gone == [], f"docs/architecture.md names paths that do not exist: {gone}"
