"""brctl stays light: no daemon-heavy module is imported by --help or ping."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
_NOT_FOR_JSON_POLLING = ("locale", "brctl._output", "brctl._render", "brctl._follow",
                         "brctl._resolve", "brctl._describe", "brctl._service", "brctl._completion",
                         "brctl._cmd_submit", "brctl._cmd_inspect", "brctl._cmd_control",
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
    assert _heavy(modules) == [] and _unwanted_for_polling(modules) == ["brctl._resolve"]


def test_the_console_script_is_the_click_client_with_its_fast_exit(
    daemon: Daemon, tmp_path: Path
) -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["brctl"] == "brctl._cli:console_main"
    # The wrapper pip generated from it (what users run) imports no more than `python -m brctl`.
    script = shutil.which("brctl", path=str(Path(sys.executable).parent))
    assert script is not None, "no brctl console script next to the interpreter: pip install -e ."
    code, modules, out = _run_probe(tmp_path, "--socket", str(daemon.socket), "--json", "ping",
                                    script=script)
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
                                    "status", run_id)
    assert code == 0 and json.loads(out)["id"] == run_id
    assert _heavy(modules) == [] and _unwanted_for_polling(modules) == []
    code, modules, out = _run_probe(tmp_path, "--socket", str(daemon.socket), "--json",
                                    "status", run_id[:5])
    assert code == 0 and json.loads(out)["id"] == run_id
    assert "brctl._resolve" in modules
