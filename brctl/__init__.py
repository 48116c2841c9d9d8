"""``brctl``: the thin client of buildrunnerd. Imports nothing heavy (see tests)."""

from buildrunnerd import __version__

__all__ = ["__version__"]
