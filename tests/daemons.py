"""The one way the tests run a real ``buildrunnerd``: spawn it, know it is ready, talk to it,
stop it.

Readiness is signalled, never polled for: every daemon gets a ``NOTIFY_SOCKET`` (a datagram
socket the harness owns) and :meth:`Daemon.wait_ready` returns when ``READY=1`` arrives, as
systemd's ``Type=notify`` does. A daemon that exits first or misses the deadline fails the test
with its stderr. The wait is on the notify socket and on a pidfd of the process together, so
an early exit is reported at once, not at the deadline.

- :class:`Daemons` starts daemons for one test (or one module): any arguments, environment,
  command (``python -m buildrunnerd`` or the console script), working directory and user;
  at teardown whatever still runs is killed.
- :class:`Daemon` is one running daemon: its stderr (collected in a file, or followed line by
  line for a test that waits on a log line), the notify lines it sent
  (:meth:`Daemon.wait_notify` waits for more, e.g. ``STOPPING=1``), its events, sync and async
  RPC, brctl, and a stop with SIGTERM that kills (and fails) when the daemon does not stop in
  time.
- The JSON-RPC clients (async and blocking) are in :mod:`tests.rpc_clients`.

Nothing here imports the project: the contract tests see BuildRunner only from outside.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from signal import SIGTERM
from typing import IO, Any, TypedDict, Unpack

import anyio
import anyio.to_thread

from tests.rpc_clients import (
    CALL_TIMEOUT_S,
    TERMINAL_EVENTS,
    RpcClient,
    RpcConnection,
    is_notification,
    rpc,
)

__all__ = [
    "BRCTL", "CLI_TIMEOUT_S", "CONSOLE_SCRIPT", "PYTHON_M", "READY_TIMEOUT_S", "STOP_TIMEOUT_S",
    "Daemon", "Daemons", "SpawnOptions", "clean_env",
]

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# How the daemon is run: as a module of the interpreter that runs the tests, or as the console
# script installed next to it (what users, scripts and systemd run).
PYTHON_M = (sys.executable, "-m", "buildrunnerd")
CONSOLE_SCRIPT = (str(Path(sys.executable).parent / "buildrunnerd"),)
BRCTL = str(Path(sys.executable).parent / "brctl")
CLI_TIMEOUT_S = 60.0
# What a daemon must not inherit from the test process: it sees only what a test gives it.
_FOREIGN_PREFIXES = ("BUILDRUNNER_", "ANTHROPIC_", "XDG_", "NOTIFY_SOCKET")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything BuildRunner, Anthropic, XDG or a
    service manager reads (no key: the simulated backend), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# --- sd_notify ---------------------------------------------------------------------------------
class _NotifyInbox:
    """The datagram socket a daemon's ``$NOTIFY_SOCKET`` names; every line it got, in order."""

    def __init__(self, path: Path, owner: tuple[int, int] | None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(str(path))
            if owner is not None:  # a daemon run as another user must be able to send
                os.chown(path, *owner)
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.lines: list[str] = []

    def drain(self) -> None:
        if self.sock.fileno() == -1:
            return  # closed: the daemon is gone, the lines are all there are
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            self.lines += data.decode("utf-8", "replace").splitlines()

    def find(self, prefix: str, start: int) -> int | None:
        self.drain()
        for index in range(start, len(self.lines)):
            if self.lines[index].startswith(prefix):
                return index
        return None

    def close(self) -> None:
        self.drain()
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _pidfd(proc: subprocess.Popen[bytes]) -> int | None:
    """A pidfd of the (unreaped) child: readable once it exits. None where Linux has none."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(proc.pid)
    except OSError:  # already reaped
        return None
    return fd


class _StderrFollower:
    """A daemon's stderr read line by line by a thread as it comes, for a test that waits on
    a log line (a reload, say, shows nowhere else)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="daemon-stderr", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in self._stream:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_lines(self, predicate: Callable[[str], bool], count: int,
                   timeout_s: float) -> list[str] | None:
        """Once at least ``count`` lines satisfy ``predicate``: all of them; None at the end
        of the stream or at ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        found: list[str] = []
        checked = 0
        with self._changed:
            while True:
                found += [line for line in self.lines[checked:] if predicate(line)]
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                if len(found) >= count:
                    return found
                if self._eof or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def close(self) -> None:
        """Once the daemon exited: the rest of what it wrote, then the pipe released (a
        descendant that kept the pipe open is not waited for past a few seconds)."""
        self._thread.join(timeout=5.0)
        self._stream.close()


def _log_record(line: str) -> dict[str, Any] | None:
    """One JSON log line, decoded; None for anything else on stderr."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


# --- one daemon --------------------------------------------------------------------------------
class Daemon:
    """A running ``buildrunnerd`` subprocess (see the module docstring)."""

    #: ``env`` is the environment the daemon was given (without the harness's
    #: ``NOTIFY_SOCKET``): start a brctl or a second daemon with it.
    def __init__(self, proc: subprocess.Popen[bytes], *, socket: Path, home: Path,
                 env: dict[str, str], argv: list[str], stderr_path: Path | None,
                 notify: _NotifyInbox) -> None:
        # stderr goes to ``stderr_path`` (exact whenever it is read), or, without one, to a
        # pipe followed line by line (``follow_stderr``).
        self.proc = proc
        self.socket = socket
        self.home = home
        self.env = env
        self.argv = argv
        self.stderr_path = stderr_path
        self._notify = notify
        self._follower: _StderrFollower | None = None
        if stderr_path is None:
            assert proc.stderr is not None
            self._follower = _StderrFollower(proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        """What the daemon wrote on stderr so far (its log)."""
        if self._follower is not None:
            return self._follower.text()
        assert self.stderr_path is not None
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_stderr(self, predicate: Callable[[str], bool], *, count: int = 1,
                    timeout_s: float = READY_TIMEOUT_S) -> list[str]:
        """For a daemon spawned with ``follow_stderr``: wait (waking on each line it writes)
        until at least ``count`` stderr lines satisfy ``predicate``; all those lines."""
        if self._follower is None:
            raise AssertionError("spawn the daemon with follow_stderr=True to wait on its log")
        found = self._follower.wait_lines(predicate, count, timeout_s)
        if found is None:
            raise self._failure(f"wrote fewer than {count} such line(s) in {timeout_s}s "
                                f"(or exited)")
        return found

    def log(self, event: str | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log records so far (``--log-format json``), those of ``event``
        only when given."""
        return [r for r in map(_log_record, self.stderr().splitlines())
                if r is not None and (event is None or r.get("event") == event)]

    def wait_log(self, event: str, *, count: int = 1,
                 timeout_s: float = READY_TIMEOUT_S) -> list[dict[str, Any]]:
        """:meth:`wait_stderr` for JSON log records of ``event``: all of them, once there are
        at least ``count`` (the only signal of what has no RPC event, such as a reload)."""
        def is_event(line: str) -> bool:
            record = _log_record(line)
            return record is not None and record.get("event") == event

        return [r for r in map(_log_record, self.wait_stderr(
            is_event, count=count, timeout_s=timeout_s)) if r is not None]

    async def logged(self, event: str, *, count: int = 1,
                     timeout_s: float = READY_TIMEOUT_S) -> list[dict[str, Any]]:
        """:meth:`wait_log` for async tests."""
        return await anyio.to_thread.run_sync(
            partial(self.wait_log, event, count=count, timeout_s=timeout_s))

    def _failure(self, what: str) -> AssertionError:
        tail = self.stderr()[-4000:]
        return AssertionError(f"buildrunnerd {what}: {' '.join(self.argv)}\n"
                              f"--- its stderr (last 4000 characters) ---\n{tail}")

    # sd_notify
    @property
    def notifications(self) -> list[str]:
        """Every ``$NOTIFY_SOCKET`` line the daemon sent so far (``READY=1``, ``STATUS=...``)."""
        self._notify.drain()
        return self._notify.lines

    def wait_notify(self, prefix: str, *, start: int = 0,
                    timeout_s: float = READY_TIMEOUT_S) -> int:
        """Wait until the daemon sends a notify line starting with ``prefix`` (at index
        ``start`` or later of :attr:`notifications`); that line's index. Fails at once when
        the daemon exits without sending it, and at ``timeout_s``."""
        inbox = self._notify
        deadline = time.monotonic() + timeout_s
        pidfd = _pidfd(self.proc)
        try:
            while True:
                found = inbox.find(prefix, start)
                if found is not None:
                    return found
                if self.proc.poll() is not None:
                    found = inbox.find(prefix, start)  # sent just before it exited
                    if found is not None:
                        return found
                    raise self._failure(f"exited ({self.proc.returncode}) before it sent "
                                        f"{prefix!r} (notify lines: {inbox.lines})")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._failure(f"sent no {prefix!r} in {timeout_s}s "
                                        f"(notify lines: {inbox.lines})")
                # Without a pidfd an exit is noticed within a fifth of a second.
                waitables = [inbox.sock.fileno()] + ([] if pidfd is None else [pidfd])
                select.select(waitables, [], [], remaining if pidfd is not None
                              else min(remaining, 0.2))
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until ``READY=1`` (the control socket is listening), sent by this very
        process (``MAINPID``), not by another daemon that answers on the same socket."""
        index = self.wait_notify("READY=1", timeout_s=timeout_s)
        assert f"MAINPID={self.pid}" in self.notifications[index:], self.notifications

    async def ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """:meth:`wait_ready` for async tests (the wait runs in a worker thread)."""
        await anyio.to_thread.run_sync(partial(self.wait_ready, timeout_s))

    # RPC
    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[RpcClient]:
        async with RpcClient.connect(self.socket) as client:
            yield client

    def connect(self, timeout_s: float = CALL_TIMEOUT_S) -> RpcConnection:
        return RpcConnection(self.socket, timeout_s)

    def rpc(self, method: str, **params: Any) -> Any:
        """A blocking call on a fresh connection; its result."""
        return rpc(self.socket, method, **params)

    def events(self, run_id: str | None, *, since: int = 0,
               timeout_s: float = 60.0) -> Iterator[dict[str, Any]]:
        """A run's events (all runs' for ``None``) through ``events.subscribe``: the stored
        ones after ``since``, then live ones as they happen; fails when ``timeout_s`` passes
        before the caller stops iterating."""
        deadline = time.monotonic() + timeout_s
        with self.connect(timeout_s) as conn:
            reply = conn.request("events.subscribe", {"run_id": run_id, "since": since})
            assert "error" not in reply, reply
            seen: list[str] = []
            while True:
                if conn.notifications:  # replayed before the subscription's reply
                    frame = conn.notifications.pop(0)
                else:
                    conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                    try:
                        frame = conn.read_frame()
                    except TimeoutError:
                        raise AssertionError(f"{timeout_s}s passed waiting on the events of "
                                             f"{run_id}; saw {seen}") from None
                if is_notification(frame):
                    event: dict[str, Any] = frame["params"]
                    seen.append(event["type"])
                    yield event

    def wait_event(self, run_id: str, types: Sequence[str] = TERMINAL_EVENTS, *,
                   since: int = 0, timeout_s: float = 60.0) -> dict[str, Any]:
        """Blocking :func:`wait_run_event`: the run's first event (replayed or live) whose
        type is in ``types``."""
        for event in self.events(run_id, since=since, timeout_s=timeout_s):
            if event["type"] in types:
                return event
        raise AssertionError("unreachable: the event stream ended")

    def brctl(self, *args: str, env: dict[str, str] | None = None,
              timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """The installed ``brctl --socket <this daemon's socket> args`` (never raises on a
        non-zero exit), with the daemon's environment unless ``env``."""
        return subprocess.run([BRCTL, "--socket", str(self.socket), *args],
                              env=self.env if env is None else env, capture_output=True,
                              text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                              check=False)

    # the process
    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_sync(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Block until the daemon exits; its exit code (fails at ``timeout_s``)."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise self._failure(f"still running after {timeout_s}s") from None

    async def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Wait for the daemon to exit; its exit code (fails at ``timeout_s``)."""
        return await anyio.to_thread.run_sync(partial(self.wait_sync, timeout_s))

    def stop_sync(self, sig: int = SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` and wait for the exit code; a daemon that does not stop in
        ``timeout_s`` is killed and the test fails."""
        self.signal(sig)
        try:
            return self.wait_sync(timeout_s)
        finally:
            self.kill()

    async def stop(self, sig: int = SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """:meth:`stop_sync` for async tests."""
        return await anyio.to_thread.run_sync(partial(self.stop_sync, sig, timeout_s))

    def kill(self) -> None:
        """SIGKILL if still running, reap it, and release its notify socket (the lines it
        sent stay in :attr:`notifications`)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._notify.close()
        if self._follower is not None:
            self._follower.close()


class SpawnOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`Daemons.spawn` (also taken by ``start``)."""

    env: dict[str, str] | None
    command: Sequence[str]
    backend: str | None
    cwd: Path | None
    user: tuple[int, int] | None
    socket: Path | None
    home: Path | None
    stderr: Path | None
    follow_stderr: bool
    name: str | None


# --- starting daemons --------------------------------------------------------------------------
class Daemons:
    """Starts daemons under ``root``; :meth:`close` kills every one still running.

    By default a daemon runs ``python -m buildrunnerd --backend simulated``, with its state in
    ``root/home`` and its socket in a short folder under ``/tmp`` (``AF_UNIX`` paths are limited
    to ~107 bytes), both given through ``BUILDRUNNER_HOME``/``BUILDRUNNER_SOCKET`` by
    :meth:`base_env`.
    """

    def __init__(self, root: Path, *, home: Path | None = None,
                 socket: Path | None = None) -> None:
        self.root = root
        self.home = home or root / "home"
        if socket is None:
            self.socket_dir = Path(f"/tmp/brt-{os.getpid()}-{id(self):x}")
            self.socket = self.socket_dir / "buildrunnerd.sock"
            self._owns_socket_dir = True
        else:
            self.socket_dir = socket.parent
            self.socket = socket
            self._owns_socket_dir = False
        self.started: list[Daemon] = []
        self._count = itertools.count(1)

    def base_env(self, **extra: str) -> dict[str, str]:
        """:func:`clean_env` with this factory's home and socket and JSON logs."""
        return clean_env(BUILDRUNNER_HOME=str(self.home), BUILDRUNNER_SOCKET=str(self.socket),
                         BUILDRUNNER_LOG_FORMAT="json", **extra)

    def spawn(self, *args: str, env: dict[str, str] | None = None,
              command: Sequence[str] = PYTHON_M, backend: str | None = "simulated",
              cwd: Path | None = None, user: tuple[int, int] | None = None,
              socket: Path | None = None, home: Path | None = None,
              stderr: Path | None = None, follow_stderr: bool = False,
              name: str | None = None) -> Daemon:
        """Start ``command [--backend backend] args`` without waiting for it.

        ``env`` defaults to :meth:`base_env`; ``user`` is ``(uid, gid)`` to run it as (the
        notify socket is given to that user); ``socket``/``home`` say where the daemon serves
        and keeps its state when ``args`` or ``env`` put them elsewhere than this factory's;
        ``stderr`` is the file to collect it in (default ``root/<name>.stderr``);
        ``follow_stderr`` reads it from a pipe instead, for :meth:`Daemon.wait_stderr`.
        """
        n = next(self._count)
        name = name or f"daemon-{n}"
        env = {k: v for k, v in (self.base_env() if env is None else env).items()
               if k != "NOTIFY_SOCKET"}
        daemon_env = dict(env)
        inbox = _NotifyInbox(self.root / f"{name}.notify", user)
        daemon_env["NOTIFY_SOCKET"] = str(inbox.path)
        argv = [*command, *(["--backend", backend] if backend else []), *args]
        stderr_path = None if follow_stderr else stderr or self.root / f"{name}.stderr"
        extra: dict[str, Any] = ({} if user is None or user[0] == os.geteuid()
                                 else {"user": user[0], "group": user[1], "extra_groups": []})
        try:
            with contextlib.ExitStack() as files:
                err = (subprocess.PIPE if stderr_path is None
                       else files.enter_context(stderr_path.open("wb")))
                proc = subprocess.Popen(argv, env=daemon_env, cwd=cwd or self.root,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=err, **extra)
        except BaseException:
            inbox.close()
            raise
        daemon = Daemon(proc, socket=socket or self.socket, home=home or self.home, env=env,
                        argv=argv, stderr_path=stderr_path, notify=inbox)
        self.started.append(daemon)
        return daemon

    def start_sync(self, *args: str, timeout_s: float = READY_TIMEOUT_S,
                   **options: Unpack[SpawnOptions]) -> Daemon:
        """:meth:`spawn`, then block until the daemon sent ``READY=1``."""
        daemon = self.spawn(*args, **options)
        try:
            daemon.wait_ready(timeout_s)
        except BaseException:
            daemon.kill()
            raise
        return daemon

    async def start(self, *args: str, timeout_s: float = READY_TIMEOUT_S,
                    **options: Unpack[SpawnOptions]) -> Daemon:
        """:meth:`spawn`, then wait until the daemon sent ``READY=1``."""
        daemon = self.spawn(*args, **options)
        try:
            await daemon.ready(timeout_s)
        except BaseException:
            daemon.kill()
            raise
        return daemon

    async def start_on_api(self, base_url: str, api_key: str, *args: str,
                           config: str | None = None, backend: str = "anthropic",
                           **env: str) -> Daemon:
        """A ready daemon whose backend calls the Messages API at ``base_url`` (the tests' fake
        API) with ``api_key``. ``config``, when given, is written to ``root/config.toml`` and
        passed with ``--config``; ``env`` adds variables to :meth:`base_env`."""
        if config is not None:
            path = self.root / "config.toml"
            path.write_text(config, encoding="utf-8")
            args = ("--config", str(path), *args)
        return await self.start(*args, backend=backend, env=self.base_env(
            ANTHROPIC_API_KEY=api_key, ANTHROPIC_BASE_URL=base_url, **env))

    def close(self) -> None:
        for daemon in self.started:
            daemon.kill()
        if self._owns_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    # The name the fixtures have always used.
    cleanup = close
