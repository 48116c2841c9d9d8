"""Load the configuration: TOML file -> environment overrides -> validated :class:`Config`.

Precedence, lowest first: built-in defaults, the TOML file, ``BUILDRUNNER_*`` environment
variables, command-line flags (the daemon applies those itself). Every error is a
:class:`~buildrunnerd.errors.ConfigError` that names the key (``daemon.workers``), where it came
from (the file and line, or the environment variable) and what to do about it.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import msgspec

from buildrunnerd.config._model import Config, Price
from buildrunnerd.errors import ConfigError

__all__ = [
    "ENV_OVERRIDES",
    "RESTART_REQUIRED",
    "load_config",
    "describe_config",
    "reloadable_diff",
    "check_config_main",
]


def _optional_float(raw: str) -> float | None:
    # "" / "none" lets a user clear a budget set in the file without editing it.
    return None if raw.strip().lower() in ("", "none", "null") else float(raw)


def _optional_str(raw: str) -> str | None:
    return raw if raw.strip() else None


# Environment variable -> (key path, parser). Documented in docs/configuration.md; keep in sync.
ENV_OVERRIDES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "BUILDRUNNER_WORKERS": ("daemon.workers", int),
    "BUILDRUNNER_MAX_WORKERS_PER_RUN": ("daemon.max_workers_per_run", int),
    "BUILDRUNNER_LOG_FORMAT": ("daemon.log_format", str),
    "BUILDRUNNER_LOG_LEVEL": ("daemon.log_level", str),
    "BUILDRUNNER_BACKEND": ("daemon.backend", str),
    "BUILDRUNNER_GRACE_PERIOD_S": ("daemon.grace_period_s", float),
    "BUILDRUNNER_PLANNER": ("planner.planner", str),
    "BUILDRUNNER_SANDBOX": ("agent.sandbox", str),
    "BUILDRUNNER_TEST_CMD": ("verify.test_cmd", _optional_str),
    "BUILDRUNNER_BUDGET_USD": ("budget_usd", _optional_float),
}

# Keys whose new value only takes effect after a restart: they size or shape things built once
# at start-up (the socket server, the backend). Everything else is read where it is used, so a
# SIGHUP reload applies it to the next batch, the next log line, the next retention pass.
RESTART_REQUIRED: frozenset[str] = frozenset({
    "daemon.backend",
    "daemon.grace_period_s",  # the daemon takes it at start-up for its shutdown path
    "daemon.max_frame_bytes",
    "daemon.client_idle_timeout_s",
    "daemon.write_timeout_s",
    "daemon.subscriber_queue_size",
})

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN_RE = re.compile(r"unknown field `(?P<field>[^`]+)`")


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (None: built-in defaults), apply environment overrides, validate.

    ``env`` defaults to ``os.environ``. Raises :class:`ConfigError` naming the key path, the
    file (with its line when it can be found) or the environment variable at fault.
    """
    env = os.environ if env is None else env
    text = ""
    data: dict[str, Any] = {}
    if path is not None:
        text, data = _read_toml(path)
    where = str(path) if path is not None else "<defaults>"
    sources: dict[str, str] = {}  # key path -> env var, so errors can point at the variable
    for var, (key, parse) in ENV_OVERRIDES.items():
        raw = env.get(var)
        if raw is None:
            continue
        try:
            value = parse(raw)
        except ValueError:
            raise ConfigError(
                f"${var}={raw!r} is not a valid {parse.__name__.lstrip('_')} for {key}; "
                "fix or unset the variable",
                data={"key": key, "file": None, "env": var},
            ) from None
        _set_path(data, key, value)
        sources[key] = var
    _merge_default_prices(data)
    config = _convert(data, text=text, where=where, path=path, sources=sources)
    _check_values(config, text=text, where=where, path=path, sources=sources)
    return config


