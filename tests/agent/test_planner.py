"""The Claude planner: forced submit_tasks tool, validation, chunking, cycles, fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from buildrunnerd.agent import ClaudePlanner
from buildrunnerd.config import Config, PlannerConfig
from buildrunnerd.executor import ApiCall
from buildrunnerd.plan import HeuristicPlanner
from buildrunnerd.spec._model import Feature, Item, Spec
from tests.agent.support import make_config
from tests.fakeapi import API_KEY, FakeAnthropic, FakeRequest, Reply, text, tool_use


class CallLog:
    """Where the daemon would store the planner's billed calls."""

    def __init__(self) -> None:
        self.calls: list[ApiCall] = []

    async def __call__(self, call: ApiCall) -> None:
        self.calls.append(call)


def spec(n: int = 2) -> Spec:
    features = [
        Feature(id=f"f{i}", name=f"Feature {i}", line=10 * i,
                description=f"The {i}th capability. " * 20,
                requirements=[Item(f"It must do thing {i}.{j}", 10 * i + j) for j in range(3)],
                acceptance_criteria=[Item(f"thing {i} works", 10 * i + 5)],
                depends_on=[f"f{i - 1}"] if i > 1 else [])
        for i in range(1, n + 1)
    ]
    return Spec(title="Demo", path=None, format="native", features=features,
                overview="A demo product.")


def task(id: str, feature: str, deps: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": id, "feature": feature, "title": f"Do {id}", "domain": "backend",
            "complexity": "simple", "estimate_minutes": 45, "depends_on": deps or [],
            "files": [f"src/{id}.py"], "acceptance_criteria": [f"{id} works"], **kw}


def submit(*tasks: dict[str, Any]) -> Reply:
    return Reply([tool_use("submit_tasks", {"tasks": list(tasks)})], "tool_use")


@pytest.fixture
async def planner(fake_api: FakeAnthropic) -> AsyncIterator[ClaudePlanner]:
    p = ClaudePlanner(make_config(), api_key=API_KEY, base_url=fake_api.base_url,
                      record_call=CallLog())
    yield p
    await p.aclose()


async def test_valid_answer_becomes_tasks(fake_api: FakeAnthropic,
                                          planner: ClaudePlanner) -> None:
    fake_api.set_responder([submit(task("f1.1", "f1"), task("f1.2", "f1", ["f1.1"]),
                                   task("f2.1", "f2", ["f1.2", "ghost.9"]))])
    tasks = await planner.decompose(spec())
    assert [(t.id, t.feature, t.depends_on) for t in tasks] == [
        ("f1.1", "f1", []), ("f1.2", "f1", ["f1.1"]), ("f2.1", "f2", ["f1.2"])]
    # The spec names no file: the model's paths are suggestions, never required.
    assert tasks[0].files == [] and tasks[0].suggested_files == ["src/f1.1.py"]
    assert tasks[0].line == 10
    assert any("not named by the spec" in w for w in planner.warnings)
    assert any("ghost.9" in w and "dropped" in w for w in planner.warnings)
    body = fake_api.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "submit_tasks"}
    schema = body["tools"][0]["input_schema"]["properties"]["tasks"]["items"]
    assert schema["properties"]["complexity"]["enum"] == [
        "simple", "medium", "complex", "critical"]
    assert not body.get("stream")  # one forced tool call: no streaming needed
    assert isinstance(planner.record_call, CallLog)
    recorded = planner.record_call.calls
    assert len(recorded) == 1 and recorded[0].purpose == "planner"
    assert recorded[0].output_tokens == fake_api.billed[0].usage["output_tokens"]


