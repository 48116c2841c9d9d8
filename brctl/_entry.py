"""The ``brctl`` console script: a standard-library fast path for scripted polls, else click.

Scripts and editors poll ``brctl --json ping``, ``status [RUN]``, ``runs`` and ``tasks RUN`` in
loops, and importing click and msgspec costs more than the interpreter's own start-up. For
exactly those commands, with the global options where click accepts them (``--json`` and
``--socket PATH``/``--socket=PATH`` before or after the command name, ``--timeout-s S`` before
it), this module talks to the daemon with ``socket`` and ``json`` only and prints, byte for byte,
what the click CLI (:mod:`brctl._cli`) prints, with the same exit codes (0, 1, 3).

Everything else goes to the click CLI unchanged: another command, no ``--json``, ``--help``, an
argument or option value this parser is not sure of, and any reply it does not expect (a frame
that is not JSON, a spec error, an exception of any kind). The fast path writes nothing until it
has the whole answer, so falling back is always clean; the commands are read-only, so the click
CLI simply asks again. ``BRCTL_NO_FAST=1`` turns the fast path off (the tests use it to compare
both paths; use it to rule the fast path out when reporting a bug).

Copies kept in step with the rest of the package (tests/brctl/test_brctl_fastpath.py checks
each one): the socket path rules of :mod:`buildrunnerd.paths` (pathlib is not imported here),
the client's messages and error handling (:mod:`brctl._client`, ``_fail`` in :mod:`brctl._cli`),
msgspec's JSON layout (``msgspec.json.format(..., indent=2)``) and two protocol constants.
"""

from __future__ import annotations

# The C halves of `json` and `socket`: the Python halves import re, enum and selectors, which
# cost as much again as everything else here (the tests pin the behaviour to msgspec's).
import _json
import _socket
import os
import sys
import time

TYPE_CHECKING = False  # typing itself costs ~3 ms to import
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["main", "socket_path_str", "path_str"]

# Copies of buildrunnerd.protocol's values (that module imports msgspec).
_SPEC_INVALID = -32010
_TERMINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled"})
_EXIT_DAEMON_ERROR, _EXIT_UNREACHABLE = 1, 3
_RECEIVE_BYTES = 256 * 1024  # as brctl._client
_CONNECT_TIMEOUT_S = 5.0  # as RpcClient's default
_DEFAULT_TIMEOUT_S = 30.0  # as brctl --timeout-s's default
_COMMANDS = {"ping": (0, 0), "status": (0, 1), "runs": (0, 0), "tasks": (1, 1)}  # arg counts


class _Fallback(Exception):
    """Not sure to answer exactly as the click CLI would: let it do the job."""


