"""``tests/`` mirrors the package: the unit tests of ``buildrunnerd/<pkg>/`` live in
``tests/<pkg>/``, brctl's in ``tests/brctl/``, and the cross-cutting suites have names of their
own. A new folder that is neither fails here, so the layout stays a map of the code."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import brctl
import buildrunnerd

TESTS = Path(__file__).resolve().parent
# Suites that cut across packages, each named for what it checks, not for a module.
SUITES = {
    "bench": "smoke runs of bench/",
    "contract": "the outside interface of /work/shared/contract.md",
    "e2e": "the real daemon end to end",
    "fakeapi": "the fake Messages API and its own tests",
    "integrity": "lying models through the real daemon",
    "security": "the attack suite against the daemon run as another user",
}
DATA = {"data"}  # inputs the tests read, not tests
# Files at the top of tests/ that test the whole tree rather than one module.
CROSS_CUTTING = {"test_docs.py", "test_exported_members.py", "test_harness.py",
                 "test_layering.py", "test_layout.py", "test_packaging.py"}


def _subpackages() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(buildrunnerd.__path__) if m.ispkg}


def _top_level_modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(buildrunnerd.__path__) if not m.ispkg}


def _folders() -> set[str]:
    return {p.name for p in TESTS.iterdir()
            if p.is_dir() and not p.name.startswith((".", "__"))}


def test_every_tests_folder_is_a_package_or_a_named_suite() -> None:
    packages = _subpackages() | {brctl.__name__}
    strays = sorted(_folders() - packages - SUITES.keys() - DATA)
    assert strays == [], (
        f"tests/ folders that are neither a package of buildrunnerd/brctl nor a named suite: "
        f"{strays}; move their files to tests/<package>/ (git mv), or name the suite in "
        f"{Path(__file__).name}")
    assert not (SUITES.keys() & packages), "a suite may not share a package's name"


def test_every_package_has_its_tests_folder() -> None:
    missing = sorted((_subpackages() | {brctl.__name__}) - _folders())
    assert missing == [], f"packages without a tests/<package>/ folder: {missing}"


def test_test_folders_are_python_packages() -> None:
    # Without __init__.py two folders' test_x.py would collide under pytest's rootdir import.
    folders = _folders() - DATA
    without = sorted(f for f in folders if not (TESTS / f / "__init__.py").is_file())
    assert without == [], f"tests/ folders without __init__.py: {without}"


def _tests_a_top_level_module(file_name: str) -> bool:
    # test_<module>.py, or test_<module>_<part>.py for one part of it (test_protocol_report.py)
    return any(file_name == f"test_{m}.py" or file_name.startswith(f"test_{m}_")
               for m in _top_level_modules())


def test_top_level_test_files_mirror_top_level_modules() -> None:
    strays = sorted(p.name for p in TESTS.glob("test_*.py")
                    if p.name not in CROSS_CUTTING and not _tests_a_top_level_module(p.name))
    assert strays == [], (
        f"test files at the top of tests/ that test no top-level module of buildrunnerd: "
        f"{strays}; move them to the tests/<package>/ of the module they test")
