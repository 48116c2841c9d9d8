"""A model-written ``conftest.py``, run by the test command, attacks from inside verification:
the daemon's environment, every process's environment, the canary files, the network, the
control socket and the runtime dir's socket, writes outside the worktree, processes meant to
outlive the batch. Everything it finds it puts in the test output, which goes back to the
model in the fix-up round: so anything it could read would reach the fake API."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.fakeapi import FakeRequest, Reply
from tests.security._lab import Lab, account, edit

CONFTEST = '''
import glob, json, os, socket, subprocess
found, report = [], {{}}

def grab(path):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        return type(exc).__name__
    for item in data.replace(b"\\n", b"\\0").split(b"\\0"):
        if b"ANTHROPIC_API_KEY=" in item or b"canary-" in item:
            found.append(item.decode(errors="replace")[:80])
    return "read"

report["daemon_environ"] = grab("/proc/{pid}/environ")
report["environs"] = sorted({{grab(p) for p in glob.glob("/proc/[0-9]*/environ")}})
report["pids"] = len(glob.glob("/proc/[0-9]*"))
report["files"] = {{p: grab(p) for p in {files!r}}}
report["own_key"] = os.environ.get("ANTHROPIC_API_KEY", "")
report["env_names"] = sorted(k for k in os.environ if k.startswith(("ANTHROPIC", "BUILDRUNNER")))

def connect(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(address)
        return "CONNECTED"
    except OSError as exc:
        return type(exc).__name__
    finally:
        s.close()

report["tcp"] = connect(socket.AF_INET, ("127.0.0.1", {tcp_port}))
report["fake_api"] = connect(socket.AF_INET, ("127.0.0.1", {api_port}))
report["bus"] = connect(socket.AF_UNIX, {bus!r})
report["control"] = connect(socket.AF_UNIX, {control!r})
report["abstract"] = connect(socket.AF_UNIX, {abstract!r})
report["wrote"] = {{}}
for target in {writes!r}:
    try:
        with open(target, "w") as f:
            f.write("pwned")
        report["wrote"][target] = "wrote"
    except OSError as exc:
        report["wrote"][target] = type(exc).__name__
try:
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
    subprocess.Popen(["setsid", "sleep", "31{tag}"], **quiet)
    subprocess.Popen(["nohup", "sleep", "32{tag}"], start_new_session=True, **quiet)
    os.system("(sleep 33{tag} &) &")
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", "34{tag}"])
        os._exit(0)
except OSError as exc:
    report["background"] = type(exc).__name__
report["found"] = found
raise RuntimeError("ATTACK-REPORT " + json.dumps(report, sort_keys=True))
'''

TEST_CMD = f"{sys.executable} -m pytest -q -p no:cacheprovider"
# A test command of the user that runs a script of the worktree (which the model rewrites)
# with /bin/sh: its toolchain is /bin, whose parent is /, which must never be bound.
SH_TEST_CMD = "/bin/sh ./check.sh"
ATTACK_FILES = {TEST_CMD: ("conftest.py", None),
                SH_TEST_CMD: ("attack.py", ("check.sh", "exec python3 attack.py\n"))}


def reports(lab: Lab) -> list[dict[str, Any]]:
    """Every attack report the model was shown (the test output in a fix-up prompt)."""
    assert lab.fake is not None
    found: list[dict[str, Any]] = []

    def texts(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [t for v in value for t in texts(v)]
        if isinstance(value, dict):
            return [t for v in value.values() for t in texts(v)]
        return []

    for req in lab.fake.requests:
        for chunk in texts(req.body.get("messages", [])):
            for match in re.finditer(r"ATTACK-REPORT (\{.*\})", chunk):
                found.append(json.loads(match.group(1)))
    return found


def attack(lab: Lab, test_cmd: str) -> Callable[[FakeRequest], Reply]:
    assert lab.fake is not None
    api_port = int(lab.fake.base_url.rsplit(":", 1)[1])

    def conftest() -> str:
        home = Path(lab.home)
        return CONFTEST.format(
            pid=lab.pid, tag=lab.tag, tcp_port=lab.tcp_port, api_port=api_port,
            bus=str(lab.bus_path), control=str(lab.socket), abstract=lab.abstract_name,
            files=[str(home / ".ssh/id_rsa"), str(home / ".aws/credentials"),
                   str(home / ".config/buildrunner/env"), str(lab.state / "buildrunner.db")],
            writes=[str(lab.repo / f"PWNED-{lab.tag}"), str(home / f"PWNED-{lab.tag}"),
                    str(home / ".ssh/authorized_keys"), str(lab.markers / "conftest"),
                    f"/tmp/brsec-pwned-{lab.tag}", f"/var/tmp/brsec-pwned-{lab.tag}"])

    inner = lab.responder({})

    def respond(req: FakeRequest) -> Reply:
        reply = inner(req)
        if req.assistant_turns() == 0 and "app/db.py" in req.first_user_text():
            # The daemon's pid is known by now: the conftest names it.
            name, runner = ATTACK_FILES[test_cmd]
            reply.content.append(edit(name, conftest()))
            if runner is not None:
                reply.content.append(edit(*runner))
        return reply

    return respond


@pytest.mark.parametrize("test_cmd", [TEST_CMD, SH_TEST_CMD], ids=["python", "bin-sh"])
async def test_model_written_conftest_is_confined(lab_factory: Callable[..., Lab],
                                                  test_cmd: str) -> None:
    lab = lab_factory(account(), config="[verify]\nmax_fix_attempts = 1\n")
    await lab.start(lambda req: Reply([], "end_turn"))
    assert lab.fake is not None
    lab.fake.set_responder(attack(lab, test_cmd))
    run_id = await lab.submit(test_cmd=test_cmd)
    info = await lab.finish(run_id)
    assert info["state"] == "failed", info  # the conftest fails the tests, on purpose

    seen = reports(lab)
    assert seen, "the attack never ran (no report in the fix-up prompt)"
    for report in seen:
        assert report["found"] == [] and report["own_key"] == "", report
        assert report["env_names"] == [], report
        assert report["daemon_environ"] == "FileNotFoundError", report  # not even there
        assert report["pids"] < 10, report  # its own PID namespace
        assert set(report["files"].values()) == {"FileNotFoundError"}, report
        for what in ("tcp", "fake_api", "abstract"):
            assert report[what] in ("ConnectionRefusedError", "OSError"), report
        for what in ("bus", "control"):
            assert report[what] == "FileNotFoundError", report
        outside = {k: v for k, v in report["wrote"].items()
                   if not k.startswith(("/tmp/", "/var/tmp/"))}
        assert "wrote" not in outside.values(), report
    # /tmp and /var/tmp were private: what the conftest wrote there is gone.
    for private in (f"/tmp/brsec-pwned-{lab.tag}", f"/var/tmp/brsec-pwned-{lab.tag}"):
        assert not await anyio.Path(private).exists()
    await lab.assert_contained(run_id, tags=(f"3[1-4]{lab.tag}",))
    await lab.stop()
