"""The secret scan's speed and false positives on ordinary code, and on 1 MB of binary.

Corpus: Python files of this interpreter's standard library and of the installed anthropic
and httpx packages, about ``--mb`` MB each, scanned as new files (every line added), as
verification scans a batch's staged blobs. Every finding on this code is a false positive.
Also timed: one ``--mb`` MB random binary blob, and one text file with as many base64-looking
runs as a minified bundle has.

    .venv/bin/python bench/secrets_bench.py [--mb 1] [--repeat 5] [--json]

``--detect-secrets-python PYTHON``: the same corpora through detect-secrets (``scan_diff``
with every plugin and its default filters) in another interpreter, e.g. a scratch venv made
with ``python -m venv /tmp/ds && /tmp/ds/bin/pip install detect-secrets unidiff``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from buildrunnerd.workspace import StagedChange, scan_commit


def corpus(roots: list[Path], limit_bytes: int) -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = []
    size = 0
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if size >= limit_bytes:
                return files
            data = path.read_bytes()
            files.append((f"{root.name}/{path.relative_to(root)}", data))
            size += len(data)
    return files


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


_DETECT_SECRETS = """
import json, statistics, sys, time
from collections import Counter
from detect_secrets.core.scan import scan_diff
from detect_secrets.settings import default_settings
diff = sys.stdin.read()
times = []
with default_settings():
    for _ in range(int(sys.argv[1])):
        start = time.perf_counter()
        found = list(scan_diff(diff))
        times.append(time.perf_counter() - start)
print(json.dumps({"seconds": round(statistics.median(times), 3), "findings": len(found),
                  "kinds": dict(Counter(s.type for s in found))}))
"""


def detect_secrets_scan(files: list[tuple[str, bytes]], repeat: int, python: str
                        ) -> dict[str, Any]:
    """detect-secrets (every plugin, default filters) on the same files as one git diff, in
    ``python`` (an interpreter that has detect-secrets and unidiff)."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
        for name, data in files:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes(data)
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
        diff = subprocess.run(["git", "diff", "--cached"], cwd=repo, check=True, env=env,
                              capture_output=True, text=True).stdout
        # In the repository: its filters drop files that do not exist relative to the cwd.
        res = subprocess.run([python, "-c", _DETECT_SECRETS, str(repeat)], cwd=repo, env=env,
                             input=diff, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--detect-secrets-python", metavar="PYTHON",
                        help="also run detect-secrets, installed in this interpreter")
    args = parser.parse_args()
    limit = int(args.mb * 1024 * 1024)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    corpora = {
        "stdlib": corpus([stdlib / d for d in ("email", "http", "json", "asyncio", "urllib",
                                               "logging")], limit),
        "sdk": corpus([site / "anthropic", site / "httpx"], limit),
    }
    rng = random.Random(9)
    blob = rng.randbytes(limit)
    line = "".join(rng.choice("ABCDEFGHIJKLMNOPabcdefghijklmnop0123456789+/") for _ in range(60))
    bundle = "\n".join(f"var a{i} = '{line}';" for i in range(limit // 70)).encode()
    results: dict[str, Any] = {"python": sys.version.split()[0], "mb": args.mb}
    for name, files in corpora.items():
        changes = [StagedChange(path=p, new=d) for p, d in files]
        seconds, found = timed(lambda changes=changes: scan_commit(changes), args.repeat)
        results[name] = {
            "files": len(files), "bytes": sum(len(d) for _, d in files),
            "seconds": round(seconds, 3), "false_positives": len(found),
            "findings": [f"{f.file}:{f.line} {f.kind}" for f in found][:20],
        }
        if args.detect_secrets_python:
            results[name]["detect_secrets"] = detect_secrets_scan(
                files, args.repeat, args.detect_secrets_python)
    for name, data in (("binary", blob), ("base64_bundle", bundle)):
        change = [StagedChange(path=f"{name}.dat", new=data)]
        seconds, found = timed(lambda change=change: scan_commit(change), args.repeat)
        results[name] = {"bytes": len(data), "seconds": round(seconds, 3),
                         "findings": len(found)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"secret scan, Python {results['python']}, median of {args.repeat}")
    for name in ("stdlib", "sdk", "binary", "base64_bundle"):
        r = results[name]
        extra = (f", {r['false_positives']} false positives {r['findings']}"
                 if "false_positives" in r else f", {r['findings']} findings")
        print(f"  {name:14} {r['bytes'] / 1e6:5.2f} MB  {r['seconds']:6.3f} s{extra}")
        if "detect_secrets" in r:
            print(f"  {'':14} detect-secrets: {r['detect_secrets']}")


if __name__ == "__main__":
    main()
