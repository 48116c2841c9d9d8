"""The tools of a ``claude-code`` session, and the rules that keep them in the worktree.

Which tools a session gets (the CLI's file tools; BuildRunner's confined bash as an in-process
MCP server instead of the CLI's own Bash; web tools and subagents only when configured), which
parameter of each file tool is a path, the path rule a file tool's call must pass (the editor
tool's rules), and what a tool call's event says. The session's ``PreToolUse`` hook applies
them (``_Guard`` in :mod:`._claude_code`).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from buildrunnerd.agent._bash import BashSession
from buildrunnerd.agent._confine import ToolError
from buildrunnerd.sandbox import WorktreePathError, lstat_in, worktree_relpath

__all__ = [
    "BASE_TOOLS", "BASH_TOOL", "PATH_PARAMS", "SUBAGENT_TOOLS", "WEB_TOOLS", "bash_server",
    "call_summary", "check_worktree_path",
]

# The CLI's own Bash is not among them: it would run inside the CLI's sandbox, which has the
# network and the CLI's credentials. The model's commands go through BuildRunner's bash tool
# (an in-process MCP tool), confined like the anthropic backend's: no network, no secrets.
BASE_TOOLS = ["Read", "Write", "Edit", "Glob", "Grep"]
BASH_TOOL = "mcp__buildrunner__bash"
WEB_TOOLS = ["WebFetch", "WebSearch"]
SUBAGENT_TOOLS = ["Task"]
# Path parameters of the CLI's file tools, and whether the tool writes.
PATH_PARAMS: dict[str, tuple[str, bool]] = {
    "Read": ("file_path", False), "Write": ("file_path", True), "Edit": ("file_path", True),
    "MultiEdit": ("file_path", True), "NotebookEdit": ("notebook_path", True),
    "Glob": ("path", False), "Grep": ("path", False), "LS": ("path", False),
}


def check_worktree_path(root: Path, raw: str, *, write: bool) -> None:
    """Raise :class:`WorktreePathError` unless a file tool may use ``raw``, by the editor
    tool's rules (:mod:`buildrunnerd.sandbox._fs`): inside the worktree, no ``..`` out of it,
    no symlink anywhere on the way (nor at the end), and no write into ``.git``. The CLI then
    does the file work itself, inside its sandbox."""
    rel = worktree_relpath(root, raw)
    if write and any(part.casefold() == ".git" for part in rel.parts):
        raise WorktreePathError(
            f"{raw} is inside .git, which is read-only (BuildRunner commits for you).",
            problem="read_only", path=raw)
    # Every existing component, from the root down: a symlink on the way is refused; the
    # first missing one ends the walk (Write creates it and what is below).
    for depth in range(1, len(rel.parts) + 1):
        sub = "/".join(rel.parts[:depth])
        try:
            st = lstat_in(root, sub)
        except WorktreePathError as exc:
            if exc.problem == "missing":
                return
            raise WorktreePathError(exc.message.replace(sub, raw, 1), problem=exc.problem,
                                    path=raw) from exc
        if stat.S_ISLNK(st.st_mode):
            raise WorktreePathError(
                f"The path {raw} goes through a symlink ({sub}); symlinks are not followed, "
                "refused. Use the real path inside the repository.", problem="symlink",
                path=raw)


def call_summary(tool: str, params: Any, *, refused: str | None) -> dict[str, Any]:
    """The ``tool.call`` event's data: the tool, its path or command (cut), and why it was
    refused, if it was."""
    summary: dict[str, Any] = {"tool": tool}
    if isinstance(params, dict):
        for key in ("command", "file_path", "path", "pattern", "notebook_path"):
            value = params.get(key)
            if isinstance(value, str):
                summary[key] = value[:300]
    if refused is not None:
        summary["refused"] = refused[:300]
    return summary


def bash_server(bash: BashSession) -> Any:
    """The in-process MCP server with BuildRunner's confined bash tool."""
    from claude_agent_sdk import create_sdk_mcp_server, tool

    @tool("bash", "Run a shell command in the repository worktree (a persistent shell: cd and "
          "variables carry over). No network. Give restart: true to restart the shell.",
          {"type": "object", "properties": {"command": {"type": "string"},
                                            "restart": {"type": "boolean"}}})
    async def run(args: dict[str, Any]) -> dict[str, Any]:
        try:
            output, is_error = await bash.run(args), False
        except ToolError as exc:
            output, is_error = str(exc), True
        except OSError as exc:
            output, is_error = f"The tool failed: {exc}", True
        return {"content": [{"type": "text", "text": output or "(no output)"}],
                "is_error": is_error}

    return create_sdk_mcp_server("buildrunner", tools=[run])
