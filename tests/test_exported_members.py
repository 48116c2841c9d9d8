"""Every package's ``__all__`` names what it exports, and only that (as httpx and anyio test)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import brctl
import buildrunnerd

PACKAGES = sorted(
    name for root in (buildrunnerd, brctl)
    for name in [root.__name__] + [
        f"{root.__name__}.{m.name}" for m in pkgutil.iter_modules(root.__path__) if m.ispkg])


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_names_what_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__: its public surface is unstated"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"
