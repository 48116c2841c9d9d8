"""Configuration: TOML file -> msgspec Structs, with environment overrides."""

from buildrunnerd.config._load import (
    ENV_OVERRIDES,
    RESTART_REQUIRED,
    check_config_main,
    describe_config,
    load_config,
    reloadable_diff,
)
from buildrunnerd.config._model import (
    AgentConfig,
    ClaudeCodeConfig,
    Config,
    DaemonConfig,
    HooksConfig,
    ModelsConfig,
    PlannerConfig,
    Price,
    PricingConfig,
    RetentionConfig,
    SandboxConfig,
    VerifyConfig,
)

__all__ = [
    "AgentConfig", "ClaudeCodeConfig", "Config", "DaemonConfig", "ENV_OVERRIDES", "HooksConfig",
    "ModelsConfig", "PlannerConfig", "Price", "PricingConfig", "RESTART_REQUIRED",
    "RetentionConfig", "SandboxConfig", "VerifyConfig", "check_config_main", "describe_config",
    "load_config", "reloadable_diff",
]
