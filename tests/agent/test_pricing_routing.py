"""The price table and the model router."""

from __future__ import annotations

import pytest

from buildrunnerd.agent import CostTable, pick_model
from buildrunnerd.config import ModelsConfig, Price, PricingConfig


def test_cost_uses_every_usage_field_at_its_rate() -> None:
    table = CostTable(PricingConfig())
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000,
             "cache_creation_input_tokens": 1_000_000, "cache_read_input_tokens": 1_000_000}
    assert table.cost_usd("claude-sonnet-5-5", usage) == pytest.approx(3 + 15 + 3.75 + 0.30)
    # A dated id takes the price of the table entry it starts with.
    assert table.cost_usd("claude-opus-5-5-20261101", usage) == pytest.approx(5 + 25 + 6.25 + 0.5)


def test_unknown_model_costs_nothing_and_warns_once(capsys: pytest.CaptureFixture[str]) -> None:
    table = CostTable(PricingConfig(models={"m": Price(input_per_mtok=1, output_per_mtok=1,
                                                       cache_write_per_mtok=1,
                                                       cache_read_per_mtok=1)}))
    assert table.cost_usd("mystery-1", {"input_tokens": 10**6}) == 0.0
    assert table.cost_usd("mystery-1", {"input_tokens": 10**6}) == 0.0
    out = capsys.readouterr()
    assert (out.out + out.err).count("no price for model") == 1


def test_routing_by_highest_complexity_and_escalation_ladder() -> None:
    models = ModelsConfig()
    assert pick_model(models, ["simple", "simple"]) == "claude-haiku-5-5"
    assert pick_model(models, ["simple", "medium"]) == "claude-sonnet-5-5"
    assert pick_model(models, ["critical", "simple"]) == "claude-opus-5-5"
    assert pick_model(models, ["simple"], escalation=1) == "claude-sonnet-5-5"
    assert pick_model(models, ["simple"], escalation=5) == "claude-opus-5-5"  # top of ladder
    custom = ModelsConfig(simple="my-small-model")
    assert pick_model(custom, ["simple"]) == "my-small-model"
    assert pick_model(custom, ["simple"], escalation=1) == "claude-opus-5-5"
