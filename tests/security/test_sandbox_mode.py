"""Confinement is required: ``agent.sandbox = "off"`` is said at start and in ``ping``; with
no working sandbox (no bubblewrap on the daemon's PATH) model work is refused with the fix,
and ``ping`` says so."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable

import anyio

from tests.fakeapi import Reply, text
from tests.security._lab import Lab, account


def _idle(_req: object) -> Reply:
    return Reply([text("nothing to do")], "end_turn")


async def test_sandbox_off_is_logged_and_shown_in_ping(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(account(), agent='sandbox = "off"\n')
    await lab.start(_idle)
    ping = await lab.ping()
    assert ping["sandbox"] == "off", ping
    logged = [json.loads(line) for line in lab.stderr().splitlines() if line.startswith("{")]
    off = [entry for entry in logged if entry.get("event") == "sandbox.off"]
    assert off and off[0]["level"] == "warning", lab.stderr()[-2000:]
    assert "unconfined" in json.dumps(off[0]) or "rights" in json.dumps(off[0]), off[0]
    human = await lab.brctl("ping")
    assert b"off" in human.stdout, human.stdout
    await lab.stop()


async def test_no_sandbox_refuses_model_work_with_the_fix(
        lab_factory: Callable[..., Lab]) -> None:
    user = account()
    # The daemon's PATH has git and the usual tools, but no bubblewrap.
    lab = lab_factory(user, path_env="")
    tools = lab.base / "bin"
    tools.mkdir()
    for name in ("git", "prlimit", "sh"):
        found = shutil.which(name)
        assert found is not None
        (tools / name).symlink_to(found)
    lab.chown(tools)
    lab.path_env = str(tools)
    await lab.start(_idle)
    ping = await lab.ping()
    assert ping["sandbox"] == "unavailable", ping
    refused = await lab.brctl("submit", str(lab.spec), "--repo", str(lab.repo))
    said = refused.stderr.decode()
    assert refused.returncode == 1, (refused.returncode, said)
    assert "apt-get install bubblewrap" in said and "agent.sandbox" in said, said
    runs = await lab.brctl("--json", "runs")
    assert json.loads(runs.stdout) in ([], {"runs": []}), runs.stdout  # nothing was started
    assert lab.fake is not None and lab.fake.requests == []  # nothing was asked of the model
    assert lab.git("branch", "--list", "buildrunner/*").strip() == ""
    # --check-sandbox says the same, and exits 1.
    check = await anyio.run_process([sys.executable, "-m", "buildrunnerd", "--check-sandbox"],
                                    env=lab.env(), cwd=lab.base, check=False, **user.popen())
    assert check.returncode == 1 and b"bubblewrap" in check.stdout, check.stdout
    await lab.stop()
