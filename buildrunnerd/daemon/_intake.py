"""Submit and intake: from ``run.submit`` to a stored run, failing fast and losing nothing.

In this order, each step before anything that costs more:

1. read the spec; decide where the work goes: ``repo``, else the git repository holding the
   spec file, else (only with ``scratch``, or for inline ``spec_text``) a scratch folder under
   the state dir, whose path the reply and the ``run.submitted`` event carry. A spec file
   outside any repository without ``scratch`` is refused: its results would have nowhere to go;
2. parse and plan the spec heuristically (free; every spec error is reported here, at once);
3. validate the repository and create the run branch (before any paid call);
4. store the run and reply. Without a model to ask (the simulated backend) the run is
   ``queued`` with its plan and starts in the background. With the ``anthropic`` backend it is
   ``planning``: in the background, one cheap call checks that the API is reachable and takes
   the key (an unreachable or unauthorised API fails the run within seconds, with the URL and
   the fix), then Claude plans it when the planner is ``claude``/``auto`` (its calls are the
   run's first costs; a fall-back to the heuristic plan says why), then it starts.

``read_spec`` and ``plan_spec`` also serve ``spec.plan``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from buildrunnerd.errors import BuildRunnerError, InvalidStateError, Problem, RepoError, SpecError
from buildrunnerd.executor import ApiCall
from buildrunnerd.plan._model import Plan, PlanWarning
from buildrunnerd.store._records import NewRun, RunOptions, RunRecord

if TYPE_CHECKING:
    from buildrunnerd.config import Config
    from buildrunnerd.daemon._runs import RunManager

__all__ = ["Intake", "SubmitRequest", "git_root", "plan_spec", "read_spec"]

_log = structlog.get_logger("buildrunnerd.intake")


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
        hint = "check the path and its permissions"
        if isinstance(exc, FileNotFoundError) and path.is_relative_to("/tmp"):
            # A daemon under systemd with PrivateTmp=yes has a /tmp of its own.
            hint += ("; if the daemon runs as a systemd service with PrivateTmp=yes, it cannot "
                     "see your /tmp: move the project out of /tmp or drop PrivateTmp "
                     "(docs/operations.md)")
        raise SpecError(
            [Problem(None, f"cannot read the spec: {why}; {hint}")], path=str(path),
        ) from exc
    return text, str(path)


async def plan_spec(text: str, path: str | None, config: Config) -> tuple[Any, Plan]:
    """Parse and plan a spec exactly as ``buildrunnerd plan`` does (in a worker thread: a big
    spec takes a while and the loop must keep serving)."""
    from buildrunnerd.prompt import plan_with_prompts
    from buildrunnerd.spec import parse_spec

    def work() -> tuple[Any, Plan]:
        spec = parse_spec(text, path)
        return spec, plan_with_prompts(spec, config=config.planner)

    return await anyio.to_thread.run_sync(work)


def git_root(start: Path) -> Path | None:
    """The git repository holding ``start`` (the default ``repo`` of a spec file), or None."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