class _Failure(Exception):
    """What ``brctl._cli._fail`` reports: the message, the wire code, data and exit code."""

    def __init__(self, message: str, exit_code: int, *, wire_code: int | None = None,
                 data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code
        self.wire_code, self.data = wire_code, data


def main() -> int | None:
    """Entry point of the ``brctl`` console script."""
    if os.environ.get("BRCTL_NO_FAST", "") in ("", "0"):
        code = _fast(sys.argv[1:])
        if code is not None:
            return code
    from brctl._cli import main as click_main

    click_main()  # standalone click: exits by itself
    return None


# --- paths: buildrunnerd.paths's rules on plain strings ----------------------------------------
def _split(path: str) -> tuple[str, list[str]]:
    # pathlib's POSIX parsing: exactly two leading slashes are kept, '' and '.' parts dropped.
    root = "//" if path.startswith("//") and not path.startswith("///") else \
        "/" if path.startswith("/") else ""
    return root, [part for part in path.split("/") if part and part != "."]


def _join(root: str, parts: list[str]) -> str:
    return root + "/".join(parts) if root or parts else "."


def path_str(path: str) -> str:
    """``str(pathlib.Path(path))`` without pathlib."""
    return _join(*_split(path))


def _expanded(path: str) -> tuple[str, list[str]]:
    # Path.expanduser: only a first part starting with '~' is expanded.
    root, parts = _split(path)
    if not root and parts and parts[0].startswith("~"):
        home = os.path.expanduser(parts[0])
        if home.startswith("~"):
            raise _Fallback("no home directory")  # pathlib raises RuntimeError; click shows it
        root, home_parts = _split(home)
        parts = home_parts + parts[1:]
    return root, parts


def socket_path_str(env: Mapping[str, str]) -> str:
    """``str(buildrunnerd.paths.socket_path(env))`` without pathlib."""
    if env.get("BUILDRUNNER_SOCKET"):
        return _join(*_expanded(env["BUILDRUNNER_SOCKET"]))
    if env.get("XDG_RUNTIME_DIR"):
        root, parts = _split(env["XDG_RUNTIME_DIR"])
        return _join(root, [*parts, "buildrunner", "buildrunnerd.sock"])
    if env.get("BUILDRUNNER_HOME"):
        root, parts = _expanded(env["BUILDRUNNER_HOME"])
    elif env.get("XDG_STATE_HOME"):
        root, parts = _expanded(env["XDG_STATE_HOME"])
        parts = [*parts, "buildrunner"]
    else:
        root, parts = _expanded("~")
        parts = [*parts, ".local", "state", "buildrunner"]
    return _join(root, [*parts, "buildrunnerd.sock"])


# --- arguments: the subset of brctl._cli's grammar the fast path answers ------------------------
def _parse(argv: list[str]) -> tuple[str, list[str], str | None, float] | None:
    """``(command, arguments, --socket, --timeout-s)``, or None when click should handle argv."""
    sock: str | None = None
    as_json = False
    timeout_s = _DEFAULT_TIMEOUT_S
    command: str | None = None
    args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--json":
            as_json = True
            continue
        if arg in ("--socket", "--timeout-s"):
            if i >= len(argv):
                return None
            value = argv[i]
            i += 1
        elif arg.startswith(("--socket=", "--timeout-s=")):
            arg, value = arg.split("=", 1)
        elif arg.startswith("-") or not arg:
            return None  # --help, --version, --follow, '-', '--', unknown options, ''
        elif command is None:
            command = arg
            continue
        else:
            args.append(arg)
            continue
        # An option with a value. Click would take any next word as it; be stricter.
        if not value or value.startswith("-"):
            return None
        if arg == "--socket":
            sock = value
        elif command is not None:
            return None  # --timeout-s is an option of the group only
        else:
            if not value.replace(".", "", 1).isdigit() or not value.isascii():
                return None
            timeout_s = float(value)
            if timeout_s < 0.1:
                return None  # click's usage error
    if not as_json or command not in _COMMANDS:
        return None
    least, most = _COMMANDS[command]
    if not least <= len(args) <= most:
        return None
    try:
        for word in (*args, sock or ""):
            word.encode()
    except UnicodeEncodeError:
        return None
    return command, args, sock, timeout_s


# --- the conversation: brctl._client.RpcClient's behaviour ----------------------------------------
def _unreachable(path: str, reason: str) -> _Failure:
    return _Failure(
        f"buildrunnerd is not reachable on {path} ({reason}).\n"
        "Start it with `buildrunnerd &` (or `systemctl --user start buildrunnerd` if the "
        "service is installed), or point brctl at its socket with --socket PATH or "
        "$BUILDRUNNER_SOCKET.",
        _EXIT_UNREACHABLE, data={"socket": path, "reason": reason},
    )


_INFINITIES = (float("inf"), float("-inf"))


def _parse_float(text: str) -> float:
    value = float(text)
    if value in _INFINITIES:
        raise _Fallback("msgspec rejects numbers out of range")
    return value


def _reject_constant(_name: str) -> Any:
    raise _Fallback("msgspec rejects NaN and Infinity")


class _ScanContext:
    """What ``_json.make_scanner`` reads: json.loads's defaults, stricter on numbers."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = staticmethod(_parse_float)
    parse_int = int
    parse_constant = staticmethod(_reject_constant)


_scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # duck-typed context
_JSON_SPACE = " \t\n\r"


def _loads(line: bytes) -> Any:
    """``json.loads(line)`` (the caller falls back on any error)."""
    text = line.decode().strip(_JSON_SPACE)
    value, end = _scan(text, 0)
    if end != len(text):
        raise _Fallback("extra data after the JSON value")
    return value


_encode_str = _json.encode_basestring  # json's ensure_ascii=False escaping: msgspec's too


def _request(request_id: int, method: str, params: dict[str, str] | None) -> bytes:
    """The request frame, compact JSON as msgspec writes it (params here are strings)."""
    frame = f'{{"jsonrpc":"2.0","id":{request_id},"method":{_encode_str(method)}'
    if params:
        frame += ',"params":{' + ",".join(
            f"{_encode_str(key)}:{_encode_str(value)}" for key, value in params.items()) + "}"
    return (frame + "}\n").encode()


class _Connection:
    def __init__(self, path: str, timeout_s: float) -> None:
        self.path, self.timeout_s = path, timeout_s
        self.buffer = bytearray()
        self.next_id = 0
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(_CONNECT_TIMEOUT_S)
        try:
            sock.connect(path)
        except FileNotFoundError:
            sock.close()
            raise _unreachable(path, "no socket file") from None
        except ConnectionRefusedError:
            sock.close()
            raise _unreachable(
                path, "connection refused: a stale socket, the daemon is not running") from None
        except PermissionError:
            sock.close()
            raise _unreachable(
                path, "permission denied: the daemon runs as another user") from None
        except (TimeoutError, OSError) as exc:
            sock.close()
            raise _unreachable(path, str(exc) or "timed out") from None
        self.sock = sock

    def close(self) -> None:
        self.sock.close()

    def call(self, method: str, params: dict[str, str] | None = None) -> Any:
        self.next_id += 1
        frame = _request(self.next_id, method, params)
        self.sock.settimeout(self.timeout_s)
        try:
            self.sock.sendall(frame)
        except OSError as exc:
            raise _unreachable(self.path, f"send failed: {exc}") from None
        deadline = time.monotonic() + self.timeout_s
        while True:
            message = self._read_message(deadline)
            if message is None:
                raise _Failure(
                    f"buildrunnerd did not answer {method} within {self.timeout_s:g} s; it may "
                    "be overloaded or stuck (check its log)",
                    _EXIT_DAEMON_ERROR, data={"method": method},
                )
            if "id" not in message:
                continue  # a notification: these commands subscribe to nothing
            if message.get("id") not in (self.next_id, None):
                continue
            error = message.get("error")
            if isinstance(error, dict):
                code = int(error.get("code", -32603))
                raw = error.get("data")  # as RemoteError keeps it
                data = raw if isinstance(raw, dict) else {"value": raw} if raw is not None \
                    else None
                if code == _SPEC_INVALID and data:
                    raise _Fallback("click formats spec errors")
                raise _Failure(str(error.get("message", "error")), _EXIT_DAEMON_ERROR,
                               wire_code=code, data=data or None)
            if message.get("id") is None:
                continue
            return message.get("result")

    def _read_message(self, deadline: float) -> dict[str, Any] | None:
        while True:
            newline = self.buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self.buffer[:newline])
                del self.buffer[: newline + 1]
                if not line.strip():
                    continue
                if b"\\ud" in line or b"\\uD" in line:
                    raise _Fallback("msgspec and json differ on lone surrogates")
                message = _loads(line)
                if isinstance(message, list):
                    continue
                if not isinstance(message, dict):
                    raise _Fallback("the client treats this as a timeout")
                return message
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return None
            self.sock.settimeout(remaining_s)
            try:
                chunk = self.sock.recv(_RECEIVE_BYTES)
            except TimeoutError:
                return None
            except OSError as exc:
                raise _unreachable(self.path, f"receive failed: {exc}") from None
            if not chunk:
                raise _unreachable(self.path, "the daemon closed the connection")
            self.buffer += chunk


# --- the commands: brctl._cli's, --json only ------------------------------------------------
def _as_list(result: Any, key: str) -> list[Any]:
    if isinstance(result, dict):
        result = result.get(key, [])
    return list(result or [])


def _run_with_tasks(conn: _Connection, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = conn.call("run.get", {"run_id": run_id})
    if run.get("tasks") is None:
        run["tasks"] = _as_list(conn.call("task.list", {"run_id": run_id}), "tasks")
    return run


def _answer(conn: _Connection, command: str, args: list[str]) -> Any:
    if command == "ping":
        return conn.call("daemon.ping")
    if command == "runs":
        return _as_list(conn.call("run.list"), "runs")
    if command == "tasks":
        run = _run_with_tasks(conn, args[0])  # run.get already carries the tasks
        tasks = _as_list(run["tasks"], "tasks")
        return {"id": run.get("id", args[0]), "run_id": run.get("id", args[0]),
                "state": run.get("state"), "tasks": tasks}
    if args:
        return _run_with_tasks(conn, args[0])
    runs = _as_list(conn.call("run.list"), "runs")
    run_ids = [str(r["id"]) for r in runs if r.get("state") not in _TERMINAL_RUN_STATES]
    return [_run_with_tasks(conn, run_id) for run_id in run_ids]


# --- output: msgspec.json.format(msgspec.json.encode(value), indent=2) ------------------------


def _float(value: float) -> str:
    text = float.__repr__(value)
    if "e" not in text and "n" not in text:
        return text  # repr and msgspec agree outside scientific notation
    if value != value or value in _INFINITIES:
        raise _Fallback("msgspec writes null for NaN and infinities")
    # msgspec: shortest digits (as repr), fixed notation for exponents -5..15, else d.ddde-7.
    mantissa, exponent = text.split("e")
    sign = "-" if mantissa.startswith("-") else ""
    digits = mantissa.lstrip("-").replace(".", "")
    exp10 = int(exponent)
    if exp10 == -5:
        return f"{sign}0.0000{digits.rstrip('0')}"
    if len(digits) > 1:
        return f"{sign}{digits[0]}.{digits[1:]}e{exp10}"
    return f"{sign}{digits}e{exp10}"


_CONSTANTS = {None: "null", True: "true", False: "false"}


def _scalar(value: Any) -> str | None:
    """A leaf's JSON text, or None for a container."""
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        return _float(value)
    if value is None or kind is bool:
        return _CONSTANTS[value]
    if kind is dict or kind is list:
        return None
    raise _Fallback(f"unexpected {kind.__name__}")


def _dump(value: Any, out: list[str], indent: str) -> None:
    # Leaves are written inline (no call per leaf): a 500-task status is mostly leaves.
    leaf = _scalar(value)
    if leaf is not None:
        out.append(leaf)
        return
    if not value:
        out.append("{}" if type(value) is dict else "[]")
        return
    inner = indent + "  "
    separator = ",\n" + inner
    if type(value) is dict:
        out.append("{\n" + inner)
        first = True
        for key, item in value.items():
            leaf = _scalar(item)
            head = _encode_str(key) + ": " if first else separator + _encode_str(key) + ": "
            first = False
            if leaf is not None:
                out.append(head + leaf)
            else:
                out.append(head)
                _dump(item, out, inner)
        out.append("\n" + indent + "}")
    else:
        out.append("[\n" + inner)
        first = True
        for item in value:
            leaf = _scalar(item)
            if not first:
                out.append(separator)
            first = False
            if leaf is not None:
                out.append(leaf)
            else:
                _dump(item, out, inner)
        out.append("\n" + indent + "]")


def format_json(value: Any) -> str:
    """``msgspec.json.format(msgspec.json.encode(value), indent=2).decode()`` for JSON values."""
    out: list[str] = []
    _dump(value, out, "")
    return "".join(out)


# --- the fast path ----------------------------------------------------------------------
def _utf8(stream: Any) -> bool:
    encoding = str(getattr(stream, "encoding", "") or "").lower().replace("-", "").replace("_", "")
    return encoding == "utf8"


def _fast(argv: list[str]) -> int | None:
    """Answer ``argv`` as the click CLI would and return the exit code, or None: use click."""
    parsed = _parse(argv)
    if parsed is None or not _utf8(sys.stdout) or not _utf8(sys.stderr):
        return None
    command, args, sock, timeout_s = parsed
    err = ""
    try:
        path = path_str(sock) if sock is not None else socket_path_str(os.environ)
        try:
            conn = _Connection(path, timeout_s)
            try:
                result = _answer(conn, command, args)
            finally:
                conn.close()
            out, code = format_json(result), 0
        except _Failure as exc:
            prefix = "" if exc.exit_code == _EXIT_UNREACHABLE else "error: "
            err = prefix + exc.message
            out, code = format_json({"error": {
                "code": exc.wire_code, "message": exc.message, "data": exc.data,
                "exit_code": exc.exit_code}}), exc.exit_code
        # click.echo strips ANSI sequences when not writing to a terminal: leave that to it.
        if "\x1b" in err or "\x1b" in out:
            return None
        out.encode(), err.encode()  # what stdout cannot encode, click reports its own way
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception:
        return None  # _Fallback, or anything unexpected: the click CLI reproduces it
    try:
        if err:
            sys.stderr.write(err + "\n")
            sys.stderr.flush()
        sys.stdout.write(out + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # As brctl._cli: a reader that went away is not an error (click's own handler exits 1
        # when it happens while reporting an error). Silence the interpreter's final flush.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0 if code == 0 else 1
    return code
