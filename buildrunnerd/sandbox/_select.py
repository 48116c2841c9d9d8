"""Choosing the sandbox, proving that it confines, and the explicit ``off``.

:func:`select_sandbox` turns ``agent.sandbox`` into a working :class:`Sandbox` or raises
:class:`SandboxUnavailableError` with the fix: confinement is required, not best effort.
:func:`check_sandbox` runs probes inside it (``buildrunnerd --check-sandbox``): each says what
the confined command could not see or do.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec

from buildrunnerd.errors import SandboxError, SandboxUnavailableError
from buildrunnerd.sandbox._bwrap import BwrapSandbox
from buildrunnerd.sandbox._policy import Sandbox, SandboxPolicy, Wrapped, confined_env
from buildrunnerd.sandbox._run import run_confined
from buildrunnerd.sandbox._seatbelt import SandboxExecSandbox

__all__ = ["INSTALL_HINT", "Probe", "SandboxCheck", "Unconfined", "check_sandbox",
           "format_check", "select_sandbox"]

INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: `sudo dnf "
    "install bubblewrap`; Arch: `sudo pacman -S bubblewrap`) and make sure unprivileged user "
    "namespaces are allowed (`sysctl kernel.unprivileged_userns_clone=1`; on Ubuntu 24.04+ "
    "also an AppArmor profile for bwrap), then restart buildrunnerd. To run the model's code "
    "unconfined anyway, set agent.sandbox = \"off\" (not recommended)"
)


class Unconfined:
    """``agent.sandbox = "off"``: commands run with the daemon's rights. The environment is
    still the allowlist (no model key), and the session is still killed when they end."""

    name = "off"
    confines = False

    def wrap(self, argv: Sequence[str], policy: SandboxPolicy) -> Wrapped:
        return Wrapped(list(argv), confined_env(policy))


_selected: dict[str, Sandbox] = {}


async def _probe(sandbox: Sandbox) -> str | None:
    """None when ``sandbox`` runs a trivial command here, else what went wrong."""
    with tempfile.TemporaryDirectory(prefix="buildrunner-probe-") as folder:
        try:
            result = await run_confined(sandbox, ["/bin/sh", "-c", "exit 0"],
                                        SandboxPolicy(worktree=folder), timeout_s=20)
        except SandboxError as exc:
            return str(exc)
    if result.returncode == 0:
        return None
    said = result.output.decode("utf-8", "replace").strip()[-500:]
    return f"{sandbox.name} exited {result.returncode}: {said or '(no output)'}"


async def select_sandbox(setting: str, *, cache: bool = True) -> Sandbox:
    """The sandbox for ``agent.sandbox``, proven to work here (cached per setting).

    ``auto`` is bubblewrap on Linux and sandbox-exec on macOS; ``off`` (or its old spelling
    ``none``) is :class:`Unconfined`. Raises :class:`SandboxUnavailableError` saying why and
    how to fix it. A failure is never cached: installing bubblewrap needs no restart of the
    caller (the daemon still selects once, at start)."""
    if cache and setting in _selected:
        return _selected[setting]
    if setting in ("off", "none"):
        chosen: Sandbox = Unconfined()
    else:
        kind = setting
        if kind == "auto":
            kind = "sandbox-exec" if sys.platform == "darwin" else "bwrap"
        candidate: Sandbox
        if kind == "bwrap":
            exe = shutil.which("bwrap")
            if exe is None:
                raise SandboxUnavailableError(
                    f"no sandbox: bubblewrap (bwrap) is not installed (agent.sandbox = "
                    f"\"{setting}\"); model work is refused until it is. Fix: {INSTALL_HINT}",
                    data={"sandbox": setting, "reason": "missing"})
            if not shutil.which("prlimit"):
                raise SandboxUnavailableError(
                    "no sandbox: prlimit (util-linux) is missing, so resource limits cannot be "
                    "set; install util-linux, then restart buildrunnerd",
                    data={"sandbox": setting, "reason": "prlimit_missing"})
            candidate = BwrapSandbox(exe)
        elif kind == "sandbox-exec":
            if not await anyio.Path(SandboxExecSandbox().exe).exists():
                raise SandboxUnavailableError(
                    "no sandbox: /usr/bin/sandbox-exec is missing (it ships with macOS); "
                    "model work is refused. Set agent.sandbox = \"off\" to run unconfined",
                    data={"sandbox": setting, "reason": "missing"})
            candidate = SandboxExecSandbox()
        else:
            raise SandboxUnavailableError(f"unknown agent.sandbox {setting!r}",
                                          data={"sandbox": setting, "reason": "unknown"})
        problem = await _probe(candidate)
        if problem is not None:
            raise SandboxUnavailableError(
                f"no sandbox: {candidate.name} is installed but cannot create a sandbox here "
                f"({problem}); model work is refused. Fix: {INSTALL_HINT}",
                data={"sandbox": setting, "reason": "broken", "detail": problem})
        chosen = candidate
    if cache:
        _selected[setting] = chosen
    return chosen


class Probe(msgspec.Struct, frozen=True):
    """One thing the check tried from inside the sandbox."""

    what: str
    hidden: bool  # True: the sandbox kept it out (what we want)
    detail: str = ""


class SandboxCheck(msgspec.Struct, frozen=True):
    """The outcome of :func:`check_sandbox`."""

    sandbox: str
    confines: bool
    probes: list[Probe]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.confines and all(p.hidden for p in self.probes)


def _probe_script(targets: dict[str, str]) -> str:
    """A POSIX sh script printing ``name=seen|hidden`` per probe (sh builtins and coreutils)."""
    lines = ["#!/bin/sh"]
    for index, test in enumerate(targets.values()):
        lines.append(f"if {test}; then echo 'p{index}=seen'; else echo 'p{index}=hidden'; fi")
    return "\n".join(lines) + "\n"


async def check_sandbox(setting: str, *, state_dir: Path, socket_path: Path) -> SandboxCheck:
    """Run the probes of ``buildrunnerd --check-sandbox`` inside the sandbox."""
    try:
        sandbox = await select_sandbox(setting)
    except SandboxUnavailableError as exc:
        return SandboxCheck(sandbox=setting, confines=False, probes=[], error=str(exc))
    home = str(Path.home())
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    canary_dir = Path(tempfile.mkdtemp(prefix="buildrunner-check-"))
    canary = canary_dir / "outside.txt"
    canary.write_text("outside the worktree\n")
    secret_var = "ANTHROPIC_API_KEY"
    targets = {
        f"the home folder ({home})": f"ls -A {_sh(home)} 2>/dev/null | grep -q .",
        "~/.ssh": f"test -e {_sh(home + '/.ssh')}",
        f"the runtime dir ({runtime})": f"test -e {_sh(runtime)}",
        "/run (D-Bus, Docker and other sockets)": "ls -A /run 2>/dev/null | grep -q .",
        f"the daemon's state dir ({state_dir})": f"test -e {_sh(str(state_dir))}",
        f"the control socket ({socket_path})": f"test -e {_sh(str(socket_path))}",
        "a file outside the worktree": f"test -e {_sh(str(canary))}",
        "writing outside the worktree (/usr, /etc)":
            "touch /usr/.buildrunner-probe 2>/dev/null || touch /etc/.buildrunner-probe "
            "2>/dev/null",
        "the host's /tmp": f"test -e {_sh(str(canary_dir))}",
        f"the model key (${secret_var})": f"test -n \"${{{secret_var}:-}}\"",
        "BUILDRUNNER_* settings": "env | grep -q '^BUILDRUNNER_'",
        "the network (interfaces other than lo)":
            "test -r /proc/net/dev && tail -n +3 /proc/net/dev | grep -vq '^ *lo:'",
        "capabilities": "grep -q '^CapEff:[[:space:]]*0*[1-9a-f]' /proc/self/status",
        "the daemon's processes": f"test -e /proc/{os.getpid()}/environ",
    }
    env_marker = {secret_var: "buildrunner-check-canary"}
    worktree = Path(tempfile.mkdtemp(prefix="buildrunner-check-wt-"))
    script = worktree / "probe.sh"
    script.write_text(_probe_script(targets))
    planted = secret_var not in os.environ
    if planted:  # a key the probe must not see, even when this process has none
        os.environ.update(env_marker)
    try:
        result = await run_confined(
            sandbox, ["/bin/sh", str(script)],
            SandboxPolicy(worktree=str(worktree), hidden_paths=(str(state_dir),
                                                                 str(socket_path.parent))),
            timeout_s=30)
    finally:
        if planted:
            os.environ.pop(secret_var, None)
        await anyio.to_thread.run_sync(shutil.rmtree, worktree, True)
        await anyio.to_thread.run_sync(shutil.rmtree, canary_dir, True)
    seen = dict(line.split("=", 1) for line in
                result.output.decode("utf-8", "replace").splitlines() if "=" in line)
    probes = [Probe(name, seen.get(f"p{i}") == "hidden",
                    "" if f"p{i}" in seen else "the probe did not report")
              for i, name in enumerate(targets)]
    error = None if result.returncode == 0 else (
        f"the probe exited {result.returncode}: "
        f"{result.output.decode('utf-8', 'replace')[-300:]}")
    return SandboxCheck(sandbox=sandbox.name, confines=sandbox.confines, probes=probes,
                        error=error)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def format_check(check: SandboxCheck) -> str:
    """The text ``buildrunnerd --check-sandbox`` prints."""
    lines = [f"sandbox: {check.sandbox}" + ("" if check.confines else " (NOT CONFINED)")]
    if check.error:
        lines.append(f"error: {check.error}")
    for probe in check.probes:
        mark = "hidden " if probe.hidden else "VISIBLE"
        lines.append(f"  {mark}  {probe.what}" + (f" ({probe.detail})" if probe.detail else ""))
    if check.ok:
        lines.append("ok: model-written code is confined")
    elif not check.confines and check.error is None:
        lines.append('not confined: agent.sandbox = "off" runs model-written code with your '
                     "rights")
    else:
        lines.append("cannot confine: model work is refused until this is fixed")
    return "\n".join(lines)
