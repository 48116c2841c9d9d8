"""The fake Messages API itself speaks the wire format the SDK expects."""

from __future__ import annotations

import json

import httpx

from tests.fakeapi import API_KEY, FakeAnthropic, Reply, text, thinking, tool_use

BODY = {"model": "claude-haiku-5-5", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}]}


def test_both_auth_headers_are_accepted_and_errors_have_the_real_shape() -> None:
    with FakeAnthropic(lambda req: Reply([text("hello")])) as fake:
        url = f"{fake.base_url}/v1/messages"
        by_key = httpx.post(url, json=BODY, headers={"x-api-key": API_KEY})
        by_bearer = httpx.post(url, json=BODY, headers={"authorization": f"Bearer {API_KEY}"})
        wrong = httpx.post(url, json=BODY, headers={"x-api-key": "nope"})
    assert by_key.status_code == by_bearer.status_code == 200
    message = by_key.json()
    assert message["type"] == "message" and message["content"] == [text("hello")]
    assert set(message["usage"]) >= {"input_tokens", "output_tokens",
                                      "cache_creation_input_tokens", "cache_read_input_tokens"}
    assert by_key.headers["request-id"].startswith("req_")
    assert "anthropic-ratelimit-requests-remaining" in by_key.headers
    assert wrong.status_code == 401
    assert wrong.json()["type"] == "error"
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert wrong.json()["request_id"] == wrong.headers["request-id"]


def test_stream_is_server_sent_events() -> None:
    content = [thinking("hmm"), text("hi"), tool_use("bash", {"command": "ls"})]
    with FakeAnthropic([Reply(content, "tool_use")]) as fake:
        resp = httpx.post(f"{fake.base_url}/v1/messages", json={**BODY, "stream": True},
                          headers={"x-api-key": API_KEY})
    assert resp.headers["content-type"] == "text/event-stream"
    events = [block.split("\n") for block in resp.text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[0] == "message_start" and names[-1] == "message_stop" and "ping" in names
    deltas = [json.loads(lines[1].removeprefix("data: "))["delta"]["type"]
              for lines in events if lines[0] == "event: content_block_delta"]
    assert {"thinking_delta", "signature_delta", "text_delta", "input_json_delta"} <= set(deltas)
    final = json.loads(events[-2][1].removeprefix("data: "))
    assert final["type"] == "message_delta" and final["delta"]["stop_reason"] == "tool_use"
    assert len(fake.billed) == 1
