"""API calls and costs: exact sums, the three groupings, roll-ups, and pruning."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from buildrunnerd.errors import NotFoundError
from buildrunnerd.executor import ApiCall
from buildrunnerd.store import Store

from .conftest import Clock, Recorder, make_plan, submit

MODELS = ("claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5")


def _call(model: str, rng: random.Random) -> ApiCall:
    input_tokens = rng.randint(1, 200_000)
    output_tokens = rng.randint(1, 16_000)
    cache_write = rng.randint(0, 5_000)
    cache_read = rng.randint(0, 100_000)
    cost = (input_tokens * 3 + output_tokens * 15 + cache_write * 3.75 + cache_read * 0.3) / 1e6
    return ApiCall(
        model=model, input_tokens=input_tokens, output_tokens=output_tokens,
        cache_creation_input_tokens=cache_write, cache_read_input_tokens=cache_read,
        cost_usd=cost, latency_ms=rng.randint(10, 900), request_id=f"req_{rng.randrange(10**9)}",
        stop_reason="end_turn",
    )


async def test_record_api_call_writes_row_event_and_costs(
    store: Store, recorder: Recorder
) -> None:
    await submit(store, "r-1", make_plan(n_batches=2, tasks_per_batch=3))
    recorder.events.clear()
    call = ApiCall(model="claude-sonnet-5-5", input_tokens=1000, output_tokens=200,
                   cache_creation_input_tokens=50, cache_read_input_tokens=700,
                   cost_usd=0.01, request_id="req_1", stop_reason="tool_use")
    event = await store.record_api_call("r-1", "r-1:B001", call)
    assert (event.type, event.run_id, event.batch_id) == ("api.call", "r-1", "r-1:B001")
    assert event.data["model"] == "claude-sonnet-5-5"
    assert event.data["tokens"] == {
        "input_tokens": 1000, "output_tokens": 200,
        "cache_creation_input_tokens": 50, "cache_read_input_tokens": 700,
    }
    assert event.data["cost_usd"] == 0.01 and event.data["request_id"] == "req_1"
    assert recorder.events == [event]

    assert await store.run_cost_usd("r-1") == pytest.approx(0.01)
    run = await store.get_run("r-1")
    assert (run.calls, run.input_tokens, run.cache_read_input_tokens) == (1, 1000, 700)
    tasks = await store.list_tasks("r-1")
    # 0.01 USD split over three tasks, to the nano-dollar, adding up exactly
    shares = [round(t.cost_usd * 1e9) for t in tasks[:3]]
    assert shares == [3_333_334, 3_333_333, 3_333_333] and sum(shares) == 10_000_000
    assert all(t.cost_usd == 0 for t in tasks[3:])

    # a call outside a batch (the planner) costs the run only
    await store.record_api_call("r-1", None, ApiCall("claude-haiku-5-5", 10, 5, cost_usd=0.5,
                                                     purpose="planner"))
    assert await store.run_cost_usd("r-1") == pytest.approx(0.51)
    assert sum(t.cost_usd for t in await store.list_tasks("r-1")) == pytest.approx(0.01)

    with pytest.raises(NotFoundError):
        await store.record_api_call("r-404", None, call)
    with pytest.raises(NotFoundError):
        await store.run_cost_usd("r-404")


async def test_cost_summary_totals_are_exact_sums(store: Store, clock: Clock) -> None:
    rng = random.Random(7)
    await submit(store, "r-1")
    await submit(store, "r-2")
    calls: list[tuple[str, str, ApiCall]] = []
    for i in range(150):
        run_id = ("r-1", "r-2")[i % 2]
        call = _call(MODELS[rng.randrange(3)], rng)
        await store.record_api_call(run_id, f"{run_id}:B00{1 + i % 3}", call)
        calls.append((run_id, clock.now.strftime("%Y-%m-%d"), call))
        clock.advance(minutes=37)  # crosses hours and days

    def expected(selected: list[tuple[str, str, ApiCall]]) -> tuple[int, int, int, int, int]:
        return (len(selected), sum(c.input_tokens for _, _, c in selected),
                sum(c.output_tokens for _, _, c in selected),
                sum(c.cache_read_input_tokens for _, _, c in selected),
                sum(c.cache_creation_input_tokens for _, _, c in selected))

    for by in ("model", "day", "run"):
        summary = await store.cost_summary(by=by)
        assert summary.by == by and summary.run_id is None
        assert (summary.calls, summary.input_tokens, summary.output_tokens,
                summary.cache_read_input_tokens, summary.cache_creation_input_tokens) \
            == expected(calls)
        assert summary.total_usd == pytest.approx(sum(c.cost_usd for _, _, c in calls))
        def key_of(run_id: str, day: str, call: ApiCall, by: str = by) -> str:
            return {"model": call.model, "day": day, "run": run_id}[by]

        keys = sorted({key_of(*entry) for entry in calls})
        assert [row.key for row in summary.rows] == keys
        for row in summary.rows:
            mine = [entry for entry in calls if key_of(*entry) == row.key]
            assert (row.calls, row.input_tokens, row.output_tokens,
                    row.cache_read_input_tokens, row.cache_creation_input_tokens) \
                == expected(mine)
            assert row.cost_usd == pytest.approx(sum(c.cost_usd for _, _, c in mine))

    one = await store.cost_summary(run_id="r-2", by="model")
    mine = [entry for entry in calls if entry[0] == "r-2"]
    assert (one.calls, one.input_tokens, one.output_tokens, one.cache_read_input_tokens,
            one.cache_creation_input_tokens) == expected(mine)
    assert one.total_usd == pytest.approx(await store.run_cost_usd("r-2"))
    by_day = await store.cost_summary(run_id="r-2", by="day")
    assert by_day.input_tokens == one.input_tokens and len(by_day.rows) > 1
    only = await store.cost_summary(run_id="r-1", by="run")
    assert [r.key for r in only.rows] == ["r-1"]
    # the same stored nano-dollars, whatever the grouping
    totals = {(await store.cost_summary(by=by)).total_usd for by in ("model", "day", "run")}
    assert len(totals) == 1

    with pytest.raises(ValueError, match="use one of model, day, run"):
        await store.cost_summary(by="week")
    with pytest.raises(NotFoundError):
        await store.cost_summary(run_id="r-404")


async def test_empty_cost_summary(store: Store) -> None:
    summary = await store.cost_summary()
    assert (summary.total_usd, summary.calls, summary.rows) == (0.0, 0, [])


async def test_prune_keeps_running_runs_and_roll_ups(store: Store, clock: Clock) -> None:
    await submit(store, "r-old")
    await submit(store, "r-live")
    for run_id in ("r-old", "r-live"):
        await store.record_api_call(run_id, None, ApiCall("claude-opus-5-5", 100, 10,
                                                          cost_usd=0.25))
    await store.set_run_state("r-old", "succeeded", event_type="run.succeeded")
    await store.set_run_state("r-live", "running", event_type="run.started")
    old_attempt = await store.start_attempt("r-old:B001", worktree=None, model=None)
    await store.save_checkpoint(old_attempt.id, b"conversation")
    await store.finish_attempt(old_attempt.id, outcome="succeeded")
    live_attempt = await store.start_attempt("r-live:B001", worktree=None, model=None)
    await store.save_checkpoint(live_attempt.id, b"conversation")
    before = await store.cost_summary(by="day")
    clock.advance(days=30)
    recent = await store.append_event("r-old", "note")  # newer than the cutoff: kept

    counts = await store.prune(older_than=clock.now - timedelta(days=1))
    assert counts == {"events": 3, "api_calls": 1, "checkpoints": 1}
    assert await store.load_checkpoint(old_attempt.id) is None
    assert await store.load_checkpoint(live_attempt.id) == b"conversation"
    assert await store.list_events(run_id="r-old") == [recent]
    assert len(await store.list_events(run_id="r-live")) == 3  # a live run keeps everything
    # roll-ups and run totals survive: the summaries do not change
    assert await store.cost_summary(by="day") == before
    assert (await store.cost_summary(by="model")).total_usd == pytest.approx(0.5)
    assert (await store.cost_summary(by="run")).calls == 2
    assert await store.run_cost_usd("r-old") == pytest.approx(0.25)
    # the pruned run's own breakdown by model is gone with its rows; its totals are not
    assert (await store.cost_summary(run_id="r-old", by="model")).calls == 0
    assert (await store.cost_summary(run_id="r-old", by="run")).calls == 1

    # separate cut-offs for events and API calls (retention.events_days / api_calls_days)
    await store.record_api_call("r-old", None, ApiCall("claude-opus-5-5", 1, 1))
    clock.advance(days=10)
    counts = await store.prune(older_than=clock.now - timedelta(days=20),
                               api_calls_older_than=clock.now)
    assert counts == {"events": 0, "api_calls": 1, "checkpoints": 0}
    await store.vacuum()
    assert (await store.cost_summary(by="run")).calls == 3
