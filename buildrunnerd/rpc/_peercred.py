"""Who is on the other end of a Unix socket: SO_PEERCRED (Linux), LOCAL_PEERCRED (macOS/BSD)."""

from __future__ import annotations

import socket
import struct
import sys

__all__ = ["peer_uid"]

# macOS <sys/un.h>: SOL_LOCAL = 0, LOCAL_PEERCRED = 1; the answer is a ``struct xucred``
# (u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]). Python's socket
# module has no getpeereid(), and this is exactly what libc's getpeereid() reads.
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 1
_XUCRED_SIZE = 4 + 4 + 2 + 2 + 4 * 16  # 2 bytes of padding before cr_groups


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process connected to ``sock``, or None where the OS cannot tell.

    None is treated as a refusal by the server: an unknown peer is not the owner.
    """
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None:
        # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        raw = sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", raw)
        return int(uid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED_SIZE)
        _version, uid = struct.unpack_from("=II", raw)
        return int(uid)
    return None
