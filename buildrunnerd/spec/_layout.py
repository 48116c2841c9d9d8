"""File layouts written in code fences: trees (``├── src/``) and plain path lists.

The paths they hold are hints: they tell the planner the project's language and where its
files go, and resolve a bare file name the text mentions (``auth.ts``) to its place in the tree
(``src/services/auth.ts``).
"""

from __future__ import annotations

from buildrunnerd.spec._scan import CodeLine
from buildrunnerd.spec._text import looks_like_path

__all__ = ["layout_paths"]

_TREE_CHARS = "│├└─┬┼|`+\\ \t\u00a0"
_MAX_LAYOUT_PATHS = 2000
# Code blocks in a programming language hold code, not a layout.
_LAYOUT_INFOS = frozenset({"", "text", "txt", "plaintext", "plain", "tree", "console", "md",
                           "markdown", "none", "ascii", "filetree", "directory", "structure"})


def _entry(raw: str) -> tuple[int, str] | None:
    """(column, name) of a tree or list line: ``│   ├── auth.ts  # tokens`` -> (8, "auth.ts")."""
    start = 0
    while start < len(raw) and raw[start] in _TREE_CHARS:
        start += 1
    if start < len(raw) and raw[start] == "-" and raw[start:start + 2] in ("- ", "--"):
        start += 2 if raw[start:start + 2] == "- " else 0
        while start < len(raw) and raw[start] in _TREE_CHARS + "-":
            start += 1
    rest = raw[start:]
    if not rest or rest[0] in "#/<([{":
        return None
    name = rest.split(None, 1)[0].strip("`*\"',")
    if not name or name.startswith(("#", "//")) or "=" in name:
        return None
    return start, name


def _block_paths(lines: list[CodeLine]) -> list[str]:
    entries = [e for e in (_entry(ln.text) for ln in lines) if e is not None]
    if not entries:
        return []
    treeish = sum(1 for ln in lines if any(c in ln.text for c in "├└│"))
    if treeish < 2 and not all(looks_like_path(n) or n.endswith("/") for _, n in entries):
        return []  # neither a tree nor a list of paths: commands, output, prose
    lowest = min(col for col, _ in entries)
    roots = [n for col, n in entries if col == lowest]
    drop_root = len(roots) == 1 and roots[0].endswith("/") and len(entries) > 1
    out: list[str] = []
    stack: list[tuple[int, str]] = []  # (column, directory name)
    for col, name in entries:
        while stack and stack[-1][0] >= col:
            stack.pop()
        parts = [d for _, d in stack]
        if drop_root and parts and parts[0] == roots[0].rstrip("/"):
            parts = parts[1:]
        if drop_root and not parts and name == roots[0]:
            stack.append((col, name.rstrip("/")))
            continue
        path = "/".join([*parts, name.rstrip("/")])
        if name.endswith("/") or "." not in name.rsplit("/", 1)[-1]:
            stack.append((col, name.rstrip("/")))
            if name.endswith("/") and path:
                out.append(path + "/")  # a directory of the layout (files may go in it)
            if not name.endswith("/") and looks_like_path(path):
                out.append(path)  # "Makefile", "Dockerfile"
            continue
        if looks_like_path(path):
            out.append(path)
    return out


def layout_paths(code: list[CodeLine]) -> list[str]:
    """Every file path (and, ending in "/", directory) the spec's fenced trees and path lists
    show, in order, once each."""
    blocks: dict[int, list[CodeLine]] = {}
    for line in code:
        if line.info in _LAYOUT_INFOS and line.text.strip():
            blocks.setdefault(line.block, []).append(line)
    found: dict[str, None] = {}
    for lines in blocks.values():
        for path in _block_paths(lines):
            found.setdefault(path, None)
            if len(found) >= _MAX_LAYOUT_PATHS:
                return list(found)
    return list(found)
