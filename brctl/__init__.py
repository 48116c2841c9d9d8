"""``brctl``: the thin client of buildrunnerd. Imports nothing heavy (see tests).

``__version__`` is buildrunnerd's, looked up when asked for: ``brctl --json ping`` and
``status RUN`` load no module of buildrunnerd (tests/brctl/test_brctl_imports.py).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buildrunnerd import __version__ as __version__

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from buildrunnerd import __version__

        return __version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
