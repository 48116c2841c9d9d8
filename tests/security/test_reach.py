"""The bash tool reaching for what is outside the worktree: the user's credentials, the
runtime dir and its sockets, the control socket, the state dir (database) and another run's
worktree. Whatever it reads comes back to the model as the tool result, so a read that
worked would put a canary into an API request."""

from __future__ import annotations

from collections.abc import Callable

from tests.security._lab import Lab, account, bash, tool_results

# Connects to a Unix socket; "@name" is the abstract socket "\0name".
_CONNECT = ("python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); "
            "s.connect(sys.argv[1].replace(\"@\", \"\\0\", 1)); print(\"CONNECTED\")' "
            "{path} 2>&1 | tail -1")


async def test_bash_reaches_nothing_outside_the_worktree(
        lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(account())
    other = lab.state / "worktrees" / "r-other" / "B001"  # another run's worktree
    other.mkdir(parents=True)
    other_secret = f"other-run-secret-{lab.tag}"
    (other / "notes.txt").write_text(other_secret + "\n")
    lab.git("init", "-q", str(other))
    lab.chown(lab.state)
    home = lab.home
    reads = [
        f"cat {home}/.ssh/id_rsa {home}/.aws/credentials {home}/.config/buildrunner/env; "
        f"ls -la {home} {home}/.ssh; echo HOME-IS=$HOME",
        f"ls -la /run /run/user {lab.runtime}; echo XDG=${{XDG_RUNTIME_DIR:-unset}}; "
        + _CONNECT.format(path=lab.bus_path) + "; " + _CONNECT.format(path=lab.socket) + "; "
        + _CONNECT.format(path="@" + lab.abstract_name[1:]),
        f"ls -la {lab.state} {lab.state}/worktrees; cat {other}/notes.txt; "
        f"head -c 2000 {lab.state}/buildrunner.db | strings | head; ls {lab.socket.parent}",
        "env; cat /proc/[0-9]*/environ | tr '\\0' '\\n' | grep -i -e anthropic -e canary; "
        f"grep -r -l canary- /tmp /var /run /home /root {lab.base} 2>/dev/null | head; "
        "exec 3<>/dev/tcp/127.0.0.1/%d && echo TCP-CONNECTED" % lab.tcp_port,
    ]
    turns = [[bash(f"{r}; echo probe-done-{i}")] for i, r in enumerate(reads)]
    await lab.start(lab.responder({"app/db.py": turns}))
    run_id = await lab.submit()
    info = await lab.finish(run_id)
    assert info["state"] == "succeeded", (info, lab.stderr()[-2000:])

    shown = tool_results(lab.fake)
    for i in range(len(reads)):  # every probe ran, and the model saw what it found
        assert f"probe-done-{i}" in shown, shown[-3000:]
    assert shown.count("No such file or directory") >= 8, shown[-3000:]
    assert "HOME-IS=/tmp/home" in shown and "XDG=unset" in shown
    assert "CONNECTED" not in shown, shown[-3000:]
    assert other_secret not in shown and "SQLite" not in shown
    assert "ANTHROPIC" not in shown and "BUILDRUNNER_" not in shown
    await lab.assert_contained(run_id, secrets=(other_secret,))
    await lab.stop()


async def test_symlink_to_a_credential_reaches_nothing(lab_factory: Callable[..., Lab]) -> None:
    """The first batch commits ``app/db.py -> ~/.config/buildrunner/env``: neither the checks
    of that batch nor the prompt of the batch after it (which shows the dependency's files)
    may read through it."""
    lab = lab_factory(account(), config="[verify]\nmax_fix_attempts = 1\n")
    env_file = lab.home / ".config" / "buildrunner" / "env"
    link = (f"mkdir -p app && ln -sf {env_file} app/db.py && "
            f"ln -sf {lab.home}/.aws/credentials app/aws.py && ls -l app")
    await lab.start(lab.responder({"app/db.py": [[bash(link)]]}))
    run_id = await lab.submit()
    await lab.finish(run_id)
    await lab.assert_contained(run_id)
    await lab.stop()
