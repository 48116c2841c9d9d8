"""JSON-RPC 2.0 over the daemon's Unix socket: framing, dispatch, peer-uid check, notifications.

    dispatcher = Dispatcher()
    dispatcher.register("daemon.ping", ping)     # async def ping(params, conn) -> Any
    server = RpcServer(socket_path, dispatcher, max_frame_bytes=..., idle_timeout_s=...,
                       write_timeout_s=..., queue_size=...)
    await task_group.start(server.serve)         # returns once the socket is listening

The wire format is documented for users in docs/protocol.md.
"""

from buildrunnerd.rpc._connection import Connection
from buildrunnerd.rpc._dispatch import Dispatcher, Handler
from buildrunnerd.rpc._framing import FrameReader, FrameTooLargeError
from buildrunnerd.rpc._server import RpcServer, SocketInUseError

__all__ = [
    "Connection",
    "Dispatcher",
    "FrameReader",
    "FrameTooLargeError",
    "Handler",
    "RpcServer",
    "SocketInUseError",
]
