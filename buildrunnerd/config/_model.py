"""Configuration as msgspec Structs. Every key is documented in config/buildrunner.toml."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "DaemonConfig", "PlannerConfig", "ModelsConfig", "Price", "PricingConfig", "AgentConfig",
    "ClaudeCodeConfig", "VerifyConfig", "RetentionConfig", "SandboxConfig", "Config",
]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DaemonConfig(_Section):
    workers: int = 4  # daemon-wide worker limit
    max_workers_per_run: int = 4
    max_frame_bytes: int = 8 * 1024 * 1024
    grace_period_s: float = 20.0  # SIGTERM: how long in-flight work may take to checkpoint
    client_idle_timeout_s: float = 600.0  # a silent connection is closed after this
    write_timeout_s: float = 10.0  # a client that stops reading is dropped after this
    subscriber_queue_size: int = 1000  # events buffered per subscriber before it is dropped
    log_format: Literal["console", "json"] = "console"
    log_level: str = "info"
    backend: Literal["auto", "anthropic", "claude-code", "simulated"] = "auto"


class PlannerConfig(_Section):
    planner: Literal["auto", "heuristic", "claude"] = "auto"
    context_budget_tokens: int = 4000
    max_batch_minutes: int = 240
    chunk_tokens: int = 6000  # Claude planner: spec chunk size


class ModelsConfig(_Section):
    simple: str = "claude-haiku-5-5"
    medium: str = "claude-sonnet-5-5"
    complex: str = "claude-opus-5-5"
    critical: str = "claude-opus-5-5"
    ladder: list[str] = msgspec.field(
        default_factory=lambda: ["claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5"]
    )
    fallback: str = "claude-sonnet-5-5"  # used after repeated overload of the chosen model
    max_tokens: int = 16000


class Price(_Section):
    input_per_mtok: float
    output_per_mtok: float
    cache_write_per_mtok: float
    cache_read_per_mtok: float


class PricingConfig(_Section):
    as_of: str = "2026-11-01"
    source: str = "https://www.anthropic.com/pricing (list prices, USD per million tokens)"
    models: dict[str, Price] = msgspec.field(default_factory=lambda: {
        "claude-haiku-5-5": Price(
            input_per_mtok=1.0, output_per_mtok=5.0,
            cache_write_per_mtok=1.25, cache_read_per_mtok=0.10,
        ),
        "claude-sonnet-5-5": Price(
            input_per_mtok=3.0, output_per_mtok=15.0,
            cache_write_per_mtok=3.75, cache_read_per_mtok=0.30,
        ),
        "claude-opus-5-5": Price(
            input_per_mtok=5.0, output_per_mtok=25.0,
            cache_write_per_mtok=6.25, cache_read_per_mtok=0.50,
        ),
    })


class AgentConfig(_Section):
    max_turns: int = 40
    # input + output tokens (cache reads and writes included) per batch; 0 = no limit
    max_batch_tokens: int = 4_000_000
    request_timeout_s: float = 600.0
    batch_timeout_s: float = 3600.0
    max_retries: int = 8
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    overloads_before_fallback: int = 3
    stream: bool = True
    # How worktree content (bash tool, tests, checks, backend CLIs) is confined: "auto" picks
    # bubblewrap on Linux and sandbox-exec on macOS and refuses model work when neither works;
    # "off" is the explicit, logged opt-out ("none" is its old spelling).
    sandbox: Literal["auto", "bwrap", "sandbox-exec", "off", "none"] = "auto"
    bash_timeout_s: float = 120.0
    tool_output_max_chars: int = 30000
    # The editor tool refuses to read or write a file larger than this (the model controls
    # the worktree: a 1 GiB file must not be read into the daemon's memory).
    editor_max_read_bytes: int = 1024 * 1024
    editor_max_write_bytes: int = 1024 * 1024


class ClaudeCodeConfig(_Section):
    """The ``claude-code`` backend: each batch is a headless Claude Code session."""

    web_tools: bool = False  # WebFetch and WebSearch for the sessions
    subagents: bool = False  # the Task tool (subagents) for the sessions
    # The CLI's own retries of 429/5xx answers (CLAUDE_CODE_MAX_RETRIES) before it gives up.
    max_retries: int = 4
    # A usage or rate limit that names no reset time pauses the run for this long.
    usage_limit_wait_s: float = 300.0


class VerifyConfig(_Section):
    test_cmd: str | None = None  # default test command (per-run --test-cmd and the spec win)
    test_timeout_s: float = 600.0
    import_check: str | None = None  # e.g. "python -c 'import mypkg'"
    secret_allowlist: str | None = None  # path of an allowlist file (see docs/verification.md)
    max_fix_attempts: int = 2
    max_merge_reruns: int = 3
    keep_failed_worktrees: bool = False
    git_timeout_s: float = 60.0
    # Changes outside a batch's own files: "strict" fails the forbidden ones (the spec, CI
    # configuration, protected tests, other batches' files), "warn" only lists them.
    scope: Literal["strict", "warn"] = "strict"
    scope_globs: list[str] = []  # extra paths every batch may change, e.g. "docs/**"
    stubs: Literal["fail", "warn", "off"] = "fail"  # placeholder code (pass, TODO, ...)
    # Verify the run branch's head with the full test command after every merge (a merge
    # that breaks it is rolled back and its batch runs again), and once at the end.
    branch_check: bool = True


class SandboxConfig(_Section):
    """Limits and toolchain paths of the sandbox (see docs/security.md)."""

    max_processes: int = 2048  # RLIMIT_NPROC (per sandbox on Linux >= 5.14)
    max_memory_mb: int = 8192  # RLIMIT_AS per process; 0 = no limit
    max_file_size_mb: int = 1024  # RLIMIT_FSIZE: the largest file a command may write
    max_cpu_s: int = 3600  # RLIMIT_CPU per process
    # Extra read-only paths the project's toolchain needs (interpreters, SDKs under $HOME).
    readonly_paths: list[str] = msgspec.field(default_factory=list)


class RetentionConfig(_Section):
    events_days: int = 90
    api_calls_days: int = 365
    vacuum_interval_hours: float = 24.0
    first_pass_delay_s: float = 60.0  # the first prune/vacuum pass, after the daemon starts


class HooksConfig(_Section):
    on_run_end: str | None = None  # shell command run when a run ends (BUILDRUNNER_RUN_* env)
    timeout_s: float = 30.0  # the hook is killed after this
    notify: Literal["auto", "off"] = "auto"  # desktop notification (notify-send) at a run's end


class Config(_Section):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    planner: PlannerConfig = msgspec.field(default_factory=PlannerConfig)
    models: ModelsConfig = msgspec.field(default_factory=ModelsConfig)
    pricing: PricingConfig = msgspec.field(default_factory=PricingConfig)
    agent: AgentConfig = msgspec.field(default_factory=AgentConfig)
    claude_code: ClaudeCodeConfig = msgspec.field(default_factory=ClaudeCodeConfig)
    verify: VerifyConfig = msgspec.field(default_factory=VerifyConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    sandbox: SandboxConfig = msgspec.field(default_factory=SandboxConfig)
    hooks: HooksConfig = msgspec.field(default_factory=HooksConfig)
    budget_usd: float | None = None  # default per-run budget; None = unlimited
