"""The ``simulated`` backend: a model stand-in for demos, tests and benchmarks.

It is clearly labelled as such (``name = "simulated"``; ``ping`` and the logs say so). It does
no model work: it completes a batch by writing every file its tasks name, after
``ms_per_minute * sum(estimate_minutes)`` milliseconds. ``.py`` files are valid Python, other
files get a short non-empty text that names the task, so verification's existence and compile
checks pass and two batches writing the same file really conflict on merge.

Test knob (documented in docs/architecture.md): when ``BUILDRUNNER_SIM_FAIL_FILE`` names a file,
every task id listed in it (plan id or global id, one per line) makes its batch fail with a clear
reason. Tests edit the file between attempts to fail first and succeed on ``task.retry``.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from buildrunnerd.errors import ConfigError
from buildrunnerd.executor._protocol import (
    ApiCall,
    BatchJob,
    ExecutionContext,
    ExecutionOutcome,
)
from buildrunnerd.plan._model import Task
from buildrunnerd.sandbox import WorktreePathError, write_bytes_in

__all__ = ["SimulatedExecutor", "SIM_MS_PER_MINUTE_ENV", "SIM_FAIL_FILE_ENV"]

SIM_MS_PER_MINUTE_ENV = "BUILDRUNNER_SIM_MS_PER_MINUTE"
SIM_FAIL_FILE_ENV = "BUILDRUNNER_SIM_FAIL_FILE"


def _python_body(task: Task, path: str) -> str:
    # Valid, importable Python that names its origin; the task id keeps two batches' versions
    # of the same file different (so a real merge conflict can happen, as with a model).
    title = task.title.replace('"""', "'''").replace("\\", "/")
    return (
        f'"""{path}: {title} (task {task.id}; written by the BuildRunner simulated backend)."""\n'
        "\n"
        f"TASK_ID = {task.id!r}\n"
        "\n"
        "\n"
        "def describe() -> str:\n"
        '    """Say what wrote this file."""\n'
        f"    return {('simulated: ' + task.title)!r}\n"
    )


def _text_body(task: Task, path: str) -> str:
    origin = f"(task {task.id}; written by the BuildRunner simulated backend)"
    return f"{path}\n\n{task.title}\n\n{origin}\n"


def _failing_task_ids(env: dict[str, str] | os._Environ[str]) -> set[str]:
    fail_file = env.get(SIM_FAIL_FILE_ENV)
    if not fail_file:
        return set()
    try:
        text = Path(fail_file).read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}


def _write_files(root: Path, tasks: list[Task]) -> int:
    """Write every file the tasks name, required or suggested (a diligent agent creates the
    files it is pointed to); return how many characters were written.

    Through :mod:`buildrunnerd.sandbox` like the editor tool: an earlier batch's symlink in
    the worktree is never written through, ``..`` and ``.git`` are refused
    (:class:`~buildrunnerd.sandbox.WorktreePathError`)."""
    written = 0
    root.mkdir(parents=True, exist_ok=True)  # the daemon's own path, not the model's
    for task in tasks:
        for rel in dict.fromkeys([*task.files, *task.suggested_files]):
            body = _python_body(task, rel) if rel.endswith(".py") else _text_body(task, rel)
            data = body.encode("utf-8")
            write_bytes_in(root, rel, data, max_bytes=len(data))
            written += len(body)
    return written


class SimulatedExecutor:
    """Writes the files a batch's tasks name, after a latency proportional to their estimate.

    ``ms_per_minute``: milliseconds per estimated task minute (``BUILDRUNNER_SIM_MS_PER_MINUTE``,
    default 0: no latency).
    """

    name = "simulated"

    def __init__(self, ms_per_minute: float = 0.0) -> None:
        if ms_per_minute < 0:
            raise ValueError(f"ms_per_minute must be >= 0, got {ms_per_minute}")
        self.ms_per_minute = ms_per_minute

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] | None = None) -> SimulatedExecutor:
        """Build one from ``BUILDRUNNER_SIM_MS_PER_MINUTE`` (a number; default 0)."""
        env = os.environ if env is None else env
        raw = env.get(SIM_MS_PER_MINUTE_ENV, "").strip()
        try:
            value = float(raw) if raw else 0.0
        except ValueError:
            value = -1.0
        if value < 0:
            raise ConfigError(
                f"${SIM_MS_PER_MINUTE_ENV}={raw!r} is not a number >= 0; set it to "
                "milliseconds per estimated task minute (e.g. 5) or unset it",
                data={"key": SIM_MS_PER_MINUTE_ENV, "file": None},
            )
        return cls(value)

    async def run_batch(self, job: BatchJob, ctx: ExecutionContext) -> ExecutionOutcome:
        """Sleep for the batch's simulated duration, then write every file its tasks name."""
        minutes = sum(task.estimate_minutes for task in job.tasks)
        delay_s = self.ms_per_minute * minutes / 1000.0
        if job.fix_round:
            delay_s /= 2  # a fix-up is smaller than the first try
        if delay_s > 0:
            await anyio.sleep(delay_s)
        failing = _failing_task_ids(os.environ)
        for task in job.tasks:
            if task.id in failing or f"{job.run_id}:{task.id}" in failing:
                return ExecutionOutcome(
                    status="failed",
                    reason=f"simulated failure of task {task.id} (listed in ${SIM_FAIL_FILE_ENV})",
                    model="simulated",
                )
        # One thread hop for every file of the batch: zero-latency runs measure the daemon.
        try:
            written_chars = await anyio.to_thread.run_sync(
                _write_files, Path(job.worktree), job.tasks)
        except WorktreePathError as exc:
            return ExecutionOutcome(status="failed", reason=f"(simulated) {exc.message}",
                                    model="simulated")
        # Record the stand-in "call" like a real one (model "simulated", no cost), so the
        # accounting path -- api.call events, `brctl costs` rows -- is the same as with Claude.
        await ctx.record_api_call(
            ApiCall(
                model="simulated",
                input_tokens=job.prompt.tokens,
                output_tokens=max(1, written_chars // 4),
                cost_usd=0.0,
                latency_ms=int(delay_s * 1000),
                stop_reason="end_turn",
                backend="simulated",
            )
        )
        titles = "; ".join(f"{t.id} {t.title}" for t in job.tasks)
        return ExecutionOutcome(
            status="completed",
            model="simulated",
            summary=f"(simulated) {titles}",
        )

    async def aclose(self) -> None:
        """Nothing to release."""
