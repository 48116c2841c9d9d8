"""Fixtures of the attack suite (see _lab.py)."""

from tests.security._lab import lab_factory

__all__ = ["lab_factory"]
