"""The one sandbox: what a confined command can and cannot see and do, for real (bubblewrap),
and the profiles it is built from (bubblewrap argv, macOS Seatbelt text)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from buildrunnerd.config import Config, SandboxConfig
from buildrunnerd.errors import SandboxUnavailableError
from buildrunnerd.sandbox import (
    BwrapSandbox,
    Confinement,
    SandboxLimits,
    SandboxPolicy,
    Unconfined,
    check_sandbox,
    open_confined,
    run_confined,
    seatbelt_profile,
    select_sandbox,
    terminate_confined,
    toolchain_paths,
)


async def pgrep(pattern: str) -> str:
    result = await anyio.run_process(["pgrep", "-f", pattern], check=False)
    return result.stdout.decode().strip()


async def survivors(pattern: str) -> str:
    """The pids still matching ``pattern`` once the kernel has torn the sandbox down (the PID
    namespace dies asynchronously, a moment after its init: poll briefly)."""
    found = ""
    for _ in range(40):
        found = await pgrep(pattern)
        if not found:
            return ""
        await anyio.sleep(0.05)
    return found


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    wt = tmp_path / "state" / "worktrees" / "run1" / "b1"
    wt.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(wt)], check=True)
    return wt


async def _run(command: str, policy: SandboxPolicy, timeout_s: float = 20) -> tuple[int, str]:
    sandbox = await select_sandbox("auto")
    result = await run_confined(sandbox, ["/bin/sh", "-c", command], policy, timeout_s=timeout_s)
    assert result.returncode is not None, "timed out"
    return result.returncode, result.output.decode("utf-8", "replace")


async def test_bubblewrap_is_selected_and_confines() -> None:
    sandbox = await select_sandbox("auto")
    assert sandbox.name == "bwrap", "bubblewrap must be installed (.ci/run installs it)"
    assert sandbox.confines


async def test_home_state_dir_and_outside_files_are_not_there(
        worktree: Path, tmp_path: Path) -> None:
    canary = tmp_path / "outside-canary.txt"
    canary.write_text("CANARY-OUTSIDE\n")
    # Digits only: a hex name could hold "b1", which the last assertion looks for.
    home_canary = Path.home() / f".buildrunner-test-{uuid.uuid4().int}"
    home_canary.write_text("CANARY-HOME\n")
    try:
        policy = SandboxPolicy(worktree=str(worktree),
                               hidden_paths=(str(tmp_path / "state"),))
        code, out = await _run(
            f"cat {canary} {home_canary} 2>&1; ls -A {Path.home()} 2>&1; ls /run 2>&1; "
            f"ls {tmp_path / 'state'} 2>&1; ls {tmp_path / 'state' / 'worktrees'} 2>&1",
            policy)
    finally:
        home_canary.unlink()
    assert "CANARY" not in out
    assert "No such file" in out
    # The state dir holds the worktree, so its path exists, but nothing else of it does.
    # (as a listed name: the canary paths above are random hex, which may hold "b1")
    assert out.count("run1") == 1 and "b1" not in out.split("run1")[0].split()


async def test_only_the_worktree_is_writable_and_dotgit_is_read_only(worktree: Path) -> None:
    code, out = await _run(
        "echo ok > inside.txt && echo inside-written; "
        "touch /usr/x /etc/x /x 2>&1; echo '[core]' >> .git/config 2>&1; "
        "rm -rf .git 2>&1; echo gone > /tmp/scratch && cat /tmp/scratch",
        SandboxPolicy(worktree=str(worktree)))
    assert "inside-written" in out and (worktree / "inside.txt").read_text() == "ok\n"
    assert out.count("Read-only file system") >= 3
    assert (worktree / ".git" / "config").read_text().count("[core]") == 1
    assert (worktree / ".git").is_dir()
    assert "gone" in out and not await anyio.Path("/tmp/scratch").exists()  # a private /tmp


async def test_a_daemon_made_folder_can_be_made_writable(worktree: Path, tmp_path: Path
                                                         ) -> None:
    # The test report's folder: outside the worktree, writable for this command only.
    report = tmp_path / "report"
    report.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    code, out = await _run(
        f"echo xml > {report}/junit.xml && echo written; touch {other}/x 2>&1; echo end",
        SandboxPolicy(worktree=str(worktree), writable_paths=(str(report),)))
    assert "written" in out and (report / "junit.xml").read_text() == "xml\n"
    assert not (other / "x").exists()
    code, out = await _run(f"touch {report}/y 2>&1; echo end",
                           SandboxPolicy(worktree=str(worktree)))
    assert not (report / "y").exists()


async def test_environment_is_an_allowlist(worktree: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-canary")
    monkeypatch.setenv("BUILDRUNNER_SOCKET", "/tmp/s.sock")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-canary")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    policy = SandboxPolicy(worktree=str(worktree),
                           env={"BUILDRUNNER_HOME": "/x", "ANTHROPIC_BASE_URL": "http://x",
                                "PROJECT": "kept"})
    code, out = await _run("env", policy)
    assert code == 0
    for banned in ("canary", "BUILDRUNNER", "ANTHROPIC", "XDG_RUNTIME_DIR"):
        assert banned not in out
    assert "PROJECT=kept" in out and "HOME=/tmp/home" in out and "PATH=" in out


async def test_no_network_no_capabilities_no_daemon_processes(worktree: Path) -> None:
    code, out = await _run(
        "tail -n +3 /proc/net/dev | cut -d: -f1; grep CapEff /proc/self/status; "
        f"test -e /proc/{os.getpid()} && echo daemon-visible; id -u",
        SandboxPolicy(worktree=str(worktree)))
    lines = out.split()
    assert lines[0] == "lo" and "daemon-visible" not in out
    assert "0000000000000000" in out
    if os.geteuid() == 0:
        assert lines[-1] == "65534"  # root outside is nobody inside, with no capability


async def test_every_process_of_the_session_dies_with_the_command(worktree: Path) -> None:
    tag = f"{uuid.uuid4().int % 10_000}.{os.getpid() % 97}"
    code, _ = await _run(f"(setsid sleep 7{tag} &) ; nohup sleep 8{tag} >/dev/null 2>&1 &"
                         " echo started", SandboxPolicy(worktree=str(worktree)))
    assert code == 0
    assert await survivors(f"sleep [78]{tag}") == "", "a process survived its sandbox"


async def test_timeout_kills_everything(worktree: Path) -> None:
    tag = f"{uuid.uuid4().int % 10_000}.{os.getpid() % 89}"
    sandbox = await select_sandbox("auto")
    result = await run_confined(sandbox, ["/bin/sh", "-c", f"sleep 9{tag} & sleep 9{tag}"],
                                SandboxPolicy(worktree=str(worktree)), timeout_s=0.5)
    assert result.timed_out and result.returncode is None
    assert await survivors(f"sleep 9{tag}") == ""


async def test_long_lived_process_is_terminated_with_its_children(worktree: Path) -> None:
    tag = f"{uuid.uuid4().int % 10_000}.{os.getpid() % 83}"
    sandbox = await select_sandbox("auto")
    proc = await open_confined(sandbox, ["/bin/sh", "-c", f"sleep 6{tag} & sleep 6{tag}"],
                               SandboxPolicy(worktree=str(worktree)))
    await anyio.sleep(0.3)
    assert await pgrep(f"sleep 6{tag}")
    await terminate_confined(proc)
    assert await survivors(f"sleep 6{tag}") == ""


async def test_limits_apply(worktree: Path) -> None:
    limits = SandboxLimits(max_file_bytes=1024 * 1024, max_memory_bytes=512 * 1024 * 1024,
                           max_cpu_s=2, max_processes=2048)
    policy = SandboxPolicy(worktree=str(worktree), limits=limits)
    code, out = await _run("head -c 3000000 /dev/zero > big.bin; echo rc=$?; "
                           "python3 -c 'b = bytearray(1024 * 1024 * 1024)' 2>&1; echo py=$?",
                           policy)
    assert (worktree / "big.bin").stat().st_size <= 1024 * 1024
    assert "rc=0" not in out
    assert "MemoryError" in out and "py=1" in out


async def test_toolchain_paths_are_visible_read_only(worktree: Path) -> None:
    venv_paths = toolchain_paths(f"{sys.executable} -m pytest")
    assert venv_paths and any(sys.prefix == p or sys.prefix.startswith(p) for p in venv_paths)
    policy = SandboxPolicy(worktree=str(worktree), readonly_paths=venv_paths)
    code, out = await _run(f"{sys.executable} -c 'import pytest; print(\"pytest ok\")'; "
                           f"touch {sys.prefix}/x 2>&1", policy)
    assert "pytest ok" in out and "Read-only file system" in out


async def test_check_sandbox_reports_everything_hidden(tmp_path: Path) -> None:
    check = await check_sandbox("auto", state_dir=tmp_path / "state",
                                socket_path=tmp_path / "run" / "d.sock")
    assert check.ok, [p for p in check.probes if not p.hidden]
    off = await check_sandbox("off", state_dir=tmp_path / "state",
                              socket_path=tmp_path / "run" / "d.sock")
    assert not off.ok and not off.confines
    assert any(not p.hidden for p in off.probes)  # the probes do tell an unconfined run


async def test_missing_bubblewrap_is_an_error_with_the_fix(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap here
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
        await select_sandbox("auto", cache=False)
    confinement = await Confinement.create(Config())  # cached: the earlier selection
    assert confinement.mode == "bwrap"


async def test_broken_bubblewrap_is_refused(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    (tmp_path / "prlimit").symlink_to("/usr/bin/prlimit")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(SandboxUnavailableError, match="cannot create a sandbox here"):
        await select_sandbox("bwrap", cache=False)


async def test_off_is_unconfined_but_keeps_the_allowlist(
        worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-canary")
    sandbox = await select_sandbox("off")
    assert isinstance(sandbox, Unconfined) and not sandbox.confines
    result = await run_confined(sandbox, ["/bin/sh", "-c", "env"],
                                SandboxPolicy(worktree=str(worktree)), timeout_s=10)
    assert b"canary" not in result.output


def test_bwrap_argv_profile(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    (wt / ".git").mkdir(parents=True)
    hidden = Path("/opt") if Path("/opt").is_dir() else tmp_path
    argv = BwrapSandbox("bwrap", prlimit="/usr/bin/prlimit").argv(
        ["bash"], SandboxPolicy(worktree=str(wt), hidden_paths=(str(hidden),),
                                limits=SandboxLimits(max_processes=64)))
    for flag in ("--unshare-all", "--cap-drop", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--share-net" not in argv
    joined = " ".join(argv)
    assert "--ro-bind / /" not in joined  # a root built from parts, not the host's root
    assert f"--bind {wt.resolve()} {wt.resolve()}" in joined
    assert f"--ro-bind {wt.resolve()}/.git {wt.resolve()}/.git" in joined
    assert joined.index(f"--bind {wt.resolve()}") < joined.index("/.git")
    assert "--nproc=64" in argv and argv[-1] == "bash"
    if hidden == Path("/opt"):
        assert argv[argv.index("/opt", argv.index("--tmpfs")) - 1] == "--tmpfs"
    net = BwrapSandbox("bwrap").argv(["true"], SandboxPolicy(worktree=str(wt), network=True))
    assert "--share-net" in net


def test_seatbelt_profile_denies_by_default(tmp_path: Path) -> None:
    wt = tmp_path / 'w"t'
    wt.mkdir()
    profile = seatbelt_profile(
        SandboxPolicy(worktree=str(wt), readonly_paths=("/opt/tool",),
                      hidden_paths=(str(tmp_path / "state"),)),
        private_tmp="/private/tmp/x")
    lines = profile.splitlines()
    assert lines[:2] == ["(version 1)", "(deny default)"]
    quoted = str(wt.resolve()).replace('"', '\\"')
    assert f'(allow file-read* file-write* (subpath "{quoted}")' in profile
    assert f'(deny file-write* (literal "{quoted}/.git")' in profile
    assert "(deny network*)" in profile and "(allow network-outbound)" not in profile
    assert '(subpath "/opt/tool")' in profile
    assert str(Path.home()) not in profile.replace("/Library/Keychains", "")
    # The .git deny comes after the worktree allow: later rules win in SBPL.
    assert profile.index("(deny file-write* (literal") > profile.index("file-write* (subpath")
    with pytest.raises(ValueError, match="control character"):
        seatbelt_profile(SandboxPolicy(worktree="/tmp/a\nb"), private_tmp="/tmp/x")
    net = seatbelt_profile(SandboxPolicy(worktree=str(wt), network=True), private_tmp="/t")
    assert "(allow network-outbound)" in net and "(deny network*)" not in net


def test_limits_from_config() -> None:
    limits = SandboxLimits.from_config(SandboxConfig(max_memory_mb=0, max_file_size_mb=2))
    assert limits.max_memory_bytes == 0 and limits.max_file_bytes == 2 * 1024 * 1024


def test_toolchain_paths_of_a_venv_and_of_version_manager_shims(tmp_path: Path) -> None:
    manager = tmp_path / "manager"
    (manager / "shims").mkdir(parents=True)
    shim = manager / "shims" / "tool"
    shim.write_text("#!/bin/sh\nexec true\n")
    shim.chmod(0o755)
    assert toolchain_paths(f"{shim} --version") == (str(manager),)
    assert toolchain_paths("tool -x", path_env=str(manager / "shims")) == (str(manager),)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).resolve().parent}\n")
    paths = toolchain_paths(f"{venv}/bin/python -m pytest")
    assert str(venv) in paths
    base = Path(sys.executable).resolve().parent.parent
    assert str(base) in paths
    assert toolchain_paths("FOO=1 make test") == () and toolchain_paths("") == ()
    assert toolchain_paths("no-such-tool-here") == ()


def test_toolchain_never_binds_the_root_or_the_home(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # /bin/sh's installation would be / (the host's whole tree, /proc and /run included),
    # ~/bin/tool's the whole home: only the program's own folder is bound, if that.
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    tool = home / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    assert "/" not in toolchain_paths("/bin/sh ./check.sh")
    assert "/" not in toolchain_paths("sh ./check.sh", "/bin:/usr/bin")
    assert toolchain_paths("tool -q", f"{home / 'bin'}:/usr/bin") == (str(home / "bin"),)
    wt = tmp_path / "wt"
    wt.mkdir()
    argv = BwrapSandbox("bwrap", prlimit="").argv(
        ["true"], SandboxPolicy(worktree=str(wt), readonly_paths=("/", str(home / "bin"))))
    assert "--ro-bind / /" not in " ".join(argv)
