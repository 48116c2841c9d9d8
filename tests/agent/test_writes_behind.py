"""A turn's record is stored while its tools run, in order, one at a time, before the next
call is sent, and finished when the batch is cancelled; a failed write still fails the batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from buildrunnerd.agent import AnthropicExecutor
from buildrunnerd.agent._conversation import ConversationState
from buildrunnerd.executor import ApiCall, ExecutionOutcome, TurnEvent
from tests.agent.support import Recorder, make_config, make_job
from tests.fakeapi import API_KEY, FakeAnthropic, FakeRequest, Reply, text, tool_use

EDIT = "str_replace_based_edit_tool"
WAIT_S = 10.0  # how long a slow store waits for what must happen meanwhile (a bound only)


class SlowStore(Recorder):
    """A store whose turn records are slow, and which checks that no two overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = False
        self.overlapped = False
        self.records: list[tuple[bool, list[str], bool]] = []  # (call, event types, checkpoint)
        self.slow: dict[int, anyio.Event] = {}  # record index -> released when set

    async def emit(self, type: str, data: dict[str, object], *, task_id: str | None = None
                   ) -> None:
        self.overlapped |= self.writing
        await super().emit(type, data, task_id=task_id)

    async def record_turn(self, *, call: ApiCall | None = None,
                          events: Sequence[TurnEvent] = (),
                          checkpoint: bytes | None = None) -> None:
        self.overlapped |= self.writing
        self.writing = True
        try:
            index = len(self.records)
            self.records.append((call is not None, [e.type for e in events],
                                 checkpoint is not None))
            await self.during(index)
            # As the daemon's: the call, the events, the checkpoint (not through emit, which
            # is another write).
            if call is not None:
                self.calls.append(call)
            self.events += [(e.type, e.data) for e in events]
            if checkpoint is not None:
                self.checkpoints.append(checkpoint)
        finally:
            self.writing = False

    async def during(self, index: int) -> None:
        """What the store waits for while it writes record ``index``."""


def script(worktree: Path, steps: list[Reply]) -> tuple[FakeAnthropic, AnthropicExecutor]:
    fake = FakeAnthropic(lambda req: steps[min(req.assistant_turns(), len(steps) - 1)])
    fake.start()
    return fake, AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake.base_url)


async def run_scripted(worktree: Path, steps: list[Reply], store: SlowStore) -> ExecutionOutcome:
    """One batch of ``steps`` against a fresh fake, into ``store``; the executor closed after."""
    fake, ex = script(worktree, steps)
    try:
        return await ex.run_batch(make_job(worktree), store)
    finally:
        await ex.aclose()
        fake.stop()


async def test_the_turns_record_is_stored_while_its_tool_runs(worktree: Path) -> None:
    steps = [Reply([tool_use(EDIT, {"command": "create", "path": "app.py",
                                    "file_text": "X = 1\n"})], "tool_use"),
             Reply([text("done")], "end_turn")]
    made = worktree / "app.py"
    seen: list[bool] = []

    class Store(SlowStore):
        async def during(self, index: int) -> None:
            if index == 0:  # the first turn's record: its tool runs meanwhile
                # The editor writes in a worker thread and tells nobody: look (bounded).
                with anyio.move_on_after(WAIT_S):
                    while not made.exists():  # noqa: ASYNC110 - no event to wait on
                        await anyio.sleep(0.01)
                seen.append(made.exists())

    store = Store()
    outcome = await run_scripted(worktree, steps, store)
    assert outcome.status == "completed", outcome.reason
    assert seen == [True]  # (the old loop stored the turn first: the file came after)
    assert not store.overlapped
    assert store.records == [(True, ["agent.turn", "tool.call"], True),
                             (False, ["tool.result"], True),
                             (True, ["agent.turn"], True)]