def _read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; create it (see config/buildrunner.toml) "
            "or unset BUILDRUNNER_CONFIG to use the built-in defaults",
            data={"key": None, "file": str(path)},
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config file ({exc.strerror}); check its permissions",
            data={"key": None, "file": str(path)},
        ) from exc
    try:
        text = raw.decode("utf-8")
        return text, tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: the config file is not UTF-8 text (byte {exc.start}); save it as UTF-8",
            data={"key": None, "file": str(path)},
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)": keep it, the user needs it.
        line_match = re.search(r"at line (\d+)", str(exc))
        line = int(line_match.group(1)) if line_match else None
        loc = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            f"{loc}: invalid TOML: {exc}; fix the syntax (see config/buildrunner.toml)",
            data={"key": None, "file": str(path), "line": line},
        ) from exc


def _merge_default_prices(data: dict[str, Any]) -> None:
    # A [pricing.models."x"] table adds to (or overrides one entry of) the built-in price table
    # instead of replacing it: adding one model must not silently drop the prices of the others.
    pricing = data.get("pricing")
    if not isinstance(pricing, dict) or not isinstance(pricing.get("models"), dict):
        return
    defaults = msgspec.to_builtins(Config().pricing.models)
    pricing["models"] = {**defaults, **pricing["models"]}


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _convert(
    data: dict[str, Any], *, text: str, where: str, path: Path | None, sources: dict[str, str]
) -> Config:
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        message = str(exc)
        key = _key_from_error(message, data)
        reason = _PATH_RE.sub("", message)
        if "unknown field" in reason:
            reason = "unknown key"
            hint = "remove it or fix its spelling (every key is listed in config/buildrunner.toml)"
        else:
            hint = "see config/buildrunner.toml for the expected type and default"
        raise _error_at(key, f"{reason}; {hint}", text=text, where=where, path=path,
                        sources=sources) from None


def _key_from_error(message: str, data: dict[str, Any]) -> str:
    """Turn msgspec's ``- at `$.daemon` `` suffix into a dotted key path (``daemon.wrkers``)."""
    match = _PATH_RE.search(message)
    raw = match.group("path") if match else ""
    parts = [p for p in re.split(r"\.|\[(\d+|\.\.\.)\]", raw) if p]
    unknown = _UNKNOWN_RE.search(message)
    if unknown:
        parts.append(unknown.group("field"))
    if "..." in parts:
        # msgspec does not name the dict key at fault (``pricing.models[...]``); find it by
        # validating each entry of that table on its own.
        idx = parts.index("...")
        models = data.get("pricing", {}).get("models", {})
        if parts[:idx] == ["pricing", "models"] and isinstance(models, dict):
            for name, price in models.items():
                try:
                    msgspec.convert(price, Price)
                except msgspec.ValidationError as inner:
                    sub = _key_from_error(str(inner), {})
                    return ".".join(["pricing", "models", str(name)] + ([sub] if sub else []))
        parts = parts[:idx]
    return ".".join(parts)


def _error_at(
    key: str, problem: str, *, text: str, where: str, path: Path | None, sources: dict[str, str]
) -> ConfigError:
    env_var = next((var for k, var in sources.items() if key == k or key.startswith(k + ".")),
                   None)
    if env_var is not None:
        return ConfigError(f"${env_var} (sets {key}): {problem}",
                           data={"key": key, "file": None, "env": env_var})
    line = _find_line(text, key) if text else None
    loc = f"{where}:{line}" if line else where
    return ConfigError(f"{loc}: {key}: {problem}",
                       data={"key": key, "file": str(path) if path else None, "line": line})


def _find_line(text: str, key: str) -> int | None:
    """Best-effort 1-based line of ``key`` (dotted) in the TOML ``text``."""
    parts = key.split(".")
    leaf = parts[-1]
    table = parts[:-1]
    current: list[str] = []
    fallback: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[+\s*([^\]]+?)\s*\]+", stripped)
        if header:
            current = [p.strip().strip('"') for p in header.group(1).split(".")]
            if current == parts:
                return number  # the key is itself a table
            continue
        kv = re.match(r'^"?([A-Za-z0-9_.-]+?)"?\s*=', stripped)
        if not kv:
            continue
        full = current + [p.strip('"') for p in kv.group(1).split(".")]
        if full == table + [leaf]:
            return number
        if full[: len(table) + 1] == table + [leaf] or (full[-1:] == [leaf] and fallback is None):
            fallback = number
    return fallback


