"""The daemon process: one anyio root task group that owns everything it runs.

``run_daemon(options)`` resolves paths and configuration, refuses to start next to a live
daemon, opens the store, recovers unfinished runs, then runs the RPC server, the scheduler (and
the batches it dispatches), the signal watcher and the retention pass in one task group until
SIGTERM/SIGINT or ``daemon.shutdown``:

1. stop dispatching and refuse new runs;
2. give in-flight batches ``daemon.grace_period_s`` to finish, then cancel them (their
   attempts are marked interrupted; the next start re-queues their batches);
3. stop the server (the socket file is removed), close the store, exit 0.

SIGHUP reloads the configuration (keys that size start-up structures need a restart; the log
says which).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import msgspec
import structlog

from buildrunnerd import __version__, paths
from buildrunnerd.config import Config
from buildrunnerd.errors import BuildRunnerError, ConfigError
from buildrunnerd.executor import Executor, SimulatedExecutor
from buildrunnerd.sandbox import Confinement, Unconfined

__all__ = ["DaemonOptions", "run_daemon", "DB_FILENAME"]

_log = structlog.get_logger("buildrunnerd")

DB_FILENAME = "buildrunner.db"
_LOCK_FILENAME = "buildrunnerd.lock"
_PROBE_TIMEOUT_S = 2.0
_RETENTION_MIN_INTERVAL_S = 1.0
_SHUTDOWN_REPLY_S = 2.0


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """The command line of ``buildrunnerd`` (None: use the environment / config / default)."""

    socket_path: Path | None = None
    home: Path | None = None
    config_file: Path | None = None
    backend: str | None = None
    workers: int | None = None
    log_format: str | None = None
    check_config: bool = False


def run_daemon(options: DaemonOptions) -> int:
    """Run the daemon in the foreground; return the process exit code (0 after a clean stop)."""
    if options.check_config:
        from buildrunnerd.config._load import check_config_main

        return check_config_main(options.config_file)
    try:
        return anyio.run(_with_pidfd_reaper, _Daemon(options).main)
    except KeyboardInterrupt:  # SIGINT before the signal watcher was installed
        return 0


async def _with_pidfd_reaper(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main`` with the event loop reaping its children through pidfds, as Python 3.12+
    does by default where the kernel has them: 3.11's default starts a thread per child
    process to wait for it, and the daemon starts ~20 (git, bubblewrap) a batch."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return await main()
    import asyncio

    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel older than 5.3, or a seccomp filter that forbids it
        return await main()
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    try:
        return await main()
    finally:
        watcher.close()  # the loop ends with main; this process starts nothing after it


async def _warm_tokenizer() -> float:
    """Load the token counter's encoding now, in a worker thread, and return how long it
    took (ms): every planning and prompt counts tokens, and the first count loads the
    bundled encoding (~0.1 s of CPU), which would otherwise fall on the first ``run.submit``,
    inside the time to its first batch."""
    from buildrunnerd.prompt import default_counter

    started = time.perf_counter()
    await anyio.to_thread.run_sync(default_counter().count, "warm up")
    return round((time.perf_counter() - started) * 1000, 1)


def _import_run_modules() -> None:
    # Imported on the first use otherwise: by the first run.submit, before its run is stored.
    import buildrunnerd.spec
    import buildrunnerd.workspace  # noqa: F401


async def _warm_run_modules() -> float:
    """Import what every run needs (the workspace: git, verification, the file monitor;
    ~60 ms) now, in a worker thread, and return how long it took (ms): otherwise the first
    ``run.submit`` of a daemon pays it before its run is stored, and its first batch later."""
    started = time.perf_counter()
    await anyio.to_thread.run_sync(_import_run_modules)
    return round((time.perf_counter() - started) * 1000, 1)


async def probe_daemon(socket: Path, timeout_s: float = _PROBE_TIMEOUT_S) -> int | None:
    """The pid of a daemon answering ``daemon.ping`` on ``socket``, else None."""
    with anyio.move_on_after(timeout_s):
        try:
            stream = await anyio.connect_unix(socket)
        except OSError:
            return None
        async with stream:
            await stream.send(b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping"}\n')
            buffer = b""
            while not buffer.endswith(b"\n"):
                try:
                    buffer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
        try:
            reply = msgspec.json.decode(buffer.strip() or b"{}")
            return int(reply["result"]["pid"])
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            return -1  # something answers, but not a daemon we understand
    return -1  # connected but silent: a live listener with a full backlog


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[IO[str] | None]:
    """An exclusive lock on the state dir: one daemon per database, whatever the socket."""
    handle = open(home / _LOCK_FILENAME, "a+", encoding="utf-8")  # noqa: SIM115
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            yield None
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield handle
    finally:
        handle.close()


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The backend the daemon runs with, why, and (claude-code) the CLI it found."""

    name: str
    reason: str
    cli: Any = None  # agent.ClaudeCli for claude-code


