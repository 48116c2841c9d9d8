"""Paths of the spec fixtures under tests/data."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
REALWORLD = DATA / "realworld"
SEEDS = DATA / "seeds"
SPECS = DATA / "specs"


def corpus_files() -> list[Path]:
    """Every real-world spec and seed, README excluded."""
    files = sorted(p for p in REALWORLD.iterdir() if p.name != "README.md")
    files += sorted(SEEDS.iterdir())
    assert len(files) == 16, f"the fixture corpus under {DATA} is incomplete: {files}"
    return files
