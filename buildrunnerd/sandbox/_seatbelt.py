"""The macOS sandbox: ``sandbox-exec`` with a generated Seatbelt (SBPL) profile.

The profile denies by default, then allows: reading the system (``/usr``, ``/bin``,
``/System``, ``/Library`` less the keychains, ``/private/etc``, Homebrew and the Command Line
Tools), the toolchain paths, reading and writing the worktree (less its ``.git``) and a private
temporary folder, and running programs. The user's home is not readable (except toolchain paths
the policy names), no network unless the policy allows it, no Unix socket outside the worktree.

macOS has no mount or PID namespaces: the private ``/tmp`` is a fresh folder passed as
``TMPDIR`` and ``HOME``, and the processes of a command are killed by process group when it
ends (a process that calls ``setsid`` escapes that; see docs/security.md). Limits are set with
the shell's ``ulimit`` before the command.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence

from buildrunnerd.sandbox._policy import SandboxPolicy, Wrapped, confined_env

__all__ = ["SandboxExecSandbox", "seatbelt_profile"]

_SYSTEM_READ = ("/usr", "/bin", "/sbin", "/System", "/Library", "/private/etc",
                "/private/var/db/timezone", "/opt/homebrew", "/usr/local",
                "/Library/Developer/CommandLineTools", "/Applications/Xcode.app", "/dev")
_DENY_READ = ("/Library/Keychains", "/private/etc/ssh", "/private/etc/sudoers",
              "/private/etc/master.passwd")


def _quote(path: str) -> str:
    """An SBPL string literal: backslashes and double quotes escaped, no control characters."""
    if any(ord(ch) < 32 for ch in path):
        raise ValueError(f"path with a control character cannot go in a profile: {path!r}")
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def seatbelt_profile(policy: SandboxPolicy, *, private_tmp: str) -> str:
    """The SBPL profile text for ``policy`` (pure: unit-tested on any platform)."""
    wt = os.path.realpath(policy.worktree)
    reads = [*_SYSTEM_READ, *(os.path.realpath(os.path.expanduser(p))
                              for p in policy.readonly_paths)]
    lines = [
        "(version 1)",
        "(deny default)",
        "(allow process-fork)",
        "(allow process-exec)",
        "(allow signal (target same-sandbox))",
        "(allow sysctl-read)",
        "(allow file-read-metadata)",
        "(allow mach-lookup (global-name \"com.apple.system.opendirectoryd.libinfo\"))",
        "(allow file-read* " + " ".join(f"(subpath {_quote(p)})" for p in reads) + ")",
        f"(allow file-read* file-write* (subpath {_quote(wt)}) "
        f"(subpath {_quote(private_tmp)})"
        + "".join(f" (subpath {_quote(os.path.realpath(p))})" for p in policy.writable_paths)
        + ")",
        "(allow file-write-data (literal \"/dev/null\") (literal \"/dev/tty\"))",
        # Later rules win in SBPL: these take back what the broad allows above gave.
        "(deny file-read* " + " ".join(f"(subpath {_quote(p)})" for p in _DENY_READ) + ")",
        f"(deny file-write* (literal {_quote(wt + '/.git')}) "
        f"(subpath {_quote(wt + '/.git')}))",
    ]
    hidden = [os.path.realpath(p) for p in policy.hidden_paths if p]
    hidden = [p for p in hidden if not (wt == p or wt.startswith(p.rstrip("/") + "/"))]
    if hidden:
        lines.append("(deny file-read* file-write* "
                     + " ".join(f"(subpath {_quote(p)})" for p in hidden) + ")")
    if policy.network:
        lines += ["(allow network-outbound)", "(allow system-socket)",
                  "(allow mach-lookup (global-name \"com.apple.dnssd.service\"))"]
    else:
        lines.append("(deny network*)")
    return "\n".join(lines) + "\n"


class SandboxExecSandbox:
    """Confines commands with ``sandbox-exec -p PROFILE`` (macOS)."""

    name = "sandbox-exec"
    confines = True

    def __init__(self, exe: str | None = None) -> None:
        self.exe = exe or shutil.which("sandbox-exec") or "/usr/bin/sandbox-exec"

    def wrap(self, argv: Sequence[str], policy: SandboxPolicy) -> Wrapped:
        private_tmp = os.path.realpath(tempfile.mkdtemp(prefix="buildrunner-sbx-"))
        env = confined_env(policy)
        env.update({"HOME": private_tmp, "TMPDIR": private_tmp})
        lim = policy.limits
        ulimits = ["ulimit -c 0"]
        if lim.max_processes:
            ulimits.append(f"ulimit -u {lim.max_processes}")
        if lim.max_memory_bytes:
            ulimits.append(f"ulimit -v {lim.max_memory_bytes // 1024}")
        if lim.max_file_bytes:
            ulimits.append(f"ulimit -f {lim.max_file_bytes // 512}")  # POSIX sh: 512-byte blocks
        if lim.max_cpu_s:
            ulimits.append(f"ulimit -t {lim.max_cpu_s}")
        script = "; ".join(ulimits) + '; exec "$@"'
        profile = seatbelt_profile(policy, private_tmp=private_tmp)
        return Wrapped([self.exe, "-p", profile, "/bin/sh", "-c", script, "sh", *argv], env,
                       scratch_dirs=(private_tmp,))