async def test_the_next_call_waits_for_the_checkpoint_after_the_tools(
        worktree: Path) -> None:
    # The checkpoint is written while the next request is built and counted, but the request
    # is sent only once it is stored: a crash after the send finds the conversation up to it.
    asked = threading.Event()  # set by the fake when the second call arrives

    def respond(req: FakeRequest) -> Reply:
        if req.assistant_turns() == 0:
            return Reply([tool_use("bash", {"command": "echo hi"})], "tool_use")
        asked.set()
        return Reply([text("done")], "end_turn")

    seen: list[bool] = []

    class Store(SlowStore):
        async def during(self, index: int) -> None:
            if index == 1:  # the checkpoint with the tool's result
                seen.append(await anyio.to_thread.run_sync(asked.wait, 0.5))

    with FakeAnthropic(respond) as fake:
        ex = AnthropicExecutor(make_config(), api_key=API_KEY, base_url=fake.base_url)
        store = Store()
        try:
            outcome = await ex.run_batch(make_job(worktree), store)
        finally:
            await ex.aclose()
    assert outcome.status == "completed", outcome.reason
    assert seen == [False]
    assert not store.overlapped
    # Each turn's billed call was stored before the next budget check and call: two calls,
    # both recorded, the tool's result between them in the order it came.
    assert len(store.calls) == 2 == len(fake.billed)
    assert store.types() == ["agent.turn", "tool.call", "tool.result", "agent.text",
                             "agent.turn"]
    last = ConversationState.decode(store.checkpoints[-1])
    assert last.done and last.turns == 2


async def test_two_tools_of_one_turn_keep_their_events_in_order(worktree: Path) -> None:
    steps = [Reply([tool_use(EDIT, {"command": "create", "path": "a.py", "file_text": "A\n"}),
                    tool_use(EDIT, {"command": "create", "path": "b.py", "file_text": "B\n"})],
                   "tool_use"),
             Reply([text("done")], "end_turn")]

    class Store(SlowStore):
        async def during(self, index: int) -> None:
            await anyio.sleep(0.05)  # slow enough that the second tool's events come meanwhile

    store = Store()
    outcome = await run_scripted(worktree, steps, store)
    assert outcome.status == "completed", outcome.reason
    assert not store.overlapped
    assert store.types() == ["agent.turn", "tool.call", "tool.result", "tool.call",
                             "tool.result", "agent.text", "agent.turn"]
    assert (worktree / "a.py").read_text() == "A\n" and (worktree / "b.py").exists()


async def test_a_cancelled_batch_finishes_the_write_in_flight(worktree: Path) -> None:
    steps = [Reply([tool_use("bash", {"command": "sleep 30"})], "tool_use"),
             Reply([text("done")], "end_turn")]
    started = anyio.Event()
    release = anyio.Event()

    class Store(SlowStore):
        async def during(self, index: int) -> None:
            if index == 0:
                started.set()
                await release.wait()

    fake, ex = script(worktree, steps)
    store = Store()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ex.run_batch, make_job(worktree), store)
            await started.wait()  # the first turn is being stored, its tool is running
            tg.cancel_scope.cancel()
            release.set()
    finally:
        await ex.aclose()
        fake.stop()
    # The turn's record was finished: its billed call and its checkpoint are stored.
    assert len(store.calls) == 1 and len(store.checkpoints) == 1
    assert ConversationState.decode(store.checkpoints[0]).pending_tools


async def test_a_failed_turn_record_fails_the_batch(worktree: Path) -> None:
    steps = [Reply([tool_use("bash", {"command": "echo hi"})], "tool_use"),
             Reply([text("done")], "end_turn")]

    class Store(SlowStore):
        async def during(self, index: int) -> None:
            raise OSError(28, "No space left on device")

    fake, ex = script(worktree, steps)
    try:
        with pytest.raises(OSError, match="No space left"):
            await ex.run_batch(make_job(worktree), Store())
    finally:
        await ex.aclose()
        fake.stop()
    # Nothing after the failed write was sent: one call only.
    assert len(fake.requests) == 1
