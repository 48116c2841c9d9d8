"""One cheap call before a run pays for anything: is the Messages API reachable, and does it
accept the key?

``POST /v1/messages/count_tokens`` is free and needs a valid key, so it answers both questions
in one round trip, without the SDK's retries and backoff (which turn an unreachable API into
minutes of silence). Anything that proves the API is there and takes the key (a 2xx, a 429, an
overload) passes; only "cannot connect" and "key refused" fail, with the URL and the fix.
"""

from __future__ import annotations

import anthropic

from buildrunnerd.config import Config
from buildrunnerd.errors import AgentError

__all__ = ["check_api"]

_PREFLIGHT_TIMEOUT_S = 5.0


async def check_api(
    config: Config, *, api_key: str | None = None, base_url: str | None = None,
    timeout_s: float = _PREFLIGHT_TIMEOUT_S,
) -> None:
    """Raise :class:`AgentError` (saying where, and what to do) when the API at ``base_url``
    (default: the SDK's, i.e. ``ANTHROPIC_BASE_URL``) cannot be reached within ``timeout_s`` or
    refuses the key (default: ``ANTHROPIC_API_KEY``)."""
    try:
        client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0,
                                          timeout=timeout_s)
    except anthropic.AnthropicError as exc:  # no key at all
        raise AgentError(
            f"no Anthropic API key: {exc}. Set ANTHROPIC_API_KEY in the daemon's environment "
            "(systemd: `systemctl --user edit buildrunnerd`, Environment=ANTHROPIC_API_KEY=...)"
            " and restart it, or run it with --backend simulated.",
            data={"reason": "no_api_key"},
        ) from exc
    url = str(client.base_url).rstrip("/")
    try:
        await client.messages.count_tokens(
            model=config.models.simple, messages=[{"role": "user", "content": "ping"}],
        )
    except anthropic.APIConnectionError as exc:  # refused, DNS, TLS, timed out
        why = "timed out" if isinstance(exc, anthropic.APITimeoutError) else (
            str(exc.__cause__ or exc) or type(exc).__name__)
        raise AgentError(
            f"the Anthropic API at {url} is unreachable ({why}, within {timeout_s:g} s). Check "
            "the network and ANTHROPIC_BASE_URL in the daemon's environment (a proxy must be "
            "running), then submit again; or run the daemon with --backend simulated.",
            data={"reason": "unreachable", "url": url},
        ) from exc
    except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as exc:
        raise AgentError(
            f"the Anthropic API at {url} refused the key (HTTP {exc.status_code}: "
            f"{_message(exc)}). Set a valid ANTHROPIC_API_KEY in the daemon's environment "
            "(systemd: `systemctl --user edit buildrunnerd`, Environment=ANTHROPIC_API_KEY=...)"
            " and restart it, then submit again.",
            data={"reason": "unauthorized", "url": url, "status": exc.status_code},
        ) from exc
    except TypeError as exc:  # the SDK found neither an API key nor an auth token
        raise AgentError(
            f"no Anthropic API key for {url} ({exc}). Set ANTHROPIC_API_KEY in the daemon's "
            "environment (systemd: `systemctl --user edit buildrunnerd`, "
            "Environment=ANTHROPIC_API_KEY=...) and restart it, or run it with --backend "
            "simulated.",
            data={"reason": "no_api_key", "url": url},
        ) from exc
    except anthropic.APIStatusError:
        # Reachable and not a key problem (429, 529, a proxy without count_tokens, ...): the
        # calls themselves retry what can pass by waiting.
        return
    finally:
        await client.close()


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message
