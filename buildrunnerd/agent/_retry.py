"""Which API failures are worth retrying, how long to wait, and one limiter for all workers.

The SDK's own retries are off (``max_retries=0``) so that every attempt goes through here:

* retried: 429 ``rate_limit_error``, 529 ``overloaded_error`` (also as an ``error`` event in
  the middle of a stream, which arrives with HTTP status 200), 5xx, timeouts, dropped
  connections;
* never retried: 400, 401, 403, 404, 413, and a 429 that is a *spend limit*: it will not pass
  by waiting. It is told apart by ``error.details.error_code ==
  "enforced_spend_limit_reached"`` and, for older bodies without details, by its message
  (``spend limit`` / ``credit balance`` / ``billing``), and by a 402 ``billing_error``.

Waits are jittered exponential (``base * 2**n`` up to ``max``, times 0.5..1.0) and never
shorter than the server's ``retry-after``.
"""

from __future__ import annotations

import email.utils
import importlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import anthropic
import anyio

__all__ = ["TRANSPORT_ERRORS", "Failure", "classify", "backoff_s", "retry_after_s", "RateLimiter"]

def _transport_errors() -> tuple[type[Exception], ...]:
    # The SDK wraps transport errors while sending, not always while a body or stream is being
    # read: a connection that breaks then raises the HTTP library's own error. anthropic 2.x
    # uses httpx2, older releases httpx; catch whichever is installed.
    found: list[type[Exception]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors()

_SPEND_LIMIT_WORDS = ("spend limit", "credit balance", "billing", "usage limit")


@dataclass(frozen=True)
class Failure:
    """What one failed attempt means."""

    retryable: bool
    overloaded: bool  # counts toward switching to the fallback model
    auth: bool  # the key was rejected
    status: int | None
    error_type: str | None
    message: str
    retry_after_s: float | None = None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, else ``retry-after`` (seconds
    or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def classify(exc: BaseException) -> Failure:
    """Sort an exception from an API call into retry / fail."""
    if isinstance(exc, anthropic.APITimeoutError):
        return Failure(True, False, False, None, "timeout", "the request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return Failure(True, False, False, None, "connection", f"connection failed: {exc}")
    if isinstance(exc, TRANSPORT_ERRORS):
        kind = "timeout" if "Timeout" in type(exc).__name__ else "connection"
        return Failure(True, False, False, None, kind, f"{kind} failed: {exc}")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        etype = exc.type
        message = exc.api_message or str(exc)
        after = retry_after_s(exc.response.headers)
        if status == 401 or etype == "authentication_error":
            return Failure(False, False, True, status, etype, message)
        if etype == "overloaded_error" or status == 529:
            return Failure(True, True, False, status, etype, message, after)
        if status == 429 or etype == "rate_limit_error":
            spend = exc.error_code == "enforced_spend_limit_reached" or any(
                w in message.lower() for w in _SPEND_LIMIT_WORDS)
            return Failure(not spend, False, False, status, etype, message, after)
        if etype == "api_error" or status >= 500 or status in (408, 409):
            # 200 here is an ``error`` event in a stream: the server failed mid-answer.
            return Failure(True, False, False, status, etype, message, after)
        return Failure(False, False, False, status, etype, message)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return Failure(True, False, False, exc.status_code, "invalid_response", str(exc))
    raise exc


def backoff_s(attempt: int, *, base_s: float, max_s: float, retry_after: float | None,
              rng: random.Random) -> float:
    """How long to wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
    wait: float = min(max_s, base_s * (2 ** attempt)) * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        wait = max(wait, retry_after)
    return wait


class RateLimiter:
    """One per daemon, shared by every worker: when the API says slow down, all wait.

    Fed by ``retry-after`` on 429/529 and by the ``anthropic-ratelimit-*`` headers of every
    response: when a remaining count reaches zero, calls hold until its reset time."""

    _KINDS = ("requests", "tokens", "input-tokens", "output-tokens")

    def __init__(self) -> None:
        self._resume_at = 0.0  # time.monotonic() before which no call starts
        self.pauses = 0  # how many times the API made everyone wait (for tests and logs)

    @property
    def wait_s(self) -> float:
        """How long a call starting now would wait."""
        return max(0.0, self._resume_at - time.monotonic())

    async def wait(self) -> None:
        """Block until calls may start again."""
        # A loop, not an Event: another worker may extend the pause while we sleep.
        while (delay := self._resume_at - time.monotonic()) > 0:  # noqa: ASYNC110
            await anyio.sleep(delay)

    def pause_for(self, seconds: float) -> None:
        """Hold every worker for ``seconds`` from now (extends, never shortens, a pause)."""
        if seconds <= 0:
            return
        resume = time.monotonic() + seconds
        if resume > self._resume_at:
            self._resume_at = resume
            self.pauses += 1

    def observe(self, headers: Mapping[str, str], *, status: int | None = None) -> None:
        """Learn from a response's headers (success or error)."""
        if status in (429, 529):
            after = retry_after_s(headers)
            if after is not None:
                self.pause_for(after)
        for kind in self._KINDS:
            remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
            reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
            if remaining is None or reset is None:
                continue
            try:
                if int(remaining) > 0:
                    continue
                reset_at = datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            # Cap: a wrong clock or header must not stall the daemon for long.
            self.pause_for(min(max(0.0, reset_at - time.time()), 60.0))
