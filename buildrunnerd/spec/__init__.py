"""The spec parser: Markdown (native PROJECT_SPEC.md, PRDs, spec-kit, Kiro, plans) -> ``Spec``.

``parse_spec`` recognises the dialect, keeps every feature, requirement, criterion and explicit
task with its source line, and validates the result; problems come back all at once in one
:class:`~buildrunnerd.errors.SpecError`. See docs/spec-format.md.
"""

from buildrunnerd.spec._model import Feature, Item, Spec, SpecTask, SpecWarning
from buildrunnerd.spec._parse import parse_spec, parse_spec_file

__all__ = ["Feature", "Item", "Spec", "SpecTask", "SpecWarning", "parse_spec", "parse_spec_file"]
