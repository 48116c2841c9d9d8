"""brctl stays light: no daemon-heavy module is imported by --help or ping."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.brctl.brctl_support import Daemon, base_env, make_repo

HEAVY = ("anthropic", "aiosqlite", "watchfiles", "tiktoken", "anyio", "structlog", "httpx",
         "rich", "buildrunnerd.daemon", "buildrunnerd.store", "buildrunnerd.agent",
         "buildrunnerd.plan", "buildrunnerd.spec", "buildrunnerd.workspace", "buildrunnerd.rpc")

def _imported(stderr: str) -> list[str]:
    # `-X importtime` reports every module the process imports, one per line:
    # "import time: <self us> | <cumulative us> | <indented name>".
    return [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and not line.endswith("| imported package")]


def _run_probe(tmp_path: Path, *args: str, script: str | None = None) -> tuple[int, list[str], str]:
    # The real process, as a user starts it: `python -m brctl`, or the console script. No
    # in-process probe: brctl ends with a fast exit (os._exit) that skips atexit hooks.
    entry = [script] if script is not None else ["-m", "brctl"]
    result = subprocess.run([sys.executable, "-X", "importtime", *entry, *args],
                            env=base_env(tmp_path), capture_output=True, text=True, timeout=60,
                            check=False)
    return result.returncode, _imported(result.stderr), result.stdout


def _modules_after(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    code, modules, _ = _run_probe(tmp_path, *args)
    return code, modules


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    code, modules, help_text = _run_probe(tmp_path, "--help")
    assert code == 0
    for command in ("ping", "plan", "submit", "status", "runs", "tasks", "task", "logs", "pause",
                    "resume", "cancel", "retry", "costs", "shutdown", "export", "service",
                    "completion"):
        assert f"\n  {command} " in help_text, command
    assert "brctl._cli" in modules
    assert _heavy(modules) == []


def test_ping_against_a_real_daemon_imports_nothing_heavy(daemon: Daemon, tmp_path: Path) -> None:
    code, modules = _modules_after(tmp_path, "--socket", str(daemon.socket), "ping")
    assert code == 0
    assert "brctl._client" in modules
    assert _heavy(modules) == []


# What `--json status` (no RUN), `--json runs` and `--json ping` must not import: msgspec and
# the wire types, the text and live display, the id resolution (only a RUN or TASK argument
# needs it), the modules of the other commands (click builds only the polled ones) and
# `locale`, which click's first gettext call imports (click.Path, version_option and click's
# help option call it; brctl/_cli.py builds those with given texts). Each was imported once,
# and is kept out on purpose.
# The errors too (brctl._errors and buildrunnerd.errors under it): they are imported when one
# is raised.
_NOT_FOR_JSON_POLLING = ("locale", "brctl._output", "brctl._render", "brctl._follow",
                         "brctl._resolve", "brctl._describe", "brctl._service", "brctl._completion",
                         "brctl._cmd_submit", "brctl._cmd_inspect", "brctl._cmd_control",
                         "brctl._errors", "buildrunnerd.errors",
                         "buildrunnerd.protocol", "buildrunnerd.paths", "buildrunnerd.config")


def _unwanted_for_polling(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] == "msgspec" or m in _NOT_FOR_JSON_POLLING]


def test_json_status_imports_only_the_client(daemon: Daemon, tmp_path: Path) -> None:
    # What scripts poll: the click client and the socket client, nothing for text or display.
    for args in (["--json", "status"], ["--json", "runs"], ["--json", "ping"]):
        code, modules = _modules_after(tmp_path, "--socket", str(daemon.socket), *args)
        assert code == 0, args
        assert {"brctl._cli", "brctl._client", "click"} <= set(modules)
        unwanted = _unwanted_for_polling(modules)
        assert _heavy(modules) == [] and unwanted == [], (args, unwanted)


def test_a_run_argument_imports_the_resolution_only(daemon: Daemon, tmp_path: Path) -> None:
    with daemon.client() as client:
        runs = client.call("run.list")
    code, modules = _modules_after(tmp_path, "--socket", str(daemon.socket), "--json", "status",
                                   "r-none")
    assert (code, runs) == (1, [])  # no such run: resolved by the daemon, exit 1
    assert "brctl._resolve" in modules
    # The daemon's NOT_FOUND is a RemoteError: the errors are imported with it.
    assert _heavy(modules) == []
    assert set(_unwanted_for_polling(modules)) == {
        "brctl._resolve", "brctl._errors", "buildrunnerd.errors"}


# --- exactly what a polled command imports ------------------------------------------------------
# Beyond `import click, json, socket` (what any click client doing the round trip by hand
# imports), a polled command imports these and nothing else: a module that comes back, or a new
# one on this path, fails here. Each one costs ~0.1 ms of a ~35 ms start
# (bench/brctl_bench.py). `status` without RUN filters the runs by state, so it reads
# buildrunnerd.codes (and its package); an exact RUN and `ping` do not.
_CLIENT = {"brctl", "brctl._cli", "brctl._client"}
_EXACTLY = {
    ("--json", "ping"): _CLIENT,
    ("--json", "runs"): _CLIENT,
    ("--json", "status"): _CLIENT | {"buildrunnerd", "buildrunnerd.codes"},
}


def _console_script() -> str:
    script = shutil.which("brctl", path=str(Path(sys.executable).parent))
    assert script is not None, "no brctl console script next to the interpreter: pip install -e ."
    return script


def _floor_modules(tmp_path: Path) -> set[str]:
    # What the click floor of bench/brctl_bench.py imports.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import click, json, socket"],
        env=base_env(tmp_path), capture_output=True, text=True, timeout=60, check=True)
    return set(_imported(result.stderr))


def test_the_console_script_is_the_click_client_with_its_fast_exit(
    daemon: Daemon, tmp_path: Path
) -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["brctl"] == "brctl._cli:console_main"
    # The wrapper pip generated from it (what users run) imports no more than `python -m brctl`.
    code, modules, out = _run_probe(tmp_path, "--socket", str(daemon.socket), "--json", "ping",
                                    script=_console_script())
    assert code == 0 and '"version"' in out
    assert "brctl._cli" in modules
    assert _heavy(modules) == [] and _unwanted_for_polling(modules) == []


def test_status_of_an_exact_run_id_is_one_call_without_the_resolution(
    daemon: Daemon, tmp_path: Path
) -> None:
    # What a script polls: the id it got from submit. One run.get, no run.resolve and so no
    # brctl._resolve; a prefix still resolves (tests/brctl/test_brctl_everyday.py covers it).
    spec = "\n".join(["# Probe", "", "One feature.", "", "## Features", "", "### Probe", "",
                      "Domain: backend", "", "#### Requirements", "- [ ] `p.py` does it.", "",
                      "#### Acceptance Criteria", "- [ ] It works.", ""])
    repo = make_repo(tmp_path / "repo", {"SPEC.md": spec})
    submitted = daemon.brctl("--json", "submit", str(repo / "SPEC.md"))
    assert submitted.exit_code == 0, submitted.output
    run_id = str(json.loads(submitted.stdout)["run_id"])
    assert daemon.brctl("status", run_id, "--follow").exit_code == 0
    code, modules, out = _run_probe(tmp_path, "--socket", str(daemon.socket), "--json",
                                    "status", run_id, script=_console_script())
    assert code == 0 and json.loads(out)["id"] == run_id
    assert set(modules) - _floor_modules(tmp_path) == _CLIENT  # not even buildrunnerd.codes
    code, modules, out = _run_probe(tmp_path, "--socket", str(daemon.socket), "--json",
                                    "status", run_id[:5])
    assert code == 0 and json.loads(out)["id"] == run_id
    assert "brctl._resolve" in modules


def test_a_polled_command_imports_exactly_the_client_beyond_click(
    daemon: Daemon, tmp_path: Path
) -> None:
    floor = _floor_modules(tmp_path)
    assert {"click", "json", "socket"} <= floor and "brctl" not in floor
    for args, expected in _EXACTLY.items():
        code, modules, out = _run_probe(tmp_path, "--socket", str(daemon.socket), *args,
                                        script=_console_script())
        assert code == 0, (args, out)
        assert set(modules) - floor == expected, args


def _all_commands(
    group: click.Group, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        sub = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        yield command, sub
        if isinstance(command, click.Group):
            yield from _all_commands(command, sub)


def test_every_command_passes_clicks_own_parameter_checks() -> None:
    # brctl's commands leave out the check for repeated option names that click's get_params
    # runs on every call (brctl/_cli.py: _Command.get_params); click's own runs it here, and
    # warns (an error under this suite's filterwarnings) if an option or a name is repeated.
    from brctl._cli import main

    ctx = main.make_context("brctl", [], resilient_parsing=True)
    commands = [(main, ctx), *_all_commands(main, ctx)]
    assert len(commands) > 17
    for command, command_ctx in commands:
        params = command.get_params(command_ctx)
        assert params == click.Command.get_params(command, command_ctx), command.name
        assert params[-1].opts[-1] == "--help", command.name


def test_clicks_check_finds_a_repeated_option_on_a_brctl_command() -> None:
    # The check above can fail: a command with --json twice (the shared option and its own).
    from brctl._cli import command

    @command("probe")
    @click.option("--json", is_flag=True)
    def probe(ctx: click.Context, json: bool) -> None:
        """A probe."""

    ctx = click.Context(probe, info_name="probe")
    with pytest.warns(UserWarning, match="--json is used more than once"):
        click.Command.get_params(probe, ctx)
