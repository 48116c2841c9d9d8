"""Structured logging: JSON lines, ids from contextvars, and secrets never reaching a line."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest
import structlog

from buildrunnerd.logging import bind_ids, configure_logging, get_logger, redact_text

PLANTED = "sk-ant-api03-" + "Zx9" * 30  # looks like a real Anthropic key


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    # configure_logging changes process-wide state; put it all back for the other tests.
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    levels = {name: logging.getLogger(name).level
              for name in ("", "httpx", "httpcore", "httpx2", "httpcore2",
                           "anthropic._base_client")}
    buffer = io.StringIO()
    configure_logging("json", "debug", stream=buffer)
    yield buffer
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers_before:
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    # asyncio logs its selector choice at DEBUG through the root logger: not ours.
    return [line for line in lines if line.get("logger") != "asyncio"]


def test_the_http_clients_request_lines_stay_out_of_the_log(stream: io.StringIO) -> None:
    # One line per model call (the SDK's client logs each request at INFO) is noise next to
    # the api.call events, and a formatted, redacted line of CPU per call; warnings still show.
    for name in ("httpx", "httpx2", "httpcore2"):
        logging.getLogger(name).info('HTTP Request: POST http://127.0.0.1/v1/messages "200"')
        logging.getLogger(name).warning("connection reset")
    lines = _lines(stream)
    assert [line["event"] for line in lines] == ["connection reset"] * 3


def test_planted_key_is_redacted_everywhere(stream: io.StringIO) -> None:
    log = get_logger("test")
    log.info(f"calling with {PLANTED}", api_key=PLANTED, headers={"x-api-key": PLANTED},
             note=f"Authorization: Bearer {PLANTED}", input_tokens=1200)
    try:
        raise RuntimeError(f"request failed for key {PLANTED}")
    except RuntimeError:
        log.exception("api.error")
    logging.getLogger("anthropic").warning("retrying key=%s", PLANTED)
    text = stream.getvalue()
    assert PLANTED not in text
    assert PLANTED[:20] not in text
    first, second, third = _lines(stream)
    assert first["api_key"] == "[REDACTED]"
    assert first["headers"] == {"x-api-key": "[REDACTED]"}
    assert first["event"] == "calling with sk-ant-[REDACTED]"
    assert first["note"] == "Authorization: Bearer sk-ant-[REDACTED]"
    assert first["input_tokens"] == 1200  # counts under a "token" key are not secrets
    assert "RuntimeError: request failed for key sk-ant-[REDACTED]" in str(second["exception"])
    assert third["logger"] == "anthropic"
    assert third["event"] == "retrying key=sk-ant-[REDACTED]"


@pytest.mark.parametrize(
    ("secret", "kept"),
    [
        ("AKIAIOSFODNN7EXAMPLE", "AKIA[REDACTED]"),
        ("ghp_" + "a1B2" * 9, "ghp_[REDACTED]"),
        ("sk-proj-" + "q" * 40, "sk-[REDACTED]"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "Bearer [REDACTED]"),
    ],
)
def test_secret_patterns(secret: str, kept: str) -> None:
    masked = redact_text(f"value: {secret} end")
    assert masked == f"value: {kept} end"


def test_other_known_credentials_are_redacted_too() -> None:
    stripe = "sk_" + "live_4eC39HqLyjWDarjtT1zdp7dc"
    jwt = ("eyJ" + "hbGciOiJIUzI1NiJ9" + ".eyJ" + "zdWIiOiIxMjM0NTY3ODkwIn0"
           + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
    masked = redact_text(f"stripe={stripe} db=postgres://app:" + "Zq8kLm2Vx9pR4tWn@db/app "
                         f"token={jwt}")
    assert masked == ("stripe=[REDACTED:stripe_key] db=postgres://app:[REDACTED:database_url]"
                      "@db/app token=[REDACTED:jwt]")


def test_ordinary_text_is_untouched() -> None:
    text = "task-12 wrote todo_api/server.py (skipped 3 files; sk-1 is a task id)"
    assert redact_text(text) == text


async def test_each_task_carries_its_own_ids(stream: io.StringIO) -> None:
    log = get_logger("test")

    async def batch(batch_id: str, task_id: str) -> None:
        with bind_ids(batch_id=batch_id, task_id=task_id):
            await anyio.lowlevel.checkpoint()
            log.info("batch.step")
            await anyio.lowlevel.checkpoint()
            log.info("batch.step")

    with bind_ids(run_id="run-1"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(batch, "b1", "t1")
            tg.start_soon(batch, "b2", "t2")
        log.info("run.done")

    lines = _lines(stream)
    steps = [line for line in lines if line["event"] == "batch.step"]
    assert len(steps) == 4
    assert all(line["run_id"] == "run-1" for line in lines)
    assert sorted((s["batch_id"], s["task_id"]) for s in steps) == [
        ("b1", "t1"), ("b1", "t1"), ("b2", "t2"), ("b2", "t2"),
    ]
    done = next(line for line in lines if line["event"] == "run.done")
    assert "batch_id" not in done


def test_level_filters(stream: io.StringIO) -> None:
    configure_logging("json", "warning", stream=stream)
    log = get_logger()
    log.info("hidden")
    log.warning("shown")
    assert [line["event"] for line in _lines(stream)] == ["shown"]


def test_console_format_in_a_real_process() -> None:
    code = (
        "from buildrunnerd.logging import configure_logging, get_logger, bind_ids\n"
        "configure_logging('console', 'info')\n"
        "with bind_ids(run_id='r-9'):\n"
        f"    get_logger().info('run.started', password='hunter2', key={PLANTED!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout == ""
    assert "run.started" in result.stderr
    assert "run_id=r-9" in result.stderr
    assert "hunter2" not in result.stderr
    assert PLANTED not in result.stderr


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "info")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "loud")
