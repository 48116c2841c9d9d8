"""Finding the Claude Code CLI, its login, and the environment it runs with.

Which CLI (``$BUILDRUNNER_CLAUDE_CLI``, else ``claude`` on PATH, else the one bundled in the
``claude-agent-sdk`` wheel), and whether it is logged in (``claude auth status --json``, run
with BuildRunner's own config dir). The CLI keeps its config, login and session files in
``$CLAUDE_CONFIG_DIR``; BuildRunner points that at ``<state dir>/claude`` so the CLI never
needs the user's home (the sandbox hides it). See docs/claude-code.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from buildrunnerd.errors import AgentError

__all__ = [
    "CLAUDE_CLI_ENV",
    "ClaudeCli",
    "ClaudeCliError",
    "claude_config_dir",
    "cli_environment",
    "find_claude_cli",
    "probe_claude_cli",
]

CLAUDE_CLI_ENV = "BUILDRUNNER_CLAUDE_CLI"
_STATUS_TIMEOUT_S = 30.0
# What the CLI may see of the daemon's environment: the API endpoint and the credentials it
# is meant to use. Nothing of BuildRunner's own (socket, home) and nothing else of the user's.
_PASSED_THROUGH = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL",
                   "CLAUDE_CODE_OAUTH_TOKEN", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


class ClaudeCliError(AgentError):
    """The Claude Code CLI cannot be used: not installed, not runnable, or not logged in."""


@dataclass(frozen=True, slots=True)
class ClaudeCli:
    """A Claude Code CLI found on this machine, and what ``auth status`` says of it."""

    path: Path
    source: str  # where it was found: "$BUILDRUNNER_CLAUDE_CLI", "PATH", "claude-agent-sdk"
    version: str = ""
    logged_in: bool = False
    auth_method: str = ""  # "oauth_token", "claude.ai", "api_key", ...
    config_dir: Path | None = None

    def describe(self) -> str:
        """One line for logs and ``ping``: which CLI, from where, and its login."""
        login = f"logged in ({self.auth_method})" if self.logged_in else "not logged in"
        version = f" {self.version}" if self.version else ""
        return f"Claude Code{version} at {self.path} (from {self.source}), {login}"


def claude_config_dir(home: Path) -> Path:
    """``$CLAUDE_CONFIG_DIR`` for every CLI the daemon starts: under the state dir."""
    return home / "claude"


def _bundled_cli() -> Path | None:
    # The contract names this fallback: the CLI the claude-agent-sdk wheel ships. Its
    # location is the wheel's layout (the package's data), looked up without importing it.
    import importlib.util

    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_bundled" / "claude"
        if candidate.is_file():
            return candidate
    return None


def find_claude_cli(env: Mapping[str, str]) -> tuple[Path, str] | None:
    """The CLI to use and where it was found, or None when there is none."""
    explicit = env.get(CLAUDE_CLI_ENV, "").strip()
    if explicit:
        found = shutil.which(explicit, path=env.get("PATH")) if "/" not in explicit else explicit
        return (Path(found or explicit), f"${CLAUDE_CLI_ENV}")
    on_path = shutil.which("claude", path=env.get("PATH"))
    if on_path:
        return Path(on_path), "PATH"
    bundled = _bundled_cli()
    if bundled is not None:
        return bundled, "claude-agent-sdk"
    return None


def cli_environment(env: Mapping[str, str], config_dir: Path) -> dict[str, str]:
    """The variables BuildRunner gives the CLI (on top of the sandbox's allowlist)."""
    out = {k: env[k] for k in _PASSED_THROUGH if env.get(k)}
    out.update({
        "CLAUDE_CONFIG_DIR": str(config_dir),
        # No telemetry, no update checks, no other lookups: the API is the only traffic.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    })
    return out


_INSTALL_FIX = ("install it with `pip install 'buildrunner[claude-code]'` (the claude-agent-sdk "
                "wheel bundles the CLI), or point $BUILDRUNNER_CLAUDE_CLI at a `claude` binary")


def _login_fix(config_dir: Path) -> str:
    return (f"log in once for BuildRunner: `CLAUDE_CONFIG_DIR={config_dir} claude auth login` "
            "(or `claude setup-token` and set CLAUDE_CODE_OAUTH_TOKEN in the daemon's "
            "environment), or set ANTHROPIC_API_KEY; see docs/claude-code.md")


async def probe_claude_cli(env: Mapping[str, str], home: Path, *,
                           require: bool = False) -> ClaudeCli | None:
    """Find the CLI and ask it whether it is logged in (with BuildRunner's config dir).

    ``require``: raise :class:`ClaudeCliError` (with the fix) when there is no usable,
    logged-in CLI; otherwise return None (no CLI) or a :class:`ClaudeCli` whose
    ``logged_in`` says."""
    found = find_claude_cli(env)
    config_dir = claude_config_dir(home)
    if found is None:
        if require:
            raise ClaudeCliError(f"backend claude-code: no Claude Code CLI found; {_INSTALL_FIX}")
        return None
    path, source = found
    if not (path.is_file() and os.access(path, os.X_OK)):
        if require:
            raise ClaudeCliError(f"backend claude-code: the Claude Code CLI {path} (from "
                                 f"{source}) is not an executable file; {_INSTALL_FIX}")
        return None
    await anyio.Path(config_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    run_env = {"PATH": env.get("PATH", os.defpath), "HOME": str(config_dir),
               **cli_environment(env, config_dir)}
    try:
        with anyio.fail_after(_STATUS_TIMEOUT_S):
            status = await anyio.run_process([str(path), "auth", "status", "--json"],
                                             env=run_env, check=False)
            version = await anyio.run_process([str(path), "--version"], env=run_env,
                                              check=False)
    except (OSError, TimeoutError) as exc:
        if require:
            raise ClaudeCliError(f"backend claude-code: the Claude Code CLI {path} does not "
                                 f"run ({exc}); {_INSTALL_FIX}") from exc
        return None
    try:
        info = json.loads(status.stdout.decode("utf-8", "replace") or "{}")
    except ValueError:
        info = {}
    cli = ClaudeCli(
        path=path, source=source,
        version=version.stdout.decode("utf-8", "replace").split(" ", 1)[0].strip(),
        logged_in=bool(info.get("loggedIn")) and status.returncode == 0,
        auth_method=str(info.get("authMethod") or ""), config_dir=config_dir,
    )
    if require and not cli.logged_in:
        raise ClaudeCliError(f"backend claude-code: {cli.describe()} with config dir "
                             f"{config_dir}; {_login_fix(config_dir)}")
    return cli