async def choose_backend(options: DaemonOptions, config: Config, env: dict[str, str],
                         home: Path) -> BackendChoice:
    """``--backend`` or ``daemon.backend``; ``auto``: anthropic with an API key, else
    claude-code when a logged-in Claude Code CLI is found, else simulated. Raises
    :class:`~buildrunnerd.errors.AgentError` (with the fix) when claude-code is asked for
    and the CLI is missing or logged out."""
    choice = options.backend or config.daemon.backend
    origin = "--backend" if options.backend else "daemon.backend in the config"
    if choice == "claude-code":
        from buildrunnerd.agent import probe_claude_cli

        cli = await probe_claude_cli(env, home, require=True)
        assert cli is not None  # require=True raises instead
        return BackendChoice("claude-code", f"{origin} = claude-code; {cli.describe()}", cli)
    if choice != "auto":
        return BackendChoice(choice, f"{origin} = {choice}")
    if env.get("ANTHROPIC_API_KEY"):
        return BackendChoice("anthropic", "auto: ANTHROPIC_API_KEY is set")
    from buildrunnerd.agent import probe_claude_cli

    cli = await probe_claude_cli(env, home)
    if cli is not None and cli.logged_in:
        return BackendChoice("claude-code", f"auto: no ANTHROPIC_API_KEY; {cli.describe()}",
                             cli)
    found = (f"{cli.describe()} (log in: docs/claude-code.md)" if cli is not None
             else "no Claude Code CLI found")
    return BackendChoice("simulated", f"auto: no ANTHROPIC_API_KEY and {found}")


def _make_executor(backend: BackendChoice, config: Config, socket: Path, home: Path,
                   confinement: Confinement, env: dict[str, str]) -> Executor:
    if backend.name == "simulated":
        return SimulatedExecutor.from_env()
    if backend.name == "claude-code":
        from buildrunnerd.agent import ClaudeCodeExecutor

        claude: Executor = ClaudeCodeExecutor(config, backend.cli, env=env, home=home,
                                              confinement=confinement)
        return claude
    from buildrunnerd.agent import AnthropicExecutor

    # The socket (wherever --socket put it) and the state dir are hidden from the model's
    # shell by the confinement; its environment is the sandbox's allowlist (no API key).
    executor: Executor = AnthropicExecutor(config, socket_path=socket, state_dir=home,
                                           confinement=confinement)
    return executor


def _log_confinement(confinement: Confinement) -> None:
    if confinement.sandbox is None:
        _log.error("sandbox.unavailable", error=confinement.error,
                   message="no working sandbox: runs are refused (and recovered runs paused) "
                           "until one works; see `buildrunnerd --check-sandbox`")
    elif not confinement.sandbox.confines:
        _log.warning("sandbox.off",
                     message="agent.sandbox = \"off\": the model's commands, the tests and "
                             "the checks run UNCONFINED, with the daemon's rights, network and "
                             "files")
    else:
        _log.info("sandbox.ready", sandbox=confinement.mode)


