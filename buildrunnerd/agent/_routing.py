"""Which model works on a batch: by complexity, stepped up by escalation."""

from __future__ import annotations

from collections.abc import Iterable

from buildrunnerd.config import ModelsConfig

__all__ = ["COMPLEXITY_ORDER", "pick_model"]

COMPLEXITY_ORDER = ("simple", "medium", "complex", "critical")


def pick_model(models: ModelsConfig, complexities: Iterable[str], escalation: int = 0) -> str:
    """The model for a batch whose tasks have ``complexities``.

    The batch's highest complexity picks the model (unknown values count as ``medium``).
    ``escalation`` steps that many places up ``models.ladder`` (after failed verifications),
    stopping at the top; a model not on the ladder escalates straight to its top."""
    ranks = [COMPLEXITY_ORDER.index(c) if c in COMPLEXITY_ORDER else 1 for c in complexities]
    highest = COMPLEXITY_ORDER[max(ranks, default=1)]
    model: str = getattr(models, highest)
    if escalation <= 0 or not models.ladder:
        return model
    ladder = models.ladder
    if model not in ladder:
        return ladder[-1]
    return ladder[min(ladder.index(model) + escalation, len(ladder) - 1)]
