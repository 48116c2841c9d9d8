"""Intake: reading a spec and planning it, exactly as ``buildrunnerd plan`` does.

Used by ``run.submit`` and ``spec.plan``; planning runs in a worker thread (a big spec takes a
while and the loop must keep serving).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from buildrunnerd.errors import Problem, SpecError
from buildrunnerd.plan._model import Plan

if TYPE_CHECKING:
    from buildrunnerd.config import Config

__all__ = ["SubmitRequest", "read_spec", "plan_spec", "git_root"]


class SubmitRequest(msgspec.Struct, kw_only=True):
    """``run.submit`` params (validated by the RPC method)."""

    spec_path: str | None = None
    spec_text: str | None = None
    repo: str | None = None
    workers: int | None = None
    budget_usd: float | None = None
    test_cmd: str | None = None
    allow_dirty: bool = False
    scratch: bool = False  # no repository: the results stay in the run's scratch folder


async def read_spec(spec_path: str | None, spec_text: str | None) -> tuple[str, str | None]:
    """The spec's text and absolute path (None for inline text)."""
    if spec_text is not None:
        return spec_text, spec_path
    assert spec_path is not None
    path = Path(spec_path)
    if not path.is_absolute():
        raise SpecError(
            [Problem(None, f"spec_path must be absolute (the daemon does not share your "
                           f"working directory): {spec_path}")],
            path=spec_path,
        )
    try:
        text = await anyio.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise SpecError(
            [Problem(None, f"cannot read the spec: {why}; check the path and its permissions")],
            path=str(path),
        ) from exc
    return text, str(path)


async def plan_spec(text: str, path: str | None, config: Config) -> tuple[Any, Plan]:
    """Parse and plan a spec exactly as ``buildrunnerd plan`` does (in a worker thread: a big
    spec takes a while and the loop must keep serving)."""
    from buildrunnerd.plan import build_plan
    from buildrunnerd.spec import parse_spec

    def work() -> tuple[Any, Plan]:
        spec = parse_spec(text, path)
        return spec, build_plan(spec, config=config.planner)

    return await anyio.to_thread.run_sync(work)


def git_root(start: Path) -> Path | None:
    """The git repository holding ``start`` (the default ``repo`` of a spec file), or None."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None