class Intake:
    """``run.submit`` for a :class:`RunManager` (which activates the stored runs)."""

    def __init__(self, runs: RunManager) -> None:
        self._runs = runs

    @property
    def config(self) -> Config:
        return self._runs.config  # re-read: SIGHUP may have replaced it

    async def submit(self, request: SubmitRequest) -> RunRecord:
        """Store a run of the requested spec and return it (``queued`` or ``planning``); it
        starts in the background. Raises SpecError, RepoError before anything is stored."""
        text, spec_path = await read_spec(request.spec_path, request.spec_text)
        repo_dir = await self._repository(request, spec_path)
        spec, plan = await plan_spec(text, spec_path, self.config)
        return await self._store(
            plan, spec_text=text, spec_path=spec_path, request=request, repo_dir=repo_dir,
            spec=spec, spec_test_command=spec.test_command, overview=spec.overview,
        )

    async def submit_plan(
        self, plan: Plan, *, spec_text: str, spec_path: str | None, request: SubmitRequest,
        spec_test_command: str | None = None, overview: str | None = None,
    ) -> RunRecord:
        """Store and start a run of an already built plan (no model planning)."""
        repo_dir = await self._repository(request, spec_path)
        return await self._store(
            plan, spec_text=spec_text, spec_path=spec_path, request=request, repo_dir=repo_dir,
            spec=None, spec_test_command=spec_test_command, overview=overview,
        )

    async def _repository(self, request: SubmitRequest, spec_path: str | None) -> Path | None:
        """Where the run's work goes: a repository, or None for a scratch run."""
        if request.repo:
            repo_dir = Path(request.repo)
            if not repo_dir.is_absolute():
                raise RepoError(
                    f"repo must be an absolute path (the daemon does not share your working "
                    f"directory): {request.repo}",
                    data={"repo": request.repo, "reason": "relative path"},
                )
            return repo_dir
        if spec_path is None or request.scratch:
            return None  # inline text, or asked for: a scratch run
        found = await anyio.to_thread.run_sync(git_root, Path(spec_path).parent)
        if found is None:
            raise RepoError(
                f"{spec_path} is not inside a git repository, so the run's work would have "
                "nowhere to go: pass --repo DIR (a git repository to build in), or --scratch "
                "to keep the results in a folder under the state dir",
                data={"spec_path": spec_path, "reason": "not_in_a_repository"},
            )
        return found

    async def _store(
        self, plan: Plan, *, spec_text: str, spec_path: str | None, request: SubmitRequest,
        repo_dir: Path | None, spec: Any, spec_test_command: str | None,
        overview: str | None,
    ) -> RunRecord:
        runs, config = self._runs, self.config
        run_id = f"r-{secrets.token_hex(4)}"
        branch = base_commit = scratch_dir = None
        if repo_dir is not None:
            from buildrunnerd.workspace import prepare_run_repo

            run_repo = await prepare_run_repo(
                repo_dir, run_id, allow_dirty=request.allow_dirty,
                timeout_s=config.verify.git_timeout_s,
            )
            repo_dir, branch, base_commit = run_repo.repo, run_repo.branch, run_repo.base_commit
        else:
            scratch_dir = str(runs.home / "runs" / run_id / "scratch")
        # A run may ask for fewer workers than the daemon's per-run cap, never more (the
        # cap is what the operator configured; RunInfo.workers shows the effective value).
        cap = config.daemon.max_workers_per_run
        workers = (min(request.workers, cap) if request.workers
                   else min(cap, runs.scheduler.workers))
        options = RunOptions(
            workers=workers,
            budget_usd=(request.budget_usd if request.budget_usd is not None
                        else config.budget_usd),
            test_cmd=request.test_cmd or spec_test_command or config.verify.test_cmd,
            allow_dirty=request.allow_dirty, scratch_dir=scratch_dir,
        )
        new = NewRun(id=run_id, spec_text=spec_text, spec_path=spec_path,
                     repo=str(repo_dir) if repo_dir else None, branch=branch,
                     base_commit=base_commit, options=options, title=plan.spec_title)
        model_planning = spec is not None and runs.executor.name == "anthropic"
        record = await runs.store.create_run(new, None if model_planning else plan)
        _log.info("run.submitted", run_id=run_id, tasks=len(plan.tasks),
                  batches=len(plan.batches), repo=record.repo, scratch_dir=scratch_dir,
                  workers=options.workers, planning=model_planning)
        if model_planning:
            runs.spawn(run_id, lambda: self.plan_in_daemon(run_id, spec, plan, overview))
        else:
            runs.spawn(run_id, lambda: runs.start_queued(run_id, overview=overview))
        return record

    # --- planning in the daemon (state `planning`) ----------------------------------------
    async def plan_in_daemon(
        self, run_id: str, spec: Any, heuristic: Plan, overview: str | None
    ) -> None:
        """A ``planning`` run: check the API, let Claude plan (or say why not), store the plan,
        start the run."""
        from buildrunnerd.agent import check_api

        runs = self._runs
        try:
            if runs.executor.name != "anthropic":  # restarted with another backend
                plan, data = heuristic, {"planner": "heuristic",
                                         "reason": f"the backend is {runs.executor.name}"}
                await runs.store.set_run_plan(run_id, plan, data=data)
                await runs.start_queued(run_id, overview=overview)
                return
            await runs.store.append_event(run_id, "run.planning", {"step": "checking the API"})
            try:
                await check_api(self.config)
            except BuildRunnerError as exc:
                _log.error("run.api_unusable", run_id=run_id, error=str(exc))
                await runs.fail_planning(run_id, str(exc), data=dict(exc.data))
                return
            plan, data = await self._model_plan(run_id, spec, heuristic)
            await runs.store.set_run_plan(run_id, plan, data=data)
        except InvalidStateError:
            return  # cancelled while planning
        except BuildRunnerError as exc:
            _log.error("run.planning_failed", run_id=run_id, error=str(exc))
            await runs.fail_planning(run_id, f"planning failed: {exc}", data=dict(exc.data))
            return
        except Exception as exc:  # a bug: the run must not stay `planning` forever
            _log.exception("run.planning_crashed", run_id=run_id)
            await runs.fail_planning(run_id, f"planning failed: {type(exc).__name__}: {exc}")
            return
        await runs.start_queued(run_id, overview=overview)

    async def _model_plan(
        self, run_id: str, spec: Any, heuristic: Plan
    ) -> tuple[Plan, dict[str, Any]]:
        """The plan to run and the ``run.planned`` data: ``planner`` and, for the heuristic
        plan, ``reason`` (why Claude did not plan it)."""
        config = self.config
        if config.planner.planner == "heuristic":
            return heuristic, {"planner": "heuristic", "reason": "planner.planner = heuristic"}
        if spec.tasks or not spec.features:
            return heuristic, {"planner": "heuristic",
                               "reason": "the spec lists its tasks; they are used as written"}
        await self._runs.store.append_event(run_id, "run.planning",
                                            {"step": "Claude is planning the features",
                                             "features": len(spec.features)})
        plan, notes, fallback = await self._claude_plan(run_id, spec, heuristic)
        for note in notes:
            await self._runs.store.append_event(run_id, "plan.warning",
                                                {"message": note, "planner": "claude"})
        if fallback is not None:
            return plan, {"planner": "heuristic", "reason": f"fell back: {fallback}"}
        return plan, {"planner": "claude"}

    async def _claude_plan(
        self, run_id: str, spec: Any, heuristic: Plan
    ) -> tuple[Plan, list[str], str | None]:
        """Claude decomposes the features (falling back to the heuristic planner itself when
        its answers are unusable), then the plan is built as usual. Its calls are recorded as
        the run's costs as they happen. Returns the plan, the planner's warnings (also in
        ``plan.warnings``) and why it fell back (None: it did not)."""
        from buildrunnerd.agent import ClaudePlanner, choose_planner
        from buildrunnerd.prompt import plan_with_prompts

        store = self._runs.store

        async def record(call: ApiCall) -> None:
            await store.record_api_call(run_id, None, call)

        config = msgspec.structs.replace(
            self.config, planner=msgspec.structs.replace(self.config.planner, planner="claude"))
        planner = choose_planner(config, {}, record_call=record)
        assert isinstance(planner, ClaudePlanner)
        try:
            tasks = await planner.decompose(spec)
        finally:
            await planner.aclose()
        notes = list(planner.warnings)
        fallback = planner.fallback_reason
        try:
            plan: Plan = await anyio.to_thread.run_sync(
                lambda: plan_with_prompts(spec, tasks, config=self.config.planner)
            )
        except BuildRunnerError as exc:
            # Valid tasks that still cannot be planned (a batch prompt over the budget, ...):
            # the run goes ahead on the heuristic plan rather than losing what was paid for.
            fallback = f"Claude's tasks could not be planned ({exc})"
            notes.append(f"Claude planner tasks could not be planned ({exc}); using the "
                         "heuristic planner instead")
            plan = heuristic
        plan.warnings = [*plan.warnings, *(PlanWarning(line=None, message=n) for n in notes)]
        _log.info("planner.claude", run_id=run_id, tasks=len(plan.tasks),
                  warnings=len(notes), fallback=fallback)
        return plan, notes, fallback
