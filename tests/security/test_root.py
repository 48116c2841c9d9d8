"""A daemon run as root: the model's commands get a user namespace in which they are nobody,
with no capability, so they cannot undo the sandbox's mounts, write the read-only system or
read root's secrets. And a loop that forks without end is bounded by ``sandbox.max_processes``
(a daemon run as an unprivileged user)."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Callable

import anyio

from tests.fakeapi import FakeRequest, Reply
from tests.security._lab import TEST_USER, Lab, account, bash, prerequisite, tool_results


async def test_root_daemon_commands_have_no_capability_and_keep_the_mounts(
        lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(account(root=True))
    usr_marker = f"/usr/brsec-{lab.tag}"
    etc_marker = f"/etc/brsec-{lab.tag}"
    commands = [
        "echo uid=$(id -u) gid=$(id -g); grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status",
        "umount /usr; echo umount=$?; umount -l /etc; echo lazy=$?; "
        "mount --bind /tmp /usr; echo bind=$?; mount -o remount,rw /usr; echo remount=$?",
        f"touch {usr_marker}; echo usr=$?; touch {etc_marker}; echo etc=$?; "
        "cat /etc/shadow | wc -c; ls /root; echo root=$?",
        # A namespace of its own, as root in it: the sandbox's mounts stay locked read-only.
        f"unshare -r -m sh -c 'mount -o remount,rw /usr && touch {usr_marker} && echo INNER-RW;"
        " umount /usr && echo INNER-UMOUNT'; echo unshare=$?",
        f"kill -0 {os.getpid()} 2>&1; echo signal=$?",
    ]
    await lab.start(lab.responder({"app/db.py": [[bash(c)] for c in commands]}))
    run_id = await lab.submit()
    info = await lab.finish(run_id)
    assert info["state"] == "succeeded", (info, lab.stderr()[-2000:])
    shown = tool_results(lab.fake)
    lines = shown.splitlines()
    assert "uid=65534 gid=65534" in lines and "uid=0" not in shown, shown[:500]  # nobody
    caps = [line for line in lines if line.startswith("Cap")]
    assert len(caps) == 4 and all(line.split()[1] == "0000000000000000" for line in caps), caps
    for step in ("umount", "lazy", "bind", "remount", "usr", "etc", "root", "signal"):
        assert f"{step}=0" not in shown, (step, shown[-3000:])
    assert "INNER-RW" not in shown and "INNER-UMOUNT" not in shown, shown[-3000:]
    assert "\n0\n" in shown  # /etc/shadow reads as empty
    for marker in (usr_marker, etc_marker):
        assert not await anyio.Path(marker).exists()
    await lab.assert_contained(run_id)
    await lab.stop()


async def test_fork_loop_and_output_flood_are_bounded(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(account(), config="[sandbox]\nmax_processes = 40\n")
    fork = (
        "python3 -c 'import os, sys, time\n"
        "n = 0\n"
        "while n < 300:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as exc:\n"
        "        print(\"stopped\", type(exc).__name__); break\n"
        "    if pid == 0:\n"
        "        time.sleep(600); os._exit(0)\n"
        "    n += 1\n"
        "print(\"forked\", n)' " + f"fork-{lab.tag}"
    )
    # First output floods: 100 MB in lines, then 100 MB without a newline; the daemon keeps a
    # bounded head and tail of each.
    flood = ("yes 0123456789abcdef0123456789abcdef | head -c 100000000; "
             "head -c 100000000 /dev/zero | tr '\\0' x; echo flood-done")
    turns = [[bash(flood)], [bash(fork)], [bash("echo still-here")]]
    await lab.start(lab.responder({"app/db.py": turns}))
    run_id = await lab.submit()
    await lab.finish(run_id)
    shown = tool_results(lab.fake)
    assert "stopped BlockingIOError" in shown, shown[-2000:]
    forked = int(shown.split("forked ", 1)[1].split()[0])
    assert 0 < forked < 40, forked
    assert "still-here" in shown  # the shell still answers
    assert "flood-done" in shown and len(shown) < 1_000_000, len(shown)
    await lab.assert_contained(run_id, tags=(f"fork-{lab.tag}",))
    await lab.stop()


async def test_root_daemon_setuid_file_is_out_of_other_users_reach(
        lab_factory: Callable[..., Lab]) -> None:
    """In a root daemon's sandbox the model is root outside its namespace, so it can leave a
    setuid-root program in the worktree (nosuid holds inside the sandbox, not on the host).
    No other user can reach it: the run's worktree folder is the daemon's alone."""
    account(root=True)
    try:
        other = pwd.getpwnam(TEST_USER)
    except KeyError:
        prerequisite(f"the unprivileged user {TEST_USER} (.ci/run creates it)")
        return
    lab = lab_factory(account(root=True))
    lab.state.mkdir(mode=0o755)  # as systemd's StateDirectory= makes it: others may enter
    lab.state.chmod(0o755)
    plant = "cp /usr/bin/id rootid && chmod 4755 rootid && stat -c 'mode=%a' rootid && pwd"
    tried: list[str] = []
    inner = lab.responder({"app/db.py": [[bash(plant)], [bash("ls -l rootid")]]})

    def respond(req: FakeRequest) -> Reply:
        if req.assistant_turns() == 1 and not tried:  # the program is there, mid-batch
            found = re.search(r"^(/\S+/worktrees/\S+)$", tool_results(lab.fake), re.MULTILINE)
            assert found is not None, tool_results(lab.fake)
            try:
                result = subprocess.run([f"{found.group(1)}/rootid"], capture_output=True,
                                        user=other.pw_uid, group=other.pw_gid, extra_groups=[])
                tried.append(f"ran: {result.stdout!r} {result.stderr!r}")
            except PermissionError as exc:
                tried.append(f"refused: {exc}")
        return inner(req)

    await lab.start(respond)
    run_id = await lab.submit()
    await lab.finish(run_id)
    assert "mode=4755" in tool_results(lab.fake)  # the threat is real...
    assert tried and tried[0].startswith("refused") and "euid=0" not in tried[0], tried
    await lab.assert_contained(run_id)
    await lab.stop()
