"""JSON encoding of everything the server sends (msgspec, with a few extra types)."""

from __future__ import annotations

import os
from typing import Any

import msgspec

__all__ = ["encode", "decode", "MAX_JSON_DEPTH"]

# Arrays and objects nested in one frame. A request needs a handful; a hostile peer sends
# ``[[[[...`` thousands deep, which the decoder (or any later ``repr``/encode of the value)
# would answer with a RecursionError instead of a parse error.
MAX_JSON_DEPTH = 64


def _enc_hook(obj: Any) -> Any:
    # Handlers return msgspec Structs, dicts, lists and datetimes (msgspec handles those);
    # paths and exceptions are common enough in results and error data to encode as text.
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, BaseException):
        return str(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder()


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as compact JSON. Raises ``TypeError`` for values JSON cannot hold."""
    try:
        return _encoder.encode(obj)
    except (msgspec.EncodeError, NotImplementedError) as exc:
        raise TypeError(str(exc)) from exc


def decode(frame: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode one frame. Raises ``msgspec.DecodeError`` with the position of the problem, or
    when arrays/objects nest deeper than ``max_depth``."""
    try:
        value = _decoder.decode(frame)
    except RecursionError as exc:
        raise msgspec.DecodeError(_too_deep(max_depth)) from exc
    if isinstance(value, (dict, list)) and _deeper_than(value, max_depth):
        raise msgspec.DecodeError(_too_deep(max_depth))
    return value


def _too_deep(max_depth: int) -> str:
    return f"JSON nested deeper than {max_depth} levels of arrays/objects"


def _deeper_than(value: dict[str, Any] | list[Any], max_depth: int) -> bool:
    # Iterative: the check itself must not recurse on what it guards against.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False
