"""JSON-RPC error codes and the run and task states: plain constants, no imports.

:mod:`buildrunnerd.protocol` re-exports every name here next to its msgspec Structs. This
module exists so that :mod:`buildrunnerd.errors` and ``brctl`` can name a code or a state
without importing msgspec (``brctl --json status`` starts in about the time of the
interpreter itself; see bench/brctl_bench.py).
"""

__all__ = [
    "AGENT_FAILED", "BUDGET_EXCEEDED", "CONFIG_INVALID", "DAEMON_STOPPING",
    "DEFAULT_MAX_FRAME_BYTES", "FRAME_TOO_LARGE", "INTERNAL_ERROR", "INVALID_PARAMS",
    "INVALID_REQUEST", "INVALID_STATE", "METHOD_NOT_FOUND", "NOT_FOUND", "PARSE_ERROR",
    "REPO_INVALID", "RUN_STATES", "SANDBOX_UNAVAILABLE", "SPEC_INVALID", "STORE_FAILED",
    "TASK_STATES",
    "TERMINAL_RUN_STATES", "UNAUTHORIZED", "WORKSPACE_FAILED",
]

# --- JSON-RPC 2.0 standard codes -----------------------------------------------------------
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# --- Application codes (-32000..-32099); ``data`` says what a program needs --------------------
NOT_FOUND = -32001  # data: {"kind": "run"|"task"|"batch", "id": ...}
INVALID_STATE = -32002  # data: {"state": current state, "allowed": [...]}
FRAME_TOO_LARGE = -32003  # data: {"limit_bytes": int}
UNAUTHORIZED = -32004  # data: {"uid": int}
DAEMON_STOPPING = -32005
SPEC_INVALID = -32010  # data: {"errors": [{"line", "message"}], "path"}
REPO_INVALID = -32011  # data: {"repo": path, "reason": ...}
CONFIG_INVALID = -32012  # data: {"key", "file"}
STORE_FAILED = -32020
WORKSPACE_FAILED = -32030
AGENT_FAILED = -32040
BUDGET_EXCEEDED = -32050  # data: {"budget_usd", "spent_usd", "estimate_usd"}
SANDBOX_UNAVAILABLE = -32060  # data: {"sandbox": setting, "reason": ...}

DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024

RUN_STATES: tuple[str, ...] = (
    "queued", "planning", "running", "paused", "succeeded", "failed", "cancelled",
)
TASK_STATES: tuple[str, ...] = (
    "pending", "ready", "running", "verifying", "succeeded", "failed", "blocked", "cancelled",
)
TERMINAL_RUN_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
