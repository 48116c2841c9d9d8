"""The text editor tool (``text_editor_20250728``, named ``str_replace_based_edit_tool``).

Implements the commands of Anthropic's schema tool: ``view`` (files with line numbers and an
optional ``view_range``; directories two levels deep), ``create``, ``str_replace`` (exactly one
match) and ``insert`` (``insert_text``, or ``new_str`` as some models send). Every file access
goes through :mod:`buildrunnerd.sandbox` (race-free, no symlink followed, regular files and
folders only, reads and writes bounded by ``agent.editor_max_read_bytes`` and
``agent.editor_max_write_bytes``). File work is synchronous and small; the agent loop runs it
in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from buildrunnerd.agent._confine import ToolError, refusals_as_tool_errors
from buildrunnerd.sandbox import list_tree, lstat_in, read_bytes_in, write_bytes_in

__all__ = ["EDITOR_TOOL_NAME", "EDITOR_TOOL_TYPE", "TextEditor", "editor_tool_param"]

EDITOR_TOOL_TYPE = "text_editor_20250728"
EDITOR_TOOL_NAME = "str_replace_based_edit_tool"
_MAX_LISTING = 400  # entries in a directory view; a huge tree is summarised, not dumped
_DEFAULT_MAX_BYTES = 1024 * 1024


def editor_tool_param(max_characters: int) -> dict[str, Any]:
    """The tool definition sent to the API."""
    return {"type": EDITOR_TOOL_TYPE, "name": EDITOR_TOOL_NAME, "max_characters": max_characters}


class TextEditor:
    """The editor bound to one worktree."""

    def __init__(self, root: Path, *, max_characters: int,
                 max_read_bytes: int = _DEFAULT_MAX_BYTES,
                 max_write_bytes: int = _DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.max_characters = max_characters
        self.max_read_bytes = max_read_bytes
        self.max_write_bytes = max_write_bytes

    def run(self, params: dict[str, Any]) -> str:
        """Execute one tool call; returns the text for the ``tool_result`` or raises
        :class:`ToolError` (sent back with ``is_error``)."""
        command = params.get("command")
        path = params.get("path")
        if not isinstance(path, str):
            raise ToolError("Missing required parameter 'path'.")
        with refusals_as_tool_errors():
            if command == "view":
                return self._view(path, params.get("view_range"))
            if command == "create":
                return self._create(path, params.get("file_text"))
            if command == "str_replace":
                return self._str_replace(path, params.get("old_str"), params.get("new_str", ""))
            if command == "insert":
                new = params.get("insert_text", params.get("new_str"))
                return self._insert(path, params.get("insert_line"), new)
        raise ToolError(
            f"Unknown command {command!r}; use one of view, create, str_replace, insert."
        )

    # --- commands ---
    def _view(self, raw: str, view_range: Any) -> str:
        if stat.S_ISDIR(lstat_in(self.root, raw).st_mode):
            return self._truncate(self._listing(raw))
        text = self._read(raw)
        lines = text.split("\n")
        start, end = 1, len(lines)
        if view_range is not None:
            if (not isinstance(view_range, list) or len(view_range) != 2
                    or not all(isinstance(n, int) for n in view_range)):
                raise ToolError("view_range must be two integers [start, end]; end -1 = EOF.")
            start, end = view_range
            if end == -1:
                end = len(lines)
            if not 1 <= start <= len(lines) or end < start or end > len(lines):
                raise ToolError(
                    f"Invalid view_range {view_range}: {raw} has {len(lines)} lines; start must "
                    "be within them and end >= start (or -1)."
                )
        numbered = "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(start, end + 1))
        return self._truncate(numbered)

    def _create(self, raw: str, file_text: Any) -> str:
        if not isinstance(file_text, str):
            raise ToolError("Missing required parameter 'file_text' for create.")
        created = self._write(raw, file_text)
        return f"File {'created' if created else 'overwritten'}: {raw}"

    def _str_replace(self, raw: str, old: Any, new: Any) -> str:
        if not isinstance(old, str) or old == "":
            raise ToolError("Missing required parameter 'old_str' for str_replace.")
        if new is None:
            new = ""
        if not isinstance(new, str):
            raise ToolError("'new_str' must be a string.")
        text = self._read(raw)
        count = text.count(old)
        if count == 0:
            raise ToolError(
                f"No replacement was performed: old_str did not appear verbatim in {raw}. "
                "View the file and copy the text exactly, whitespace included."
            )
        if count > 1:
            lines = _match_lines(text, old)
            raise ToolError(
                f"No replacement was performed: old_str appears {count} times in {raw} (lines "
                f"{', '.join(map(str, lines))}). Include more surrounding lines to make it unique."
            )
        self._write(raw, text.replace(old, new, 1))
        return f"The file {raw} has been edited (1 replacement)."

    def _insert(self, raw: str, line: Any, new: Any) -> str:
        if not isinstance(line, int) or isinstance(line, bool):
            raise ToolError("Missing required integer parameter 'insert_line' for insert.")
        if not isinstance(new, str):
            raise ToolError("Missing required parameter 'insert_text' for insert.")
        text = self._read(raw)
        lines = text.split("\n")
        if not 0 <= line <= len(lines):
            raise ToolError(
                f"insert_line {line} is out of range: {raw} has {len(lines)} lines (0 inserts "
                "at the top)."
            )
        new_lines = new.split("\n")
        self._write(raw, "\n".join(lines[:line] + new_lines + lines[line:]))
        return f"Inserted {len(new_lines)} line(s) after line {line} of {raw}."

    # --- helpers ---
    def _read(self, raw: str) -> str:
        data = read_bytes_in(self.root, raw, max_bytes=self.max_read_bytes)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ToolError(f"{raw} is not a UTF-8 text file; it cannot be edited here.") from exc

    def _write(self, raw: str, text: str) -> bool:
        return write_bytes_in(self.root, raw, text.encode("utf-8"),
                              max_bytes=self.max_write_bytes)

    def _listing(self, raw: str) -> str:
        # Two levels only: a node_modules or .venv below must not be traversed; symlinks are
        # shown with their target and never followed.
        entries, omitted = list_tree(self.root, raw, depth=2, max_entries=_MAX_LISTING)
        if omitted:
            entries.append(f"[... {omitted} more entries not shown ...]")
        header = (f"Files and directories up to 2 levels deep in {raw}, excluding hidden items:")
        return "\n".join([header, *entries])

    def _truncate(self, text: str) -> str:
        if len(text) <= self.max_characters:
            return text
        omitted = len(text) - self.max_characters
        return (text[: self.max_characters]
                + f"\n[... output truncated: {omitted} characters omitted; use view_range ...]")


def _match_lines(text: str, needle: str) -> list[int]:
    lines: list[int] = []
    start = 0
    while (i := text.find(needle, start)) != -1:
        lines.append(text.count("\n", 0, i) + 1)
        start = i + 1
    return lines