async def test_invalid_answer_is_re_asked_once(fake_api: FakeAnthropic,
                                               planner: ClaudePlanner) -> None:
    bad = task("f1.1", "f1", complexity="enormous")
    fake_api.set_responder([submit(bad, task("f2.1", "f2")),
                            submit(task("f1.1", "f1"), task("f2.1", "f2"))])
    tasks = await planner.decompose(spec())
    assert [t.id for t in tasks] == ["f1.1", "f2.1"]
    assert len(fake_api.requests) == 2
    retry_text = fake_api.requests[1].messages[0]["content"]
    assert "rejected" in retry_text and "complexity" in retry_text


async def test_cycle_twice_falls_back_to_the_heuristic(fake_api: FakeAnthropic,
                                                       planner: ClaudePlanner) -> None:
    cyclic = submit(task("f1.1", "f1", ["f2.1"]), task("f2.1", "f2", ["f1.1"]))
    fake_api.set_responder([cyclic, cyclic])
    s = spec()
    tasks = await planner.decompose(s)
    assert len(fake_api.requests) == 2
    assert "f1.1 -> f2.1 -> f1.1" in fake_api.requests[1].messages[0]["content"] or \
        "f2.1 -> f1.1 -> f2.1" in fake_api.requests[1].messages[0]["content"]
    expected = await HeuristicPlanner().decompose(s)
    assert [t.id for t in tasks] == [t.id for t in expected]
    assert any("heuristic" in w for w in planner.warnings)


async def test_cycle_once_then_fixed(fake_api: FakeAnthropic, planner: ClaudePlanner) -> None:
    fake_api.set_responder([submit(task("f1.1", "f1", ["f2.1"]), task("f2.1", "f2", ["f1.1"])),
                            submit(task("f1.1", "f1"), task("f2.1", "f2", ["f1.1"]))])
    tasks = await planner.decompose(spec())
    assert [(t.id, t.depends_on) for t in tasks] == [("f1.1", []), ("f2.1", ["f1.1"])]


async def test_no_tool_call_then_api_failure_falls_back(fake_api: FakeAnthropic) -> None:
    from tests.fakeapi import ErrorReply
    fake_api.set_responder([Reply([text("I'd rather chat")], "end_turn"),
                            ErrorReply(400, "invalid_request_error", "bad")])
    p = ClaudePlanner(make_config(), api_key=API_KEY, base_url=fake_api.base_url)
    tasks = await p.decompose(spec())
    await p.aclose()
    assert tasks and any("heuristic" in w for w in p.warnings)


async def test_large_spec_is_chunked_by_feature(fake_api: FakeAnthropic) -> None:
    def respond(req: FakeRequest) -> Reply:
        content = req.messages[0]["content"]
        ids = [f"f{i}" for i in range(1, 7) if f"(id: f{i})" in content]
        return submit(*[task(f"{fid}.1", fid) for fid in ids])

    fake_api.set_responder(respond)
    config = Config(agent=make_config().agent, planner=PlannerConfig(chunk_tokens=300))
    p = ClaudePlanner(config, api_key=API_KEY, base_url=fake_api.base_url)
    tasks = await p.decompose(spec(6))
    await p.aclose()
    assert [t.id for t in tasks] == [f"f{i}.1" for i in range(1, 7)]
    assert len(fake_api.requests) > 1  # several chunks
    for req in fake_api.requests:  # each lists every feature id for cross-chunk deps
        assert all(f"- f{i}: Feature {i}" in req.messages[0]["content"] for i in range(1, 7))


async def test_choose_planner_follows_the_config_and_the_key() -> None:
    from buildrunnerd.agent import choose_planner

    auto = make_config()
    assert isinstance(choose_planner(auto, {}), HeuristicPlanner)
    claude = choose_planner(auto, {"ANTHROPIC_API_KEY": API_KEY})
    assert isinstance(claude, ClaudePlanner)
    await claude.aclose()
    forced = Config(agent=auto.agent, planner=PlannerConfig(planner="heuristic"))
    assert isinstance(choose_planner(forced, {"ANTHROPIC_API_KEY": API_KEY}), HeuristicPlanner)
