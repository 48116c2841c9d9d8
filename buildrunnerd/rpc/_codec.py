"""JSON encoding of everything the server sends (msgspec, with a few extra types)."""

from __future__ import annotations

import os
from typing import Any

import msgspec

__all__ = ["encode", "decode"]


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


def decode(frame: bytes) -> Any:
    """Decode one frame. Raises ``msgspec.DecodeError`` with the position of the problem."""
    return _decoder.decode(frame)
