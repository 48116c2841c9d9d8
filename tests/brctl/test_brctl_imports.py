"""brctl stays light: no daemon-heavy module is imported by --help or ping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.brctl.brctl_support import Daemon, base_env

HEAVY = ("anthropic", "aiosqlite", "watchfiles", "tiktoken", "anyio", "structlog", "httpx",
         "rich", "buildrunnerd.daemon", "buildrunnerd.store", "buildrunnerd.agent",
         "buildrunnerd.plan", "buildrunnerd.spec", "buildrunnerd.workspace", "buildrunnerd.rpc")

_PROBE = r"""
import json, runpy, sys
sys.argv = ["brctl", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("brctl", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _run_probe(tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    result = subprocess.run([sys.executable, "-c", _PROBE, *args], env=base_env(tmp_path),
                            capture_output=True, text=True, timeout=60, check=False)
    *output, last = result.stdout.strip().splitlines()
    report = json.loads(last)
    return report["code"], report["modules"], "\n".join(output)


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


def test_json_status_imports_only_the_client(daemon: Daemon, tmp_path: Path) -> None:
    # What scripts poll: the click client and the socket client, nothing for text or display.
    for args in (["--json", "status"], ["--json", "runs"], ["--json", "ping"]):
        code, modules = _modules_after(tmp_path, "--socket", str(daemon.socket), *args)
        assert code == 0, args
        assert {"brctl._cli", "brctl._client", "click"} <= set(modules)
        unwanted = [m for m in modules if m.split(".")[0] == "msgspec"
                    or m in ("brctl._output", "brctl._render", "brctl._follow",
                             "buildrunnerd.protocol")]
        assert _heavy(modules) == [] and unwanted == [], (args, unwanted)


def test_the_console_script_is_the_click_client() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["brctl"] == "brctl._cli:main"
