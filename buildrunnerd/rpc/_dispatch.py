"""JSON-RPC 2.0 dispatch: one frame in (object or batch), one frame out (or none).

Everything the specification asks for lives here, free of sockets, so it reads like the spec:
parse errors, invalid requests, notifications (no reply), batches (an array of replies, nothing
when every member was a notification), and the translation of exceptions into error objects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from buildrunnerd import protocol
from buildrunnerd.errors import BuildRunnerError
from buildrunnerd.rpc._codec import decode, encode

if TYPE_CHECKING:
    from buildrunnerd.rpc._connection import Connection

__all__ = ["Dispatcher", "Handler", "error_frame"]

Handler = Callable[[dict[str, Any], "Connection"], Awaitable[Any]]

_log = structlog.get_logger("buildrunnerd.rpc")
_NO_ID = object()  # the request has no "id" member: a notification


def _error(
    request_id: Any, code: int, message: str, data: Any = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def error_frame(code: int, message: str, data: Any = None, request_id: Any = None) -> bytes:
    """An encoded error response (used by the server for frame-level errors)."""
    return encode(_error(request_id, code, message, data))


def _valid_id(value: Any) -> bool:
    # bool is an int in Python, but not a valid JSON-RPC id.
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


class Dispatcher:
    """Method name -> handler, and the JSON-RPC 2.0 processing of frames.

    A handler is ``async def handler(params: dict[str, Any], conn: Connection) -> Any``; params
    arrive by name (``{}`` when absent). It returns anything msgspec can encode, raises a
    :class:`~buildrunnerd.errors.BuildRunnerError` for an application error (its code, message
    and data are sent), or lets a ``msgspec.ValidationError`` escape from validating its params
    (sent as -32602). Any other exception is logged and sent as -32603 with a short reason.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        """Serve ``name`` with ``handler``. Registering a name twice is a bug: ValueError."""
        if name in self._handlers:
            raise ValueError(f"JSON-RPC method {name!r} is already registered")
        if name.startswith("rpc."):
            raise ValueError(f"method names starting with 'rpc.' are reserved: {name!r}")
        self._handlers[name] = handler

    @property
    def methods(self) -> list[str]:
        """The registered method names, sorted."""
        return sorted(self._handlers)

    async def handle_frame(self, frame: bytes, conn: Connection) -> bytes | None:
        """Process one frame; return the encoded reply, or None when nothing is to be sent."""
        try:
            message = decode(frame)
        except msgspec.DecodeError as exc:
            return encode(_error(
                None, protocol.PARSE_ERROR, "parse error: the frame is not valid JSON",
                {"reason": str(exc)},
            ))
        if isinstance(message, list):
            if not message:
                return encode(_error(
                    None, protocol.INVALID_REQUEST, "invalid request: empty batch",
                    {"reason": "a batch must contain at least one request"},
                ))
            replies = [await self._handle_one(item, conn) for item in message]
            encoded = [reply for reply in replies if reply is not None]
            # Every member a notification: the specification says to return nothing at all.
            return b"[" + b",".join(encoded) + b"]" if encoded else None
        return await self._handle_one(message, conn)

    async def _handle_one(self, message: Any, conn: Connection) -> bytes | None:
        if not isinstance(message, dict):
            return encode(_error(
                None, protocol.INVALID_REQUEST, "invalid request: expected a JSON object",
                {"reason": f"got {type(message).__name__}"},
            ))
        request_id = message.get("id", _NO_ID)
        is_notification = request_id is _NO_ID
        if not is_notification and not _valid_id(request_id):
            return encode(_error(
                None, protocol.INVALID_REQUEST, "invalid request: bad id",
                {"reason": "id must be a string, a number or null"},
            ))
        reply_id = None if is_notification else request_id
        if message.get("jsonrpc") != "2.0":
            return encode(_error(
                reply_id, protocol.INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"',
                {"reason": f"jsonrpc is {message.get('jsonrpc')!r}"},
            ))
        method = message.get("method")
        if not isinstance(method, str):
            return encode(_error(
                reply_id, protocol.INVALID_REQUEST, 'invalid request: "method" must be a string',
                {"reason": f"method is {method!r}"},
            ))
        params = message.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, (dict, list)):
            return encode(_error(
                reply_id, protocol.INVALID_REQUEST,
                'invalid request: "params" must be an object or an array',
                {"reason": f"params is {type(params).__name__}"},
            ))

        reply = await self._call(method, params, conn)
        if is_notification:
            return None
        reply["id"] = request_id
        try:
            return encode(reply)
        except TypeError as exc:
            _log.error("rpc.result_not_encodable", method=method, error=str(exc))
            return encode(_error(
                request_id, protocol.INTERNAL_ERROR,
                f"internal error: the result of {method} could not be encoded",
                {"method": method, "reason": str(exc)},
            ))

    async def _call(self, method: str, params: Any, conn: Connection) -> dict[str, Any]:
        handler = self._handlers.get(method)
        if handler is None:
            return _error(
                None, protocol.METHOD_NOT_FOUND, f"method not found: {method}",
                {"method": method, "available": self.methods},
            )
        if not isinstance(params, dict):
            return _error(
                None, protocol.INVALID_PARAMS,
                f"invalid params for {method}: pass params by name (an object), not an array",
                {"method": method},
            )
        try:
            result = await handler(params, conn)
        except BuildRunnerError as exc:
            return _error(None, exc.code, exc.message, exc.data)
        except msgspec.ValidationError as exc:
            return _error(
                None, protocol.INVALID_PARAMS, f"invalid params for {method}: {exc}",
                {"method": method, "reason": str(exc)},
            )
        except Exception as exc:  # noqa: BLE001 - one bad request must never stop the daemon
            _log.exception("rpc.handler_failed", method=method, conn=conn.id)
            return _error(
                None, protocol.INTERNAL_ERROR,
                f"internal error in {method}: {type(exc).__name__}: {_short(exc)}",
                {"method": method, "type": type(exc).__name__},
            )
        return {"jsonrpc": "2.0", "id": None, "result": result}


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