def _walk(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


_POSITIVE_SUFFIXES = ("_s", "_bytes", "_days", "_hours", "_tokens", "_minutes", "_size",
                      "_chars", "workers", "workers_per_run", "max_turns")
# Limits named max_* may be 0 where 0 means "no limit" (agent.max_batch_tokens) or "none"
# (verify.max_fix_attempts); these few must still be positive or nothing could ever run.
_MUST_BE_POSITIVE = frozenset({
    "daemon.max_workers_per_run", "daemon.max_frame_bytes", "models.max_tokens", "agent.max_turns",
})


def _check_values(
    config: Config, *, text: str, where: str, path: Path | None, sources: dict[str, str]
) -> None:
    """Range checks the types alone cannot express (a worker count of 0 would hang every run)."""
    flat = dict(_walk(msgspec.to_builtins(config)))
    for key, value in flat.items():
        leaf = key.rsplit(".", 1)[-1]
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        positive = key in _MUST_BE_POSITIVE or (
            leaf.endswith(_POSITIVE_SUFFIXES) and not leaf.startswith("max_")
        )
        if numeric and positive and value <= 0:
            raise _error_at(key, f"must be greater than 0, got {value}", text=text, where=where,
                            path=path, sources=sources)
        if numeric and (leaf.startswith("max_") or leaf.endswith("_per_mtok")) and value < 0:
            raise _error_at(key, f"must not be negative, got {value}", text=text, where=where,
                            path=path, sources=sources)
    if config.budget_usd is not None and config.budget_usd <= 0:
        raise _error_at("budget_usd", "must be greater than 0 (leave it out for no budget)",
                        text=text, where=where, path=path, sources=sources)
    if config.daemon.log_level.lower() not in _LOG_LEVELS:
        raise _error_at("daemon.log_level", f"must be one of {', '.join(_LOG_LEVELS)}",
                        text=text, where=where, path=path, sources=sources)
    for tier in ("simple", "medium", "complex", "critical", "fallback"):
        model = getattr(config.models, tier)
        if model not in config.pricing.models:
            raise _error_at(f"models.{tier}",
                            f"model {model!r} has no price; add [pricing.models.\"{model}\"]",
                            text=text, where=where, path=path, sources=sources)


# --- printing -----------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot print {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _emit_table(lines: list[str], name: list[str], table: dict[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if name and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_toml_key(n) for n in name) + "]")
    for key, value in scalars.items():
        if value is None:
            # TOML has no null: show the key commented out so the user sees it exists.
            lines.append(f"# {_toml_key(key)} = (not set)")
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _emit_table(lines, [*name, key], value)


def describe_config(config: Config) -> str:
    """The effective configuration as TOML (unset optional keys appear as comments).

    The output loads back to the same configuration; ``buildrunnerd --check-config`` prints it.
    """
    lines: list[str] = ["# effective BuildRunner configuration"]
    _emit_table(lines, [], msgspec.to_builtins(config))
    return "\n".join(lines) + "\n"


def reloadable_diff(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Compare two configurations for a SIGHUP reload.

    Returns ``(applied, needs_restart)``: the dotted keys whose value changed and take effect
    without a restart, and those that only take effect after one (:data:`RESTART_REQUIRED`).
    A changed key under a table (``pricing.models.x.input_per_mtok``) is reported in full.
    """
    before = dict(_walk(msgspec.to_builtins(old)))
    after = dict(_walk(msgspec.to_builtins(new)))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    needs_restart = [k for k in changed if k in RESTART_REQUIRED]
    applied = [k for k in changed if k not in RESTART_REQUIRED]
    return applied, needs_restart


def check_config_main(
    config_file: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``buildrunnerd --check-config``: print the effective configuration, return an exit code.

    ``config_file`` None means the usual lookup (``$BUILDRUNNER_CONFIG``, the XDG config file,
    else built-in defaults). Exit 0 when valid, 1 with the error on ``err`` when not.
    """
    from buildrunnerd.paths import config_path

    env = os.environ if env is None else env
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    path = config_file if config_file is not None else config_path(dict(env))
    try:
        config = load_config(path, env)
    except ConfigError as exc:
        print(f"buildrunnerd: invalid configuration: {exc}", file=err)
        return 1
    out.write(f"# source: {path if path is not None else 'built-in defaults'}\n")
    out.write(describe_config(config))
    return 0
