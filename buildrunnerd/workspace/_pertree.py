"""Values that depend only on a whole tree, carried from one tree to the next by what differs.

Every batch asks questions of the whole accepted tree and of its staged tree: the project's
top-level packages (the stubs check), the protected tests (the report check). Computed from
scratch they cost a pass over every path, each batch (issue 13: a batch's cost must follow its
change). A :class:`PerTree` keeps each value with the listing it was computed from, keyed by
the tree's id (a tree id names its content, so an entry is never stale), and a value for a
tree it has not seen is derived from the one it saw last by the paths where the two listings
differ: the size of the change, plus one comparison of two listings in C.

Whatever is derived must equal what a computation from scratch gives; the derivations are
pure functions of the listing (and of blob contents, which blob ids name), and
tests/workspace/test_pertree.py checks them against the from-scratch answer.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Generic, TypeVar

from buildrunnerd.workspace._tree import Tree

__all__ = ["PerTree", "is_object_id", "tree_changes"]

V = TypeVar("V")

_OBJECT_ID = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})")


def is_object_id(name: str | None) -> bool:
    """Whether ``name`` is a full object id (which names its content; a ref name can move)."""
    return name is not None and _OBJECT_ID.fullmatch(name) is not None


def tree_changes(old: Tree, new: Tree) -> list[str]:
    """The paths added, removed or changed (content or mode) from ``old`` to ``new``, sorted."""
    # The (path, entry) pairs in one listing and not in the other, as a set operation on the
    # two dicts' item views: the whole comparison runs in C (a Python loop with a lookup per
    # path cost ~2.6x more, each batch, a pass over a listing that grows with the run).
    return sorted({path for path, _ in old.items() ^ new.items()})


class PerTree(Generic[V]):
    """Values of one kind, one per tree id, each kept with a copy of the listing it was made
    from. ``build(tree)`` computes a value from scratch; ``update(value, old, new, paths)``
    the value of ``new`` from that of ``old``, given the paths where they differ."""

    def __init__(self, build: Callable[[Tree], V],
                 update: Callable[[V, Tree, Tree, Collection[str]], V], *,
                 max_entries: int = 4) -> None:
        self._build = build
        self._update = update
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Tree, V]] = OrderedDict()

    def get(self, key: str | None, tree: Tree) -> V:
        """The value for ``tree`` (whose id is ``key``; None when it has none: computed and
        not kept): kept, derived from the last value kept, or computed."""
        if key is not None:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[1]
        if self._entries:
            old_tree, old_value = next(reversed(self._entries.values()))
            paths = tree_changes(old_tree, tree)
            # A change of more than a quarter of the tree: as cheap to compute from scratch.
            value = (self._update(old_value, old_tree, tree, paths)
                     if len(paths) * 4 <= len(tree) else self._build(tree))
        else:
            value = self._build(tree)
        if key is not None:
            self.put(key, tree, value)
        return value

    def derive(self, value: V, old: Tree, new: Tree, paths: Collection[str]) -> V:
        """The value of ``new`` from ``value`` (that of ``old``), ``paths`` where they differ
        (not kept: :meth:`put` it under the new tree's id once it has one)."""
        return self._update(value, old, new, paths)

    def put(self, key: str, tree: Tree, value: V) -> None:
        """Keep ``value`` as the value of ``tree``, whose id is ``key``."""
        self._entries[key] = (dict(tree), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
