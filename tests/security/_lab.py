"""The attack lab: a real ``buildrunnerd`` run as an unprivileged user, a hostile fake model,
and canaries it must not reach.

A :class:`Lab` lays out one folder owned by the daemon's user (``buildrunner-test`` when the
tests run as root, as CI does; else the current user): its HOME with a fake ``~/.ssh/id_rsa``,
``~/.aws/credentials`` and ``~/.config/buildrunner/env``, the state dir, the control socket's
folder, the user's git repository with its spec, and a runtime dir (``/run/user/<uid>`` when the
tests can create it) with a listening Unix socket, and an abstract Unix socket (as X11 and
D-Bus have). A TCP listener on 127.0.0.1 stands for the network. The daemon gets a canary
``ANTHROPIC_API_KEY`` (the fake API accepts exactly that key) and talks to the fake Messages
API through the real SDK.

:meth:`Lab.assert_contained` is what every attack test ends with: the canary is nowhere the
model or a user could see it (the requests the fake API received, the run's events, the
daemon's log, the state dir, any git object of the repository), nothing outside the worktree
changed (HOME, the user's branch, HEAD, index and working tree), nothing connected to the
listeners, no process of the batch is left, ``ping`` answers within a second and the daemon's
memory stays bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import write_spec
from tests.daemons import Daemon, Daemons
from tests.fakeapi import FakeAnthropic, FakeRequest, Reply, text, tool_use

__all__ = ["FEATURES", "TEST_USER", "Account", "Feature", "Lab", "account", "bash", "edit",
           "lab_factory", "prerequisite", "survivors", "tool_results"]

TEST_USER = "buildrunner-test"  # created by .ci/run
RUN_TIMEOUT_S = 90.0
MAX_DAEMON_RSS_KIB = 400 * 1024  # generous: a daemon at rest is well under 100 MiB
Feature = tuple[str, str, list[str], list[str]]  # write_spec's (name, domain, deps, files)
FEATURES: list[Feature] = [("Storage", "database", [], ["app/db.py"])]  # B001 code, B002 tests


def prerequisite(reason: str) -> None:
    """A missing prerequisite: a failure in CI (``CI`` set), a skip that says why elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"security tests need: {reason}")
    pytest.skip(f"{reason} (allowed outside CI only)")


@dataclass(frozen=True)
class Account:
    """Who the daemon runs as."""

    name: str
    uid: int
    gid: int

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()

    def popen(self) -> dict[str, Any]:
        """``subprocess`` arguments that start a process as this account."""
        if self.is_self:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def account(*, root: bool = False) -> Account:
    """The daemon's account: root (``root=True``, only when the tests run as root), else an
    unprivileged one able to run this interpreter. Fails in CI, skips elsewhere, otherwise."""
    if shutil.which("bwrap") is None or shutil.which("prlimit") is None:
        prerequisite("bubblewrap and prlimit installed (.ci/run installs them)")
    if root:
        if os.geteuid() != 0:
            prerequisite("running as root, for the root-daemon test")
        return Account("root", 0, 0)
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        prerequisite(f"the unprivileged user {TEST_USER} (.ci/run creates it: useradd "
                     f"--create-home {TEST_USER})")
    user = Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    probe = subprocess.run([sys.executable, "-c", "import buildrunnerd, brctl, pytest"],
                           capture_output=True, cwd="/", **user.popen())
    if probe.returncode != 0:
        prerequisite(f"{TEST_USER} able to run {sys.executable} (.ci/run grants o+x on the "
                     f"folders above it): {probe.stderr.decode(errors='replace')[-300:]}")
    return user


def bash(command: str) -> dict[str, Any]:
    return tool_use("bash", {"command": command})


def edit(path: str, file_text: str) -> dict[str, Any]:
    return tool_use("str_replace_based_edit_tool",
                    {"command": "create", "path": path, "file_text": file_text})


def tool_results(fake: FakeAnthropic | None) -> str:
    """The text of every tool result the model was shown, once each, in order."""
    assert fake is not None
    seen: dict[str, str] = {}
    for req in fake.requests:
        for message in req.messages:
            content = message.get("content")
            if message.get("role") != "user" or not isinstance(content, list):
                continue
            for block in content:
                if block.get("type") != "tool_result" or block.get("tool_use_id") in seen:
                    continue
                inner = block.get("content")
                if isinstance(inner, list):
                    inner = "\n".join(b.get("text", "") for b in inner if isinstance(b, dict))
                seen[str(block.get("tool_use_id"))] = str(inner or "")
    return "\n".join(seen.values())


def _named_files(req: FakeRequest) -> list[str]:
    import re

    return [f for line in re.findall(r"^Files: (.*)$", req.first_user_text(), re.MULTILINE)
            for f in re.findall(r"`([^`]+)`", line)]


