"""The Claude Code launcher for real: a stand-in ``claude`` (a shell script) started through
the launcher, in the daemon's real sandbox, reports what it can see."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest

from buildrunnerd.agent._claude_cli import claude_config_dir, cli_environment
from buildrunnerd.agent._claude_launch import write_launcher
from buildrunnerd.config import Config
from buildrunnerd.sandbox import Confinement

SECRET = "sk-ant-oat01-launcher-test-secret"


def _fake_cli(folder: Path) -> Path:
    folder.mkdir()
    cli = folder / "claude"
    cli.write_text(
        "#!/bin/sh\n"
        'echo "ARGS=$*"\n'
        "env | sort\n"
        'ls -a "$HOME_OF_USER" 2>&1 | head -3 | sed "s/^/HOME_LS=/"\n'
        'ls "$STATE" 2>&1 | sed "s/^/STATE_LS=/"\n'
        'echo ok > "$CLAUDE_CONFIG_DIR/written" && echo CONFIG_WRITABLE\n'
        'echo x > "$PWD/made-in-worktree" && echo WORKTREE_WRITABLE\n')
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return cli


async def test_the_launcher_confines_the_cli_and_passes_only_what_it_needs(
    tmp_path: Path
) -> None:
    state = tmp_path / "state"
    config_dir = claude_config_dir(state)
    config_dir.mkdir(parents=True)
    (state / "buildrunner.db").write_text("the daemon's database")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    cli = _fake_cli(tmp_path / "bin")
    confinement = await Confinement.create(Config(), state_dir=state)
    if confinement.sandbox is None:
        # CI installs bubblewrap (.ci/run): there a missing sandbox is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"no sandbox in CI: {confinement.error}")
        pytest.skip(f"no sandbox here (install bubblewrap): {confinement.error}")
    env = cli_environment({"CLAUDE_CODE_OAUTH_TOKEN": SECRET, "BUILDRUNNER_SOCKET": "/x.sock",
                           "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}, config_dir)
    launcher, cleanup = await write_launcher(confinement, cli, worktree, config_dir, env,
                                             config_dir / "launch")
    script = launcher.read_text()
    run_env = {**os.environ, **env, "HOME_OF_USER": str(Path.home()), "STATE": str(state)}
    proc = await anyio.run_process([str(launcher), "-p", "--output-format", "stream-json"],
                                   env=run_env, cwd=worktree, check=False)
    await cleanup()
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "ARGS=-p --output-format stream-json" in out  # the SDK's arguments reach the CLI
    assert f"CLAUDE_CODE_OAUTH_TOKEN={SECRET}" in out  # its credential, from the environment,
    assert SECRET not in script  # never written to disk
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:9" in out
    assert f"CLAUDE_CONFIG_DIR={config_dir}" in out
    assert "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1" in out
    assert "BUILDRUNNER_" not in out and "HOME_OF_USER" not in out
    assert "CONFIG_WRITABLE" in out and (config_dir / "written").read_text() == "ok\n"
    assert "WORKTREE_WRITABLE" in out
    if confinement.sandbox.confines:
        # The state dir shows nothing but the config dir; the home is not the user's.
        assert "STATE_LS=buildrunner.db" not in out
        assert "HOME=/tmp/home" in out
    assert not launcher.exists()  # removed after the invocation
