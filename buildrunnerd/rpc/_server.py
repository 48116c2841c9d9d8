"""The control socket: a Unix socket server speaking newline-delimited JSON-RPC 2.0."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus

from buildrunnerd import protocol
from buildrunnerd.errors import BuildRunnerError
from buildrunnerd.rpc._connection import Connection
from buildrunnerd.rpc._dispatch import Dispatcher, error_frame
from buildrunnerd.rpc._framing import FrameReader, FrameTooLargeError
from buildrunnerd.rpc._peercred import peer_uid

__all__ = ["RpcServer", "SocketInUseError"]

_log = structlog.get_logger("buildrunnerd.rpc")
_RECEIVE_BYTES = 64 * 1024


class SocketInUseError(BuildRunnerError):
    """The socket path is taken: a live daemon answers on it, or it is not a socket at all."""


class RpcServer:
    """Serves a :class:`Dispatcher` on a Unix socket.

    ``await task_group.start(server.serve)`` returns once the socket is listening. The socket's
    folder is created 0700 and the socket is 0600; a connection from another uid is refused with
    an UNAUTHORIZED error. A stale socket file (nothing answers on it) is replaced; a live one
    makes :meth:`serve` raise :class:`SocketInUseError`. The socket file is removed on exit.

    Per connection: frames are handled in order; a connection silent for ``idle_timeout_s`` is
    closed (unless it subscribed to notifications); a frame over ``max_frame_bytes`` gets a
    FRAME_TOO_LARGE error and the connection is closed; a client that does not read its replies
    or notifications within ``write_timeout_s``, or lets ``queue_size`` notifications pile up, is
    dropped. None of it affects other connections.
    """

    def __init__(
        self,
        socket_path: Path | str,
        dispatcher: Dispatcher,
        *,
        max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES,
        idle_timeout_s: float = 600.0,
        write_timeout_s: float = 10.0,
        queue_size: int = 1000,
        probe_timeout_s: float = 2.0,
        listen_socket: socket.socket | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        #: A socket bound and listening already (systemd socket activation): served as it is,
        #: and its file is left in place at exit (the service manager owns it).
        self.listen_socket = listen_socket
        self.dispatcher = dispatcher
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout_s = idle_timeout_s
        self.write_timeout_s = write_timeout_s
        self.queue_size = queue_size
        self.probe_timeout_s = probe_timeout_s
        self.connections: set[Connection] = set()
        self._owner_uid = os.getuid()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled. Signals readiness through ``task_status`` once listening."""
        listener: SocketListener
        inode: int | None = None
        if self.listen_socket is not None:
            listener = await SocketListener.from_socket(self.listen_socket)
            _log.info("rpc.listening", socket=str(self.socket_path), activated=True)
        else:
            await self._prepare_path()
            listener = await anyio.create_unix_listener(self.socket_path, mode=0o600)
            inode = os.stat(self.socket_path).st_ino
            _log.info("rpc.listening", socket=str(self.socket_path))
        try:
            async with listener, anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        # Out of file descriptors and the like: back off instead of spinning,
                        # the connections already open keep being served.
                        _log.warning("rpc.accept_failed", error=str(exc))
                        await anyio.sleep(0.1)
                        continue
                    tg.start_soon(self._serve_connection, stream)
        finally:
            if inode is not None:
                self._remove_socket(inode)

    async def _prepare_path(self) -> None:
        folder = self.socket_path.parent
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
            os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
        elif folder.stat().st_mode & 0o077:
            # Not ours to chmod (it may be /tmp): the socket's own 0600 and the uid check hold.
            _log.warning("rpc.socket_folder_open", folder=str(folder),
                         hint="use a folder only you can open, e.g. $XDG_RUNTIME_DIR/buildrunner")
        try:
            mode = self.socket_path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise SocketInUseError(
                f"{self.socket_path} exists and is not a socket; remove it or choose another "
                "path with --socket",
                data={"socket": str(self.socket_path)},
            )
        if await self._answers():
            raise SocketInUseError(
                f"another buildrunnerd is already listening on {self.socket_path}; stop it "
                "first (brctl shutdown) or use another --socket",
                data={"socket": str(self.socket_path)},
            )
        _log.info("rpc.stale_socket_replaced", socket=str(self.socket_path))
        self.socket_path.unlink(missing_ok=True)

    async def _answers(self) -> bool:
        with anyio.move_on_after(self.probe_timeout_s):
            try:
                stream = await anyio.connect_unix(self.socket_path)
            except OSError:
                return False  # ECONNREFUSED: a socket file left behind by a crash
            await stream.aclose()
            return True
        return True  # connect() hanging means a listener with a full backlog: alive

    def _remove_socket(self, inode: int) -> None:
        # Only our own socket: if someone replaced the file meanwhile, it is not ours to delete.
        try:
            if os.stat(self.socket_path).st_ino == inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass

    async def _serve_connection(self, stream: SocketStream) -> None:
        try:
            async with stream:
                raw = stream.extra(SocketAttribute.raw_socket)
                uid = _peer_uid_or_none(raw)
                if uid != self._owner_uid:
                    await self._refuse(stream, uid)
                    return
                conn = Connection(
                    peer_uid=uid, queue_size=self.queue_size, write_timeout_s=self.write_timeout_s
                )
                self.connections.add(conn)
                refused = False
                try:
                    async with anyio.create_task_group() as tg:
                        conn._bind(tg.cancel_scope)
                        tg.start_soon(conn.write_loop, stream)
                        refused = await self._read_loop(conn, stream)
                        conn.finish_sending()  # flush what is queued, then the writer stops
                    if refused:
                        await _linger(stream)
                finally:
                    self.connections.discard(conn)
                    conn._dispose()
        except Exception:  # noqa: BLE001 - a broken connection must not take the server down
            _log.exception("rpc.connection_failed")

    async def _refuse(self, stream: SocketStream, uid: int | None) -> None:
        _log.warning("rpc.unauthorized_peer", uid=uid, owner_uid=self._owner_uid)
        frame = error_frame(
            protocol.UNAUTHORIZED,
            f"connection refused: uid {uid} is not the owner of this daemon (uid "
            f"{self._owner_uid}); run brctl as the user who runs buildrunnerd",
            {"uid": uid},
        )
        with anyio.move_on_after(self.write_timeout_s):
            try:
                await stream.send(frame + b"\n")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
        await _linger(stream)

    async def _read_loop(self, conn: Connection, stream: SocketStream) -> bool:
        """Read and dispatch frames until the client is done; True if its last frame was refused
        (the error reply must then reach it before the connection closes)."""
        reader = FrameReader(self.max_frame_bytes)
        while True:
            data = b""
            with anyio.move_on_after(self.idle_timeout_s):
                try:
                    data = await stream.receive(_RECEIVE_BYTES)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return False  # the client is gone or done: flush replies, then close
            if not data:
                if conn.is_subscriber:
                    continue
                conn.close(f"idle for {self.idle_timeout_s} s")
                return False
            try:
                frames = reader.feed(data)
            except FrameTooLargeError as exc:
                await conn.send_frame(error_frame(exc.code, exc.message, exc.data))
                _log.warning("rpc.frame_too_large", conn=conn.id, limit_bytes=exc.limit_bytes)
                return True
            for frame in frames:
                reply = await self.dispatcher.handle_frame(frame, conn)
                if reply is not None:
                    await conn.send_frame(reply)


async def _linger(stream: SocketStream, *, linger_s: float = 1.0) -> None:
    """Half-close, then discard what the client still sends for a moment before closing.

    Closing a socket with unread input makes the kernel send a reset, and the client may then
    lose our error reply before reading it (ECONNRESET); this lets the reply arrive intact.
    Bounded by time only: discarding is cheap, and a client mid-way through a huge frame
    should still get to read why it was refused.
    """
    with anyio.move_on_after(linger_s):
        try:
            await stream.send_eof()
            while True:
                await stream.receive(_RECEIVE_BYTES)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError):
            pass


def _peer_uid_or_none(raw: socket.socket) -> int | None:
    try:
        return peer_uid(raw)
    except OSError:
        return None