def _tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (symlinks not followed): its kind and content hash."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = "other"
    return found


class Lab:
    """One daemon, one user repository, the canaries (see the module docstring)."""

    def __init__(self, user: Account, *, config: str = "", agent: str = "",
                 features: list[Feature] | None = None, path_env: str | None = None) -> None:
        self.user = user
        self.tag = f"{uuid.uuid4().int % 90_000 + 10_000}"  # unique in pgrep patterns
        self.key = f"canary-{uuid.uuid4().hex}"  # no sk-ant- shape: no pattern can hide a leak
        self.base = Path(tempfile.mkdtemp(prefix="brsec-", dir="/var/tmp"))
        self.base.chmod(0o755)
        self.home = self.base / "home"
        self.state = self.base / "state"
        self.socket = self.base / "run" / "d.sock"
        self.repo = self.base / "repo"
        self.markers = self.base / "markers"  # where a hook that ran would leave a file
        self.stderr_path = self.base / "daemon.stderr"
        for folder in (self.home, self.repo, self.markers):
            folder.mkdir()
        self._plant_home()
        self.runtime, self._made_runtime = self._runtime_dir()
        self.config_path = self.base / "config.toml"
        self.config_path.write_text(
            '[planner]\nplanner = "heuristic"\n'
            "[agent]\nbackoff_base_s = 0.01\nbackoff_max_s = 0.05\nbash_timeout_s = 30\n"
            + agent + config)
        self._chown(self.base)
        self.spec = self._make_repo(features or FEATURES)
        # Listeners the test owns: the sandbox must connect to neither.
        self.bus = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.bus_path = self.runtime / f"bus-{self.tag}"
        self.bus.bind(str(self.bus_path))
        os.chown(self.bus_path, user.uid, user.gid)
        self.bus.listen(8)
        self.bus.setblocking(False)
        # An abstract socket (X11 and D-Bus use them): it lives in the network namespace.
        self.abstract_name = f"\0brsec-{self.tag}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind(self.abstract_name)
        self.abstract.listen(8)
        self.abstract.setblocking(False)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.tcp.setblocking(False)
        self.tcp_port: int = self.tcp.getsockname()[1]
        self.path_env = path_env or os.environ.get("PATH", "/usr/bin:/bin")
        self.fake: FakeAnthropic | None = None
        self.daemons = Daemons(self.base, home=self.state, socket=self.socket)
        self.daemon: Daemon | None = None
        self.before: dict[str, Any] = {}

    # --- layout ---------------------------------------------------------------------------
    def _plant_home(self) -> None:
        files = {
            ".ssh/id_rsa": f"-----BEGIN OPENSSH PRIVATE KEY-----\nssh-{self.key}\n"
                           "-----END OPENSSH PRIVATE KEY-----\n",
            ".aws/credentials": f"[default]\naws_access_key_id = AKIA{self.tag}\n"
                                f"aws_secret_access_key = aws-{self.key}\n",
            ".config/buildrunner/env": f"ANTHROPIC_API_KEY={self.key}\n",
        }
        for rel, body in files.items():
            path = self.home / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            path.chmod(0o600)
        (self.home / ".ssh").chmod(0o700)

    def _runtime_dir(self) -> tuple[Path, bool]:
        """``/run/user/<uid>`` as a desktop has it (created when missing and we may), else a
        folder of the lab standing for it."""
        real = Path(f"/run/user/{self.user.uid}")
        if real.is_dir() and os.access(real, os.W_OK):
            return real, False
        if os.geteuid() == 0 and Path("/run").is_dir():
            real.parent.mkdir(mode=0o755, exist_ok=True)
            real.mkdir(mode=0o700)
            os.chown(real, self.user.uid, self.user.gid)
            return real, True
        folder = self.base / "xdg-runtime"
        folder.mkdir(mode=0o700)
        return folder, False

    def chown(self, root: Path) -> None:
        """Give ``root`` and everything in it to the daemon's user."""
        self._chown(root)

    def _chown(self, root: Path) -> None:
        if self.user.is_self:
            return
        for dirpath, dirnames, filenames in os.walk(root):
            os.chown(dirpath, self.user.uid, self.user.gid)
            for name in dirnames + filenames:
                os.chown(Path(dirpath) / name, self.user.uid, self.user.gid,
                         follow_symlinks=False)

    def env(self, **extra: str) -> dict[str, str]:
        """The daemon's environment: its HOME, the canary key, no variable of the tests."""
        env = {"PATH": self.path_env, "HOME": str(self.home), "USER": self.user.name,
               "LOGNAME": self.user.name, "LANG": "C.UTF-8",
               "XDG_RUNTIME_DIR": str(self.runtime),
               "BUILDRUNNER_HOME": str(self.state), "BUILDRUNNER_SOCKET": str(self.socket),
               "BUILDRUNNER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
               "ANTHROPIC_API_KEY": self.key}
        if self.fake is not None:
            env["ANTHROPIC_BASE_URL"] = self.fake.base_url
        env.update(extra)
        return env

    def git(self, *args: str, as_user: bool = False) -> str:
        """git on the user's repository: as its owner, or as the tests (any owner accepted)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
        argv = ["git", *args] if as_user else ["git", "-c", "safe.directory=*", *args]
        result: subprocess.CompletedProcess[bytes] = subprocess.run(
            argv, cwd=self.repo, env=env, capture_output=True, check=True,
            **(self.user.popen() if as_user else {}))
        return result.stdout.decode("utf-8", "replace")

    def _make_repo(self, features: list[Feature]) -> Path:
        spec = write_spec(self.repo / "PROJECT_SPEC.md", features)
        (self.repo / "README.md").write_text("the user's own checkout\n")
        os.chown(spec, self.user.uid, self.user.gid)
        os.chown(self.repo / "README.md", self.user.uid, self.user.gid)
        self.git("init", "-q", "-b", "main", as_user=True)
        self.git("config", "user.email", "user@example.invalid", as_user=True)
        self.git("config", "user.name", "The User", as_user=True)
        self.git("add", ".", as_user=True)
        self.git("commit", "-qm", "init", as_user=True)
        return spec

    # --- the daemon -----------------------------------------------------------------------
    async def start(self, responder: Callable[[FakeRequest], Reply]) -> None:
        """Start the fake API and the daemon (as the lab's user); return once it sent
        READY=1."""
        self.fake = FakeAnthropic(responder, api_key=self.key).start()
        self.before = self.outside_state()
        self.daemon = await self.daemons.start(
            "--config", str(self.config_path), backend="anthropic", env=self.env(),
            cwd=self.base, user=(self.user.uid, self.user.gid), stderr=self.stderr_path)

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    async def brctl(self, *args: str, timeout_s: float = 60.0
                    ) -> subprocess.CompletedProcess[bytes]:
        """``brctl --socket <lab's> ...`` as the daemon's user (the daemon refuses other
        uids)."""
        argv = [sys.executable, "-m", "brctl", "--socket", str(self.socket), *args]
        env = {"PATH": self.path_env, "HOME": str(self.home), "LANG": "C.UTF-8"}
        with anyio.fail_after(timeout_s):
            return await anyio.run_process(argv, env=env, cwd=self.base, check=False,
                                           **self.user.popen())

    async def submit(self, *, test_cmd: str = "true", workers: int = 1) -> str:
        result = await self.brctl("--json", "submit", str(self.spec), "--repo", str(self.repo),
                                  "--test-cmd", test_cmd, "--workers", str(workers))
        assert result.returncode == 0, (result.stderr.decode(), self.stderr()[-2000:])
        run_id: str = json.loads(result.stdout)["run_id"]
        return run_id

    async def finish(self, run_id: str) -> dict[str, Any]:
        """Wait for the run to end (``brctl logs --follow``); the run as ``run.get`` says."""
        await self.brctl("--json", "logs", run_id, "--follow", timeout_s=RUN_TIMEOUT_S)
        got = await self.brctl("--json", "status", run_id)
        assert got.returncode == 0, got.stderr.decode()
        info: dict[str, Any] = json.loads(got.stdout)
        return info

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        got = await self.brctl("--json", "logs", run_id)
        assert got.returncode == 0, got.stderr.decode()
        return [json.loads(line) for line in got.stdout.decode().splitlines() if line.strip()]

    async def ping(self) -> dict[str, Any]:
        """``brctl ping`` with a one-second answer timeout: the daemon is alive."""
        got = await self.brctl("--timeout-s", "1", "--json", "ping", timeout_s=20)
        assert got.returncode == 0, (got.stderr.decode(), self.stderr()[-2000:])
        result: dict[str, Any] = json.loads(got.stdout)
        return result

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    async def stop(self) -> None:
        """SIGTERM, and the daemon's exit (a daemon that does not stop fails the test)."""
        if self.daemon is not None and self.daemon.proc.poll() is None:
            await self.daemon.stop()

    def close(self) -> None:
        self.daemons.close()
        if self.fake is not None:
            self.fake.stop()
        self.bus.close()
        self.abstract.close()
        self.tcp.close()
        if self._made_runtime:
            shutil.rmtree(self.runtime, ignore_errors=True)
        else:
            self.bus_path.unlink(missing_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)

    # --- what must not change ---------------------------------------------------------------
    def outside_state(self) -> dict[str, Any]:
        """HOME, the runtime dir and the user's repository as the user would look at them."""
        git_dir = self.repo / ".git"
        return {
            "home": _tree_digest(self.home),
            "runtime": sorted(p.name for p in self.runtime.iterdir()),
            "markers": sorted(p.name for p in self.markers.iterdir()),
            "worktree": {k: v for k, v in _tree_digest(self.repo).items()
                         if not k.startswith(".git")},
            "HEAD": (git_dir / "HEAD").read_bytes(),
            "main": self.git("rev-parse", "refs/heads/main").strip(),
            "index": hashlib.sha256((git_dir / "index").read_bytes()).hexdigest(),
            "status": self.git("status", "--porcelain", "--untracked-files=all"),
            "hooks": _tree_digest(git_dir / "hooks"),
        }

    def leaks(self, found: str | bytes, where: str, secrets: tuple[str, ...] = ()
              ) -> list[str]:
        data = found.encode() if isinstance(found, str) else found
        return [where for secret in (self.key, *secrets) if secret.encode() in data][:1]

    async def assert_contained(self, run_id: str | None, *, tags: tuple[str, ...] = (),
                               secrets: tuple[str, ...] = ()) -> None:
        """Everything a blocked attack leaves as it was (see the module docstring).
        ``secrets``: more canaries (planted in the state dir) that must not reach the model
        or the logs."""
        assert self.fake is not None
        leaked: list[str] = []
        for req in self.fake.requests:
            leaked += self.leaks(req.raw, f"API request {req.index} (sent to the model)",
                                 secrets)
        if run_id is not None:
            logs = await self.brctl("--json", "logs", run_id)
            leaked += self.leaks(logs.stdout, "brctl logs --json", secrets)
        leaked += self.leaks(self.stderr(), "the daemon's log")
        leaked += self.leaks(self.git("log", "-p", "--all"), "git log -p --all")
        objects = (await anyio.run_process(
            ["git", "-c", "safe.directory=*", "cat-file", "--batch-all-objects", "--batch"],
            cwd=self.repo)).stdout
        leaked += self.leaks(objects, "a git object of the repository")
        for path in self.state.rglob("*"):
            if path.is_file() and not path.is_symlink():
                leaked += self.leaks(path.read_bytes(), f"state dir file {path.name}")
        assert leaked == [], f"the canary key reached: {leaked}"

        after = self.outside_state()
        for key, value in self.before.items():
            assert after[key] == value, f"{key} changed outside the worktree"
        for listener, what in ((self.tcp, "the TCP listener"), (self.bus, "the runtime socket"),
                               (self.abstract, "the abstract socket")):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.close()
            raise AssertionError(f"something connected to {what}")
        for tag in (rf"sleep [0-9]*{self.tag}", *tags):
            assert await survivors(tag) == "", f"a process of the batch survived ({tag})"
        assert await self.inside_worktrees() == [], "a process is still in a worktree"
        ping = await self.ping()
        assert ping["pid"] == self.pid
        assert self.rss_kib() < MAX_DAEMON_RSS_KIB

    async def inside_worktrees(self) -> list[str]:
        """Processes whose working directory is in the state dir (a worktree): none once a
        batch is over (polled briefly, as :func:`survivors`)."""
        found: list[str] = []
        for _ in range(40):
            found = []
            async for entry in anyio.Path("/proc").iterdir():
                try:
                    cwd = await anyio.Path(entry / "cwd").readlink()
                except OSError:  # not a process, gone, or not ours to see
                    continue
                if str(cwd).startswith(str(self.state)):
                    found.append(f"{entry.name}: {cwd}")
            if not found:
                return []
            await anyio.sleep(0.05)
        return found

    def responder(self, scripts: dict[str, list[list[dict[str, Any]]]]
                  ) -> Callable[[FakeRequest], Reply]:
        """The hostile model: for the batch whose first named file is a key of ``scripts``,
        those turns (each a list of tool calls) first; every batch then writes its named
        files and ends its turn."""
        def respond(req: FakeRequest) -> Reply:
            files = _named_files(req)
            turns = scripts.get(files[0] if files else "", [])
            n = req.assistant_turns()
            if n < len(turns):
                return Reply([text("Working."), *turns[n]], "tool_use")
            if n == len(turns):
                calls = [edit(f, f'"""{f}"""\n\nVALUE = 1\n') for f in files]
                return Reply([text("Writing the files."), *calls], "tool_use")
            return Reply([text("Done.")], "end_turn")

        return respond


async def survivors(pattern: str) -> str:
    """Processes still matching ``pattern`` (a PID namespace dies a moment after its init:
    poll briefly)."""
    found = ""
    for _ in range(40):
        result = await anyio.run_process(["pgrep", "-af", pattern], check=False)
        found = "\n".join(line for line in result.stdout.decode().splitlines()
                          if "pgrep" not in line)
        if not found:
            return ""
        await anyio.sleep(0.05)
    return found


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    labs: list[Lab] = []

    def make(user: Account, **kwargs: Any) -> Lab:
        lab = Lab(user, **kwargs)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()
