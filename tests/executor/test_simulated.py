"""The simulated backend: the files it writes, its accounting, and its fail file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from buildrunnerd.errors import ConfigError
from buildrunnerd.executor import BatchJob, SimulatedExecutor
from buildrunnerd.plan._model import Task
from buildrunnerd.prompt import BatchPrompt
from tests.executor.support import RecordingContext


async def test_simulated_backend_writes_valid_python_and_text(tmp_path: Path) -> None:
    tasks = [Task(id="T1", feature="f", title='Quotes """ and \\ slashes', domain="backend",
                  complexity="simple", estimate_minutes=10, files=["pkg/a.py", "README.md"])]
    job = BatchJob(run_id="r-1", batch_id="r-1:B1", attempt=1, tasks=tasks,
                   prompt=BatchPrompt(system="s", user="u", tokens=2, context_tokens=0),
                   worktree=str(tmp_path))
    ctx = RecordingContext()
    outcome = await SimulatedExecutor(0.01).run_batch(job, ctx)
    assert outcome.status == "completed" and "simulated" in outcome.summary
    # The stand-in call is accounted like a real one: model "simulated", no cost.
    [call] = ctx.calls
    assert (call.model, call.cost_usd, call.input_tokens) == ("simulated", 0.0, 2)
    assert call.output_tokens > 0
    source = (tmp_path / "pkg" / "a.py").read_text()
    ast.parse(source)
    assert "simulated" in source
    assert (tmp_path / "README.md").read_text().strip()


async def test_simulated_backend_fails_the_tasks_listed_in_the_fail_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_file = tmp_path / "fail.txt"
    fail_file.write_text("T1\n")
    monkeypatch.setenv("BUILDRUNNER_SIM_FAIL_FILE", str(fail_file))
    tasks = [Task(id="T1", feature="f", title="t", domain="backend", complexity="simple",
                  estimate_minutes=1, files=["x.py"])]
    job = BatchJob(run_id="r-1", batch_id="r-1:B1", attempt=1, tasks=tasks,
                   prompt=BatchPrompt(system="s", user="u", tokens=2, context_tokens=0),
                   worktree=str(tmp_path / "wt"))
    ctx = RecordingContext()
    outcome = await SimulatedExecutor().run_batch(job, ctx)
    assert outcome.status == "failed" and "T1" in (outcome.reason or "")
    assert ctx.calls == []  # a failed simulated batch bills nothing
    fail_file.write_text("")
    assert (await SimulatedExecutor().run_batch(job, ctx)).status == "completed"
    for bad in ("fast", "-1"):
        with pytest.raises(ConfigError, match="BUILDRUNNER_SIM_MS_PER_MINUTE"):
            SimulatedExecutor.from_env({"BUILDRUNNER_SIM_MS_PER_MINUTE": bad})
    assert SimulatedExecutor.from_env({"BUILDRUNNER_SIM_MS_PER_MINUTE": "2.5"}).ms_per_minute == 2.5
