"""Writes merged for the daemon's hot path, each one transaction, all or nothing:
``record_turn`` (a turn's call, events and checkpoint, after the events that waited for it),
``dispatch`` (a batch running, its attempt and its tasks' prompt), ``transition(attempt=)`` (a
batch's result with the end of its attempt), ``set_tasks_details(events=)`` (a report and its
verdict)."""

from __future__ import annotations

import pytest

from buildrunnerd.errors import NotFoundError
from buildrunnerd.executor import ApiCall
from buildrunnerd.protocol import VerificationReport
from buildrunnerd.store import AttemptEnd, NewEvent, Store, TaskChange

from .conftest import Recorder, submit

RUN = "r-00000001"
BATCH = f"{RUN}:B001"
CALL = ApiCall(model="claude-sonnet-5-5", input_tokens=100, output_tokens=20,
               cost_usd=0.0123, request_id="req_1", stop_reason="tool_use")


async def test_a_turn_is_one_commit_with_its_events_in_order(
        store: Store, recorder: Recorder) -> None:
    await submit(store)
    attempt = await store.start_attempt(BATCH, worktree="/wt", model=None)
    before, seen = store.write_transactions, len(recorder.events)

    stored = await store.record_turn(
        attempt.id, RUN, BATCH, call=CALL,
        events=[NewEvent(RUN, "agent.turn", {"turn": 1}, batch_id=BATCH),
                NewEvent(RUN, "tool.call", {"tool": "bash"}, batch_id=BATCH,
                         task_id=f"{RUN}:T001")],
        checkpoint=b"conversation after turn 1",
    )

    assert store.write_transactions == before + 1
    assert [e.type for e in stored] == ["api.call", "agent.turn", "tool.call"]
    assert recorder.events[seen:] == stored  # published after the commit, in id order
    assert stored[2].task_id == f"{RUN}:T001" and stored[0].batch_id == BATCH
    assert await store.load_checkpoint(attempt.id) == b"conversation after turn 1"
    run = await store.get_run(RUN)
    assert run.calls == 1 and run.cost_usd == pytest.approx(0.0123)
    tasks = await store.list_tasks(RUN)
    assert sum(t.cost_usd for t in tasks if t.batch_id == BATCH) == pytest.approx(0.0123)


async def test_a_failing_part_leaves_nothing_of_the_turn(
        store: Store, recorder: Recorder) -> None:
    await submit(store)
    attempt = await store.start_attempt(BATCH, worktree="/wt", model=None)
    await store.save_checkpoint(attempt.id, b"turn 0")
    seen = len(recorder.events)
    events_before = await store.list_events(run_id=RUN)

    # The checkpoint of an attempt that does not exist fails last, after the call and the
    # events were written inside the transaction: all of it rolls back.
    with pytest.raises(NotFoundError, match="attempt 999"):
        await store.record_turn(
            999, RUN, BATCH, call=CALL,
            events=[NewEvent(RUN, "agent.turn", {"turn": 1}, batch_id=BATCH)],
            checkpoint=b"turn 1")

    assert await store.list_events(run_id=RUN) == events_before
    assert recorder.events[seen:] == []  # nothing published for a rolled-back turn
    run = await store.get_run(RUN)
    assert run.calls == 0 and run.cost_usd == 0
    assert (await store.cost_summary(run_id=RUN)).calls == 0
    assert await store.load_checkpoint(attempt.id) == b"turn 0"


async def test_a_turn_without_a_call_or_checkpoint_stores_just_its_events(
        store: Store) -> None:
    await submit(store)
    attempt = await store.start_attempt(BATCH, worktree="/wt", model=None)
    stored = await store.record_turn(
        attempt.id, RUN, BATCH, events=[NewEvent(RUN, "tool.result", {"ok": True},
                                                 batch_id=BATCH)])
    assert [e.type for e in stored] == ["tool.result"]
    assert await store.load_checkpoint(attempt.id) is None
    assert (await store.get_run(RUN)).calls == 0


async def test_a_result_and_its_attempt_end_are_one_commit(
        store: Store, recorder: Recorder) -> None:
    await submit(store)
    attempt = await store.start_attempt(BATCH, worktree="/wt", model=None)
    before = store.write_transactions
    end = AttemptEnd(attempt.id, "succeeded", verification=VerificationReport(True),
                     commit="abc123")
    stored = await store.transition(
        batch=(BATCH, "succeeded", "batch.succeeded", {"commit": "abc123"}),
        tasks=[TaskChange(f"{RUN}:T001", "succeeded")], attempt=end)
    assert store.write_transactions == before + 1
    assert [e.type for e in stored] == ["batch.succeeded", "task.state_changed"]
    finished = await store.get_attempt(attempt.id)
    assert (finished.outcome, finished.commit, finished.verification) == (
        "succeeded", "abc123", VerificationReport(True))

    # A result that cannot be written leaves the attempt unfinished too.
    other = await store.start_attempt(f"{RUN}:B002", worktree="/wt2", model=None)
    with pytest.raises(NotFoundError):
        await store.transition(
            batch=(f"{RUN}:B999", "succeeded", "batch.succeeded", {}),
            attempt=AttemptEnd(other.id, "succeeded", commit="def456"))
    assert (await store.get_attempt(other.id)).outcome is None


