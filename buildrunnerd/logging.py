"""Structured logs to stderr: JSON lines (journald, log shippers) or a console format.

Every line carries what is bound in the current context (``bind_ids(run_id=..., batch_id=...)``
uses :mod:`contextvars`, so each task of the daemon's task group keeps its own ids), and passes
through :func:`redact` last, so an API key never reaches a log line, whatever logged it: our
code, an exception message, or a third-party library writing through :mod:`logging`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from buildrunnerd.credentials import redact_secrets

__all__ = ["configure_logging", "get_logger", "bind_ids", "redact", "redact_text", "REDACTED"]

REDACTED = "[REDACTED]"

# Patterns of secrets that must never be logged. The prefix is kept (``sk-ant-[REDACTED]``) so a
# reader can still tell which kind of credential was there.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsk-ant-[A-Za-z0-9_\-]{8,}"), "sk-ant-" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "sk-" + REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "AKIA" + REDACTED),
    (re.compile(r"\b(gh[pousr]_)[A-Za-z0-9]{20,}"), r"\g<1>" + REDACTED),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), "github_pat_" + REDACTED),
    (re.compile(r"\b(xox[abposr]-)[A-Za-z0-9\-]{10,}"), r"\g<1>" + REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"), r"\g<1>" + REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
     "-----BEGIN PRIVATE KEY-----" + REDACTED),
)

# Keys whose string values are secrets whatever they look like. Only strings are masked:
# ``input_tokens: 1200`` and ``max_tokens`` are counts, not credentials.
_SENSITIVE_KEY = re.compile(r"(?i)(key|token|secret|passw(or)?d|authorization|credential|cookie)")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def redact_text(text: str) -> str:
    """Mask every secret pattern (Anthropic/OpenAI/AWS/GitHub keys, bearer tokens) in ``text``,
    then every other known credential (:func:`buildrunnerd.credentials.redact_secrets`:
    Stripe, Slack webhooks, database URL passwords, JWTs)."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return redact_secrets(text)


def _redact_value(key: str | None, value: Any) -> Any:
    if isinstance(value, str):
        if key is not None and _SENSITIVE_KEY.search(key) and value:
            return REDACTED
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every value, and every string under a secret key."""
    return {
        k: (_redact_value(None, v) if k == "event" else _redact_value(k, v))
        for k, v in event_dict.items()
    }


def _drop_color_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # uvicorn-style libraries duplicate the message with ANSI codes; keep one copy.
    event_dict.pop("color_message", None)
    return event_dict


_NOISY_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2", "anthropic._base_client")


def configure_logging(
    fmt: Literal["json", "console"] | str = "console",
    level: str = "info",
    *,
    stream: TextIO | None = None,
) -> None:
    """Send structlog and stdlib :mod:`logging` output to ``stream`` (default stderr).

    ``fmt`` "json" writes one JSON object per line; "console" a readable line (colours only on a
    TTY). ``level`` is a name (debug, info, ...). Safe to call again (SIGHUP reload).
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', not {fmt!r}")
    numeric_level = _LEVELS.get(level.lower())
    if numeric_level is None:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, not {level!r}")
    out = sys.stderr if stream is None else stream

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Render tracebacks to text *before* redaction so secrets in exception messages are
        # masked too (a rich traceback with locals would bypass the redactor).
        structlog.processors.format_exc_info,
        _drop_color_message,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        isatty = getattr(out, "isatty", None)
        renderer = structlog.dev.ConsoleRenderer(colors=bool(isatty and isatty()))

    structlog.configure(
        processors=[*shared, structlog.processors.UnicodeDecoder(), redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,  # reconfigurable on SIGHUP
    )

    # Third-party libraries (httpx, anthropic, aiosqlite) log through the stdlib: route them
    # through the same processors so they are formatted and redacted the same way.
    handler = _OwnHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _OwnHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # httpx logs every request at INFO; that is noise next to our own api.call events (and a
    # formatted, redacted line per model call). The SDK's newer releases use httpx2.
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))


class _OwnHandler(logging.StreamHandler[TextIO]):
    """The root handler :func:`configure_logging` installs; a reload replaces only this one,
    never a handler someone else (pytest's capture, an embedding program) added."""


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger; ``initial`` values are bound to every line it writes."""
    logger = structlog.get_logger(name) if name else structlog.get_logger()
    return logger.bind(**initial) if initial else logger


@contextmanager
def bind_ids(**ids: str | None) -> Iterator[None]:
    """Bind ids (``run_id``, ``batch_id``, ``task_id``) to every log line in this context.

    Uses contextvars, so tasks started inside the block inherit the ids and concurrent batches
    do not see each other's. ``None`` values are left out.
    """
    with structlog.contextvars.bound_contextvars(
        **{k: v for k, v in ids.items() if v is not None}
    ):
        yield
