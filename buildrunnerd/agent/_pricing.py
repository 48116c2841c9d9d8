"""Cost of a call in USD from its ``usage`` and the price table (``config.pricing``)."""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from buildrunnerd.config import Price, PricingConfig

__all__ = ["CostTable"]

_log = structlog.get_logger("buildrunnerd.agent.pricing")


class CostTable:
    """Prices per million tokens, looked up by model name.

    A dated model id (``claude-sonnet-5-5-20261001``) takes the price of the longest table
    entry it starts with (followed by ``-``). A model not in the table costs 0, with one
    warning per model: the run goes on, and ``brctl costs`` under-reports until the table is
    fixed."""

    def __init__(self, pricing: PricingConfig) -> None:
        self._models = dict(pricing.models)
        self._warned: set[str] = set()

    def price(self, model: str) -> Price | None:
        """The price entry for ``model`` or None."""
        if model in self._models:
            return self._models[model]
        matches = [name for name in self._models if model.startswith(name + "-")]
        return self._models[max(matches, key=len)] if matches else None

    def cost_usd(self, model: str, usage: Mapping[str, int | None]) -> float:
        """What a call with this ``usage`` costs. ``input_tokens`` excludes the cached parts,
        which are billed at their own rates."""
        price = self.price(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                _log.warning("no price for model; its calls are recorded at cost 0",
                             model=model, fix="add it under [pricing.models] in the config")
            return 0.0
        return (
            (usage.get("input_tokens") or 0) * price.input_per_mtok
            + (usage.get("output_tokens") or 0) * price.output_per_mtok
            + (usage.get("cache_creation_input_tokens") or 0) * price.cache_write_per_mtok
            + (usage.get("cache_read_input_tokens") or 0) * price.cache_read_per_mtok
        ) / 1_000_000

    def estimate_usd(self, model: str, *, cached_tokens: int, new_tokens: int,
                     output_tokens: int = 0) -> float:
        """A price for a call before it is made: the prefix sent last time at the
        cache-read rate, everything new at the cache-write rate, and the expected output."""
        price = self.price(model)
        if price is None:
            return 0.0
        return (cached_tokens * price.cache_read_per_mtok
                + new_tokens * max(price.cache_write_per_mtok, price.input_per_mtok)
                + output_tokens * price.output_per_mtok) / 1_000_000