async def test_a_report_and_its_verdict_are_one_commit(store: Store, recorder: Recorder) -> None:
    await submit(store)
    before = store.write_transactions
    stored = await store.set_tasks_details(
        [f"{RUN}:T001", f"{RUN}:T002"], verification=VerificationReport(False),
        events=[NewEvent(RUN, "verify.failed", {"reason": "tests"}, batch_id=BATCH)])
    assert store.write_transactions == before + 1
    assert [e.type for e in stored] == ["verify.failed"] == [
        e.type for e in recorder.events[-1:]]
    assert (await store.get_task(f"{RUN}:T002")).verification == VerificationReport(False)


async def test_events_that_waited_for_the_turn_come_first(
        store: Store, recorder: Recorder) -> None:
    await submit(store)
    attempt = await store.start_attempt(BATCH, worktree="/wt", model=None)
    before = store.write_transactions
    stored = await store.record_turn(
        attempt.id, RUN, BATCH, call=CALL,
        events=[NewEvent(RUN, "agent.turn", {"turn": 1}, batch_id=BATCH)],
        earlier=[NewEvent(RUN, "agent.text", {"text": "Creating app.py."}, batch_id=BATCH),
                 NewEvent(RUN, "file.created", {"path": "app.py"}, batch_id=BATCH)],
        checkpoint=b"turn 1")
    assert store.write_transactions == before + 1
    # As they happened: the text streamed during the call, the call, the turn.
    assert [e.type for e in stored] == ["agent.text", "file.created", "api.call", "agent.turn"]
    assert [e.id for e in stored] == sorted(e.id for e in stored)
    assert recorder.events[-4:] == stored

    # Nothing of them is kept when the turn fails.
    events_before = await store.list_events(run_id=RUN)
    with pytest.raises(NotFoundError):
        await store.record_turn(
            999, RUN, BATCH, call=CALL, checkpoint=b"x",
            earlier=[NewEvent(RUN, "agent.text", {"text": "lost"}, batch_id=BATCH)])
    assert await store.list_events(run_id=RUN) == events_before


async def test_a_dispatch_is_one_commit_with_its_attempt_and_prompt(
        store: Store, recorder: Recorder) -> None:
    await submit(store)
    tasks = [f"{RUN}:T001", f"{RUN}:T002"]
    before, seen = store.write_transactions, len(recorder.events)
    attempt = await store.dispatch(
        batch=(BATCH, "running", "batch.dispatched", {"attempt": 1, "task_ids": tasks}),
        tasks=[TaskChange(t, "running", attempts_inc=1) for t in tasks],
        worktree="/wt/slot-1", prompt="SYSTEM\n\nUSER")
    assert store.write_transactions == before + 1
    assert [e.type for e in recorder.events[seen:]] == [
        "batch.dispatched", "task.state_changed", "task.state_changed"]
    assert (attempt.number, attempt.worktree, attempt.batch_id) == (1, "/wt/slot-1", BATCH)
    assert (await store.get_attempt(attempt.id)).outcome is None
    batch = await store.get_batch(BATCH)
    assert (batch.state, batch.attempts) == ("running", 1)
    for task_id in tasks:
        task = await store.get_task(task_id)
        assert (task.state, task.attempts, task.prompt) == ("running", 1, "SYSTEM\n\nUSER")

    # The second attempt is numbered after the first; a missing task writes nothing at all.
    again = await store.dispatch(batch=(BATCH, "running", "batch.dispatched", {"attempt": 2}),
                                 tasks=[], worktree="/wt/slot-2")
    assert again.number == 2
    events_before = await store.list_events(run_id=RUN)
    with pytest.raises(NotFoundError):
        await store.dispatch(batch=(f"{RUN}:B002", "running", "batch.dispatched", {}),
                             tasks=[TaskChange(f"{RUN}:T404", "running", attempts_inc=1)],
                             worktree="/wt/slot-3", prompt="p")
    assert await store.list_events(run_id=RUN) == events_before
    assert (await store.get_batch(f"{RUN}:B002")).attempts == 0
    assert await store.list_attempts(f"{RUN}:B002") == []
