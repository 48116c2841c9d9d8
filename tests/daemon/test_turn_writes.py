"""A turn's writes through the daemon's execution context: one transaction per turn, in the
order subscribers expect, and a crash between turns keeps every finished turn exactly once.

Real parts throughout: the anthropic backend over the real SDK and HTTP to the fake Messages
API, the daemon's :class:`BatchContext`, a real SQLite store; the crash is a SIGKILL of a child
process running the batch.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from buildrunnerd import protocol
from buildrunnerd.agent._conversation import ConversationState
from buildrunnerd.store import Store
from tests.agent.support import make_worktree
from tests.daemon.turn_support import BATCH_ID, RUN_ID, create_run, run_batch
from tests.fakeapi import ErrorReply, FakeAnthropic, FakeRequest, Reply, text, tool_use
from tests.fakeapi.fixtures import fake_api  # noqa: F401 (a fixture)

EDIT = "str_replace_based_edit_tool"
REPO_ROOT = Path(__file__).resolve().parents[2]

CREATE = Reply([text("Creating app.py."),
                tool_use(EDIT, {"command": "create", "path": "app.py",
                                "file_text": "print('hi')\n"})], "tool_use")
RUN = Reply([tool_use("bash", {"command": "cat app.py"})], "tool_use")
DONE = Reply([text("Built app.py.")], "end_turn")


class Seen:
    """The store's ``on_event``: what a subscriber of the bus is handed, in order."""

    def __init__(self) -> None:
        self.events: list[protocol.Event] = []

    def __call__(self, event: protocol.Event) -> None:
        self.events.append(event)


def without_text(events: list[protocol.Event]) -> list[str]:
    # How a streamed text is cut into agent.text events is the stream's business.
    return [e.type for e in events if e.type != "agent.text"]


async def test_each_turn_is_one_transaction_in_subscriber_order(
        fake_api: FakeAnthropic, tmp_path: Path) -> None:  # noqa: F811
    fake_api.set_responder([CREATE, RUN, DONE])
    worktree = make_worktree(tmp_path)
    seen = Seen()
    store = await Store.open(tmp_path / "state.db", on_event=seen)
    try:
        await create_run(store)
        attempt = await store.start_attempt(BATCH_ID, worktree=str(worktree), model=None)
        before, first_seen = store.write_transactions, len(seen.events)
        outcome = await run_batch(store, fake_api.base_url, worktree, attempt.id)
        writes = store.write_transactions - before
        stored = await store.list_events(run_id=RUN_ID, since=seen.events[0].id)
        checkpoint = await store.load_checkpoint(attempt.id)
        run = await store.get_run(RUN_ID)
    finally:
        await store.close()

    assert outcome.status == "completed", outcome.reason
    assert (worktree / "app.py").read_text() == "print('hi')\n"
    batch_events = seen.events[first_seen:]
    assert without_text(batch_events) == [
        "api.call", "agent.turn", "tool.call", "tool.result",
        "api.call", "agent.turn", "tool.call", "tool.result",
        "api.call", "agent.turn",
    ]
    # Subscribers get the events in id order, the very rows stored.
    assert [e.id for e in batch_events] == sorted(e.id for e in batch_events)
    assert [e.id for e in batch_events] == [e.id for e in stored]
    # Three turns, each ONE commit (call + its events + checkpoint), plus one commit per tool
    # run (its result + checkpoint). A streamed text waits for its turn's commit (stored
    # first in it, before the call it came with), so it costs no commit of its own. One
    # write a part would be 3 x 3 + 2 x 3 = 15 commits, and one more per text.
    assert writes == 5
    texts = [i for i, e in enumerate(batch_events) if e.type == "agent.text"]
    assert [batch_events[i + 1].type for i in texts] == ["api.call", "api.call"]
    assert [e.data["text"] for e in batch_events if e.type == "agent.text"] == [
        "Creating app.py.", "Built app.py."]
    assert checkpoint is not None
    state = ConversationState.decode(checkpoint)
    assert state.turns == 3 and state.done
    # The calls' costs reached the run with their rows: nothing of a turn was left out.
    call_costs = [e.data["cost_usd"] for e in batch_events if e.type == "api.call"]
    assert run.calls == 3 and run.cost_usd == pytest.approx(sum(call_costs))


async def test_a_crash_between_turns_keeps_each_finished_turn_once(
        fake_api: FakeAnthropic, tmp_path: Path) -> None:  # noqa: F811
    worktree = make_worktree(tmp_path)
    db = tmp_path / "state.db"
    store = await Store.open(db)
    try:
        await create_run(store)
        attempt = await store.start_attempt(BATCH_ID, worktree=str(worktree), model=None)
    finally:
        await store.close()

    child: list[int] = []

    def respond(req: FakeRequest) -> Reply | ErrorReply:
        if req.index == 0:
            return CREATE
        if req.index == 1:
            # The second call is asked for only after the first turn and its tool were
            # written: kill the process right there, between two turns.
            os.kill(child[0], signal.SIGKILL)
            return ErrorReply(500, "api_error", "the client is gone")
        return DONE

    fake_api.set_responder(respond)
    with anyio.fail_after(60):
        process = await anyio.open_process(
            [sys.executable, "-m", "tests.daemon.turn_support", str(db), fake_api.base_url,
             str(worktree), str(attempt.id)], cwd=REPO_ROOT)
        child.append(process.pid)
        returncode = await process.wait()
    assert returncode == -signal.SIGKILL, "the child must die of the kill, not finish"

    store = await Store.open(db)
    try:
        # What a restart finds: the first turn and its tool, each event once, and the
        # conversation up to them.
        kept = await store.list_events(run_id=RUN_ID)
        assert without_text(kept) == [
            "run.submitted", "api.call", "agent.turn", "tool.call", "tool.result"]
        # The first turn's streamed text came with its turn's commit, stored once and before
        # the call it belongs to.
        assert [(e.type, e.data.get("text")) for e in kept[1:3]] == [
            ("agent.text", "Creating app.py."), ("api.call", None)]
        assert [a.id for a in await store.unfinished_attempts()] == [attempt.id]
        saved = await store.load_checkpoint(attempt.id)
        assert saved is not None
        state = ConversationState.decode(saved)
        assert state.turns == 1 and not state.pending_tools
        assert state.messages[-1]["content"][0]["type"] == "tool_result"
        assert (await store.get_run(RUN_ID)).calls == 1

        # The daemon's resume: the attempt is interrupted, the next one continues it.
        await store.finish_attempt(attempt.id, outcome="interrupted", reason="killed")
        again = await store.start_attempt(BATCH_ID, worktree=str(worktree), model=None)
        outcome = await run_batch(store, fake_api.base_url, worktree, again.id, attempt=2,
                                  resume_state=await store.load_checkpoint(attempt.id))
        after = await store.list_events(run_id=RUN_ID, since=kept[-1].id)
        run = await store.get_run(RUN_ID)
    finally:
        await store.close()

    assert outcome.status == "completed", outcome.reason
    # The resumed call carries the first turn (not a fresh start that pays for it again) and
    # nothing of it is stored twice.
    assert fake_api.requests[2].assistant_turns() == 1
    assert without_text(after) == ["api.call", "agent.turn"]
    assert [e.data["text"] for e in after if e.type == "agent.text"] == ["Built app.py."]
    assert run.calls == 2
