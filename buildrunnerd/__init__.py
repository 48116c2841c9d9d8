"""BuildRunner daemon: turns a written product spec into working, tested code.

This top-level module stays light on purpose: ``brctl`` imports the shared wire types
(:mod:`buildrunnerd.protocol`) and path rules (:mod:`buildrunnerd.paths`) through it, and must
never pull in anthropic, aiosqlite, watchfiles or tiktoken.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
