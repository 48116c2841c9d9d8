"""Configuration: TOML file -> msgspec Structs, with environment overrides."""

from buildrunnerd.config._model import (
    AgentConfig,
    Config,
    DaemonConfig,
    ModelsConfig,
    PlannerConfig,
    Price,
    PricingConfig,
    RetentionConfig,
    VerifyConfig,
)

__all__ = [
    "AgentConfig", "Config", "DaemonConfig", "ModelsConfig", "PlannerConfig", "Price",
    "PricingConfig", "RetentionConfig", "VerifyConfig",
]
