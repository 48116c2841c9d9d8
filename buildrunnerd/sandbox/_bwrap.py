"""The bubblewrap sandbox (Linux).

The confined command sees a new root built from scratch rather than the host's ``/`` made
read-only: the system folders (``/usr``, ``/etc``, ``/lib*``, ``/opt``) read-only, a fresh
``/proc`` and ``/dev``, a private ``/tmp``, the toolchain paths read-only, and the worktree as
the only writable folder. So nothing else is there to read or connect to: no ``/home`` or
``/root``, no ``/run`` (``$XDG_RUNTIME_DIR``, D-Bus, the Docker socket), no ``/var``, no
``/srv``, no ``/mnt``, and no daemon state dir. Every namespace is new (no network, no other
process, no IPC); ``--cap-drop ALL`` and a user namespace when the daemon is root (so no
capability can undo a mount), ``--die-with-parent`` and ``--new-session``. Resource limits are
set by ``prlimit`` inside, just before the command.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from buildrunnerd.sandbox._policy import SANDBOX_HOME, SandboxPolicy, Wrapped, confined_env

__all__ = ["BwrapSandbox", "SYSTEM_READONLY", "SENSITIVE_FILES"]

# Bound read-only when present (a symlink, as /bin -> usr/bin is on merged-/usr systems, is
# re-created as the same symlink).
SYSTEM_READONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
                   "/opt", "/nix")

# Readable by their owner (root) only; a root daemon's sandbox still has uid 0 outside its
# user namespace, so they are covered rather than trusted to file modes.
SENSITIVE_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
                   "/etc/sudoers", "/etc/security/opasswd", "/etc/ipsec.secrets",
                   "/etc/krb5.keytab", "/etc/containers/auth.json")
_SENSITIVE_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/pki/tls/private", "/etc/sudoers.d",
                   "/etc/buildrunner", "/etc/NetworkManager/system-connections",
                   "/etc/wpa_supplicant", "/etc/wireguard", "/etc/openvpn", "/etc/ipsec.d",
                   "/etc/letsencrypt", "/etc/docker")

# The uid/gid a root daemon's commands get inside their user namespace (nobody): tools that
# refuse to run as root keep working, and no capability is left.
_ROOT_INNER_ID = "65534"


class BwrapSandbox:
    """Confines commands with ``bwrap`` (see the module docstring for the profile)."""

    name = "bwrap"
    confines = True

    def __init__(self, exe: str | None = None, *, prlimit: str | None = None) -> None:
        self.exe = exe or shutil.which("bwrap") or "bwrap"
        self.prlimit = prlimit if prlimit is not None else (shutil.which("prlimit") or "")

    def wrap(self, argv: Sequence[str], policy: SandboxPolicy) -> Wrapped:
        return Wrapped(self.argv(argv, policy), confined_env(policy))

    def argv(self, command: Sequence[str], policy: SandboxPolicy) -> list[str]:
        """The full ``bwrap ... -- [prlimit ...] command`` argv."""
        wt = os.path.realpath(policy.worktree)
        args = [self.exe, "--unshare-all"]
        if policy.network:
            args.append("--share-net")
        if os.geteuid() == 0:
            args += ["--unshare-user", "--uid", _ROOT_INNER_ID, "--gid", _ROOT_INNER_ID]
        args += ["--cap-drop", "ALL", "--die-with-parent", "--new-session"]
        for top in SYSTEM_READONLY:
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp",
                 "--dir", SANDBOX_HOME]
        # os.cpu_count() and friends read this; nothing else of /sys is needed.
        args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
        for name in SENSITIVE_FILES:
            if os.path.isfile(name):
                args += ["--ro-bind", "/dev/null", name]
        for name in _SENSITIVE_DIRS:
            if os.path.isdir(name) and not os.path.islink(name):
                args += ["--tmpfs", name]
        if policy.network:
            # /etc/resolv.conf often points into /run (systemd-resolved), which is not there.
            resolv = os.path.realpath("/etc/resolv.conf")
            if not _under_system(resolv) and os.path.isfile(resolv):
                args += ["--ro-bind", resolv, resolv]
        visible = [os.path.realpath(t) for t in SYSTEM_READONLY if os.path.exists(t)]
        for path in _ordered(policy.readonly_paths):
            # Never / itself: bound over the new root it would bring back the host's whole
            # tree (home, /run, /tmp, its /proc) on top of everything above.
            if path not in (wt, "/") and not _under(path, visible) and os.path.exists(path):
                args += ["--ro-bind", path, path]
                visible.append(path)
        # Folders to hide that a visible parent would show (a state dir under /opt or under
        # a toolchain path): an empty tmpfs over each, before the worktree is bound (which may
        # lie inside one). Never the worktree or a folder in it.
        for path in _ordered(policy.hidden_paths):
            if _under(path, visible) and os.path.isdir(path) and not _within(path, wt):
                args += ["--tmpfs", path]
        args += ["--bind", wt, wt]
        for path in _ordered(policy.writable_paths):
            if os.path.isdir(path) and not _within(path, wt):
                args += ["--bind", path, path]
        dotgit = os.path.join(wt, ".git")
        if os.path.lexists(dotgit) and not os.path.islink(dotgit):
            args += ["--ro-bind", dotgit, dotgit]
        args += ["--chdir", wt, "--", *self._limits(policy), *command]
        return args

    def _limits(self, policy: SandboxPolicy) -> list[str]:
        if not self.prlimit:
            return []
        lim = policy.limits
        out = [self.prlimit, "--core=0"]
        if lim.max_processes:
            out.append(f"--nproc={lim.max_processes}")
        if lim.max_memory_bytes:
            out.append(f"--as={lim.max_memory_bytes}")
        if lim.max_file_bytes:
            out.append(f"--fsize={lim.max_file_bytes}")
        if lim.max_cpu_s:
            out.append(f"--cpu={lim.max_cpu_s}")
        return [*out, "--"]


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _under(path: str, roots: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(_within(real, root) for root in roots)


def _under_system(path: str) -> bool:
    """Whether ``path`` is already visible (read-only) through a system folder."""
    return _under(path, [os.path.realpath(t) for t in SYSTEM_READONLY if os.path.exists(t)])


def _ordered(paths: Sequence[str]) -> list[str]:
    """Real, absolute, de-duplicated, parents before children (bwrap mounts in order)."""
    real = {os.path.realpath(os.path.expanduser(p)) for p in paths if p}
    return sorted(real, key=lambda p: (len(Path(p).parts), p))
