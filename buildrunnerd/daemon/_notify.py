"""The systemd side of the daemon: ``sd_notify`` and socket activation, without libsystemd.

``notify("READY=1")`` sends one datagram to ``$NOTIFY_SOCKET`` (a filesystem path, or an
abstract-namespace name written ``@name``); outside systemd the variable is unset and the call
is a cheap no-op returning False. ``listen_fds()`` returns the sockets systemd passed us
(``LISTEN_FDS``/``LISTEN_PID``, first fd 3) when ``buildrunnerd.socket`` activates the daemon.
Both are tiny syscalls, so calling them from the event loop is fine: a ``STATUS=`` line never
waits (one the service manager's full queue cannot take is dropped: the next one replaces
it), ``READY=1`` and ``STOPPING=1`` wait at most ``_STATE_TIMEOUT_S`` for room.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "ready", "stopping", "status", "listen_fds", "SD_LISTEN_FDS_START"]

SD_LISTEN_FDS_START = 3  # systemd passes activated sockets from fd 3 upwards

# How long READY=1 / STOPPING=1 wait for room in a full receive queue (systemd drains its
# socket at once; a full queue is a stalled or foreign receiver). The wait blocks the loop.
_STATE_TIMEOUT_S = 1.0


def _address(raw: str) -> str | bytes:
    # "@name" is Linux's abstract namespace: on the wire it is a leading NUL byte.
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


def notify(message: str, env: Mapping[str, str] | None = None, *,
           timeout_s: float = _STATE_TIMEOUT_S) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``, ``"STATUS=2 runs active"``) to the service manager.

    Returns True when the datagram was sent, False when ``$NOTIFY_SOCKET`` is unset or the send
    failed (never raises: a lost status line must not take the daemon down). A full receive
    queue is waited on for at most ``timeout_s`` (0: not at all, the message is dropped).
    """
    env = os.environ if env is None else env
    target = env.get("NOTIFY_SOCKET")
    if not target or not message:
        return False
    if not (target.startswith("/") or target.startswith("@")):
        return False  # vsock addresses ("vsock:...") are for VMs; not supported here
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A datagram to a live systemd socket never blocks for long; the timeout bounds the
            # pathological case of a full receive queue (a receiver that stopped reading: a
            # Unix datagram queue holds 10 by default) so the event loop is not held up.
            sock.settimeout(timeout_s)
            sock.connect(_address(target))
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def ready(status_text: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """``READY=1`` (with ``MAINPID`` so a wrapper process does not confuse systemd)."""
    lines = ["READY=1", f"MAINPID={os.getpid()}"]
    if status_text:
        lines.append(f"STATUS={status_text}")
    return notify("\n".join(lines), env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1``: shutdown has begun (systemd then waits up to TimeoutStopSec)."""
    return notify("STOPPING=1", env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """``STATUS=...``: the one-line status ``systemctl --user status`` shows. Sent on every
    run event, so it never waits: a receiver whose queue is full loses this line (the next
    one replaces it) instead of holding up the event loop for every event."""
    return notify("STATUS=" + text.replace("\n", " "), env, timeout_s=0.0)


def listen_fds(
    env: Mapping[str, str] | None = None, *, unset_environment: bool = True
) -> list[int]:
    """File descriptors passed by socket activation, or ``[]`` when there are none.

    Follows sd_listen_fds(3): only honoured when ``$LISTEN_PID`` is our pid (the variables may
    have been inherited from a parent that was activated). The descriptors are marked
    close-on-exec so the agent's subprocesses do not inherit the control socket. With
    ``unset_environment`` the variables are removed from ``os.environ`` so children do not see
    them either.
    """
    source = os.environ if env is None else env
    try:
        pid = int(source.get("LISTEN_PID", ""))
        count = int(source.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        if unset_environment and env is None:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            return []  # not a descriptor we were really given
    return fds
