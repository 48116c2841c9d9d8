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


def _modules_after(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    result = subprocess.run([sys.executable, "-c", _PROBE, *args], env=base_env(tmp_path),
                            capture_output=True, text=True, timeout=60, check=False)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["code"], report["modules"]


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    code, modules = _modules_after(tmp_path, "--help")
    assert code == 0
    assert "brctl._cli" in modules
    assert _heavy(modules) == []


def test_ping_against_a_real_daemon_imports_nothing_heavy(daemon: Daemon, tmp_path: Path) -> None:
    code, modules = _modules_after(tmp_path, "--socket", str(daemon.socket), "ping")
    assert code == 0
    assert "brctl._client" in modules
    assert _heavy(modules) == []