def _first_error(exc: BaseException) -> Exception | None:
    """The first ordinary exception in ``exc`` (unwrapping task-group exception groups)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_error(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, Exception) else None


def _err(message: str) -> None:
    print(f"buildrunnerd: {message}", file=sys.stderr, flush=True)


class _Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.env = dict(os.environ)
        if options.home is not None:
            # --home also moves the default socket (contract: $BUILDRUNNER_HOME/...sock).
            self.env["BUILDRUNNER_HOME"] = str(options.home)
        self.home = paths.state_home(self.env).resolve()
        self.socket = (options.socket_path or paths.socket_path(self.env)).absolute()
        self.config_file = options.config_file or paths.config_path(self.env)
        self.stop = anyio.Event()
        self.started = time.monotonic()
        self.config: Config = Config()
        self._tg: anyio.abc.TaskGroup | None = None
        self.listen_socket: socket.socket | None = None  # from systemd socket activation

    def request_stop(self, conn: Any = None) -> None:
        """Stop gracefully. From ``daemon.shutdown``: once the caller has its answer (it closes
        the connection) or after ``_SHUTDOWN_REPLY_S``, so the reply is never cut off."""
        if conn is None or self._tg is None:
            self.stop.set()
            return

        async def after_reply() -> None:
            with anyio.move_on_after(_SHUTDOWN_REPLY_S):
                await conn.closed.wait()
            self.stop.set()

        self._tg.start_soon(after_reply)

    async def main(self) -> int:
        from buildrunnerd.config import load_config
        from buildrunnerd.logging import configure_logging

        try:
            self.config = load_config(self.config_file, self.env)
        except ConfigError as exc:
            _err(f"invalid configuration: {exc}")
            return 1
        configure_logging(self.options.log_format or self.config.daemon.log_format,
                          self.config.daemon.log_level)
        try:
            self._take_activated_socket()
        except ConfigError as exc:
            _err(str(exc))
            return 1
        # An activated socket is ours already: probing it would wait on ourselves.
        pid = None if self.listen_socket is not None else await probe_daemon(self.socket)
        if pid is not None:
            who = f"pid {pid}" if pid > 0 else "something else answers there"
            _err(f"already running ({who}) on {self.socket}; stop it first (brctl shutdown) "
                 "or use another --socket")
            return 1
        try:
            await anyio.Path(self.home).mkdir(parents=True, exist_ok=True, mode=0o700)
            if not await anyio.Path(self.home).is_dir():
                raise NotADirectoryError(20, "not a directory")
        except OSError as exc:
            _err(f"cannot use the state dir {self.home}: {exc.strerror or exc}; choose another "
                 "with --home or $BUILDRUNNER_HOME")
            return 1
        with _home_lock(self.home) as lock:
            if lock is None:
                owner = (self.home / _LOCK_FILENAME).read_text(encoding="utf-8").strip() or "?"
                _err(f"already running (pid {owner}) with state dir {self.home}; stop it first "
                     "(brctl shutdown) or use another --home")
                return 1
            try:
                return await self._serve()
            except (Exception, BaseExceptionGroup) as exc:
                error = _first_error(exc)
                if error is None:
                    raise
                if isinstance(error, BuildRunnerError):
                    _err(str(error))
                else:  # a bug: keep the traceback in the log, a short line on stderr
                    _log.error("daemon.crashed", exc_info=error)
                    _err(f"internal error: {type(error).__name__}: {error}")
                return 1

    def _take_activated_socket(self) -> None:
        """systemd socket activation (``buildrunnerd.socket``): serve the socket it passed
        (``LISTEN_FDS``), whose path wins over ``--socket``; the variables are not passed on
        to the agents or hooks."""
        from buildrunnerd.daemon._notify import listen_fds

        fds = listen_fds()
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            self.env.pop(name, None)
        if not fds:
            return
        sock = socket.socket(fileno=fds[0])
        for extra in fds[1:]:
            os.close(extra)  # one control socket is all we serve
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            raise ConfigError("the socket passed by systemd is not a Unix stream socket; use "
                              "ListenStream=%t/buildrunner/buildrunnerd.sock in the .socket unit")
        path = sock.getsockname()
        if isinstance(path, str) and path and Path(path) != self.socket:
            if self.options.socket_path is not None:
                _log.warning("socket.activation_overrides", socket=path,
                             ignored=str(self.socket))
            self.socket = Path(path)
        # The contract's 0600 also for a socket made by a launcher that did not set it
        # (SocketMode=0600 in buildrunnerd.socket does); peer uids are checked regardless.
        with contextlib.suppress(OSError):
            os.chmod(self.socket, 0o600)
        self.listen_socket = sock

    async def _serve(self) -> int:
        from buildrunnerd.daemon import _notify
        from buildrunnerd.daemon._events import EventBus
        from buildrunnerd.daemon._hooks import RunEndHooks
        from buildrunnerd.daemon._methods import DaemonMethods
        from buildrunnerd.daemon._runs import RunManager
        from buildrunnerd.rpc import Dispatcher, RpcServer, SocketInUseError
        from buildrunnerd.store import Store

        config = self.config
        choice = await choose_backend(self.options, config, self.env, self.home)
        backend = choice.name
        workers = self.options.workers or config.daemon.workers
        confinement = await Confinement.create(config, state_dir=self.home,
                                               socket_path=self.socket)
        if confinement.sandbox is None and backend == "simulated":
            # No model output to confine: the stand-in writes the files, so a machine without
            # bubblewrap can still run the demo. Model backends are refused instead.
            _log.warning("sandbox.unavailable_simulated", error=confinement.error,
                         message="no working sandbox; the simulated backend runs its checks "
                                 "unconfined (model backends would be refused)")
            confinement = dataclasses.replace(confinement, sandbox=Unconfined())
        else:
            _log_confinement(confinement)
        executor = _make_executor(choice, config, self.socket, self.home, confinement,
                                  self.env)
        _log.info("backend.chosen", backend=backend, reason=choice.reason)
        if backend == "simulated":
            _log.warning("backend.simulated",
                         message="SIMULATED backend: no model is called; batches write "
                                 "placeholder files (set ANTHROPIC_API_KEY, or log in to "
                                 "Claude Code, for Claude)",
                         ms_per_minute=getattr(executor, "ms_per_minute", 0))
        elif backend == "anthropic" and not (self.env.get("ANTHROPIC_API_KEY")
                                             or self.env.get("ANTHROPIC_AUTH_TOKEN")):
            _log.warning("backend.no_api_key",
                         message="backend anthropic without ANTHROPIC_API_KEY: every batch "
                                 "will fail to authenticate; set the key or use --backend "
                                 "simulated")
        bus = EventBus(buffer_limit=config.daemon.subscriber_queue_size)
        store = await Store.open(self.home / DB_FILENAME, on_event=bus.publish)
        try:
            runs = RunManager(store=store, executor=executor, config=config, home=self.home,
                              workers=workers, confinement=confinement)
            methods = DaemonMethods(
                runs=runs, store=store, bus=bus, backend=backend, socket=self.socket,
                sandbox=confinement.mode, sandbox_detail=confinement.error or "",
                home=self.home, request_shutdown=self.request_stop,
                started_monotonic=self.started, backend_reason=choice.reason,
            )
            dispatcher = Dispatcher()
            methods.register(dispatcher)

            def report_status(event: Any) -> None:
                # systemctl status shows the latest STATUS= line: keep it about runs.
                if event.type.startswith("run."):
                    _notify.status(f"{runs.active_runs} active run(s); "
                                   f"{runs.scheduler.in_flight} batch(es) in flight")

            bus.add_listener(report_status)

            async def finished_run(run_id: str) -> Any:
                record = await store.get_run(run_id)
                counts = (await store.task_counts([run_id])).get(run_id, {})
                return record.to_info(tasks_by_state=counts)

            # The hook is the operator's command, but it needs no API key: not in its env.
            hook_env = {k: v for k, v in self.env.items() if not k.startswith("ANTHROPIC_")}
            hooks = RunEndHooks(config=lambda: self.config, run_info=finished_run, env=hook_env)
            bus.add_listener(hooks.on_event)
            server = RpcServer(
                self.socket, dispatcher, max_frame_bytes=config.daemon.max_frame_bytes,
                idle_timeout_s=config.daemon.client_idle_timeout_s,
                write_timeout_s=config.daemon.write_timeout_s,
                queue_size=config.daemon.subscriber_queue_size,
                listen_socket=self.listen_socket,
            )
            exit_code = 0
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    tg.start_soon(self._watch_signals, runs)
                    await tg.start(runs.scheduler.run)
                    await tg.start(runs.serve)
                    await tg.start(hooks.serve)
                    recovered = await runs.recover()
                    tokenizer_ms = await _warm_tokenizer()
                    modules_ms = await _warm_run_modules()
                    await tg.start(server.serve)
                    tg.start_soon(self._retention, store)
                    tg.start_soon(runs.run_timers)
                    _log.info("daemon.ready", version=__version__, pid=os.getpid(),
                              socket=str(self.socket), home=str(self.home), backend=backend,
                              simulated=backend == "simulated", workers=workers,
                              sandbox=confinement.mode, backend_reason=choice.reason,
                              recovered_runs=recovered, tokenizer_load_ms=tokenizer_ms,
                              modules_load_ms=modules_ms)
                    _notify.ready(f"serving on {self.socket}; backend {backend}; "
                                  f"{recovered} run(s) resumed")
                    await self.stop.wait()
                    methods.stopping = True
                    _notify.stopping()
                    _notify.status("stopping: letting in-flight batches finish")
                    _log.info("daemon.stopping", in_flight=runs.scheduler.in_flight,
                              grace_period_s=config.daemon.grace_period_s)
                    await runs.shutdown(config.daemon.grace_period_s)
                    tg.cancel_scope.cancel()
            except* SocketInUseError as group:
                _err(str(group.exceptions[0]))
                exit_code = 1
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()
                with anyio.move_on_after(10.0):
                    await executor.aclose()
        _log.info("daemon.stopped", exit_code=exit_code)
        return exit_code

    async def _watch_signals(self, runs: Any) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    self._reload(runs)
                elif self.stop.is_set():
                    # A second SIGTERM/SIGINT: do not wait out the grace period.
                    _log.info("daemon.stop_now", signal=signal.Signals(signum).name)
                    runs.scheduler.cancel_in_flight()
                else:
                    _log.info("daemon.signal", signal=signal.Signals(signum).name)
                    self.stop.set()

    def _reload(self, runs: Any) -> None:
        from buildrunnerd.config import load_config
        from buildrunnerd.config._load import reloadable_diff
        from buildrunnerd.logging import configure_logging

        try:
            new = load_config(self.config_file, self.env)
        except ConfigError as exc:
            _log.error("config.reload_failed", error=str(exc), hint="the old configuration stays")
            return
        applied, needs_restart = reloadable_diff(self.config, new)
        self.config = new
        runs.config = new
        if self.options.workers is None and new.daemon.workers != runs.scheduler.workers:
            runs.scheduler.workers = new.daemon.workers
            runs.scheduler.wake()
        configure_logging(self.options.log_format or new.daemon.log_format, new.daemon.log_level)
        _log.info("config.reloaded", applied=applied, needs_restart=needs_restart)

    async def _retention(self, store: Any) -> None:
        # Read at start-up; later passes re-read the (possibly reloaded) configuration.
        await anyio.sleep(self.config.retention.first_pass_delay_s)
        while True:
            retention = self.config.retention
            now = datetime.now(UTC)
            try:
                removed = await store.prune(
                    older_than=now - timedelta(days=retention.events_days),
                    api_calls_older_than=now - timedelta(days=retention.api_calls_days),
                )
                await store.vacuum()
                _log.info("retention.done", **removed)
            except BuildRunnerError as exc:
                _log.error("retention.failed", error=str(exc))
            # Validation keeps the interval positive; the floor only stops a busy loop.
            await anyio.sleep(max(_RETENTION_MIN_INTERVAL_S,
                                  retention.vacuum_interval_hours * 3600.0))
