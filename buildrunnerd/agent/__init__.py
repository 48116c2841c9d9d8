"""The model backends that call Claude: ``anthropic`` (the Messages API with an editor and a
shell, ours) and ``claude-code`` (headless Claude Code sessions, for subscriptions).

Routing, retries, the shared rate limiter, prompt caching, costs and the Claude planner are
described in ``docs/models-and-costs.md``.
"""

from buildrunnerd.agent._claude_cli import ClaudeCli, ClaudeCliError, probe_claude_cli
from buildrunnerd.agent._claude_code import ClaudeCodeExecutor
from buildrunnerd.agent._confine import ToolError
from buildrunnerd.agent._executor import AnthropicExecutor
from buildrunnerd.agent._planner import ClaudePlanner, choose_planner
from buildrunnerd.agent._preflight import check_api
from buildrunnerd.agent._pricing import CostTable
from buildrunnerd.agent._retry import RateLimiter
from buildrunnerd.agent._routing import pick_model

__all__ = [
    "AnthropicExecutor",
    "ClaudeCli",
    "ClaudeCliError",
    "ClaudeCodeExecutor",
    "ClaudePlanner",
    "CostTable",
    "RateLimiter",
    "ToolError",
    "check_api",
    "choose_planner",
    "pick_model",
    "probe_claude_cli",
]
