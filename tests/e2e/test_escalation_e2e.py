"""Escalation through the real daemon: a batch that fails verification gets a fix-up round on
the next model of ``models.ladder``, then verifies, merges, and is billed per model exactly."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from buildrunnerd.agent import CostTable
from buildrunnerd.config import PricingConfig
from tests.conftest import DaemonFactory, wait_run_event
from tests.e2e.support import git, make_repo
from tests.fakeapi import API_KEY, FakeAnthropic, FakeRequest, Reply, text, tool_use

# Every complexity routes to the bottom of the ladder, so the escalated model is known
# whatever complexity the heuristic planner gives the task.
ROUTED = "claude-haiku-5-5"
ESCALATED = "claude-sonnet-5-5"
CONFIG = (
    '[planner]\nplanner = "heuristic"\n'
    f'[models]\nsimple = "{ROUTED}"\nmedium = "{ROUTED}"\ncomplex = "{ROUTED}"\n'
    f'critical = "{ROUTED}"\nladder = ["{ROUTED}", "{ESCALATED}", "claude-opus-5-5"]\n'
    "[verify]\nmax_fix_attempts = 2\n"
)
_FILES = re.compile(r"^Files: (.*)$", re.MULTILINE)
_BATCH = re.compile(r"# Your tasks: batch (\S+)")
FIX_MARKER = "verified your work and it did not pass"


def named_files(req: FakeRequest) -> list[str]:
    """The files the batch's tasks name, as the prompt builder lists them."""
    return [f for line in _FILES.findall(req.first_user_text())
            for f in re.findall(r"`([^`]+)`", line)]


def in_fix_round(req: FakeRequest) -> bool:
    """Whether the conversation has reached a fix-up turn (the verifier's report)."""
    return any(m["role"] == "user" and FIX_MARKER in json.dumps(m["content"])
               for m in req.messages[1:])


def lazy_then_diligent(req: FakeRequest) -> Reply:
    """First try: claims success without writing anything. Fix-up round: writes every named
    file (one editor call per turn), then ends its turn."""
    if not in_fix_round(req):
        return Reply([text("All done (not really).")], "end_turn")
    files = named_files(req)
    written = sum(1 for m in req.messages if m["role"] == "assistant"
                  and "str_replace_based_edit_tool" in json.dumps(m["content"]))
    if written < len(files):
        path = files[written]
        return Reply([text(f"Writing {path}."), tool_use(
            "str_replace_based_edit_tool",
            {"command": "create", "path": path, "file_text": f'"""{path}"""\n\nVALUE = 1\n'})],
            "tool_use")
    return Reply([text("Wrote " + ", ".join(files) + ".")], "end_turn")


async def test_failed_verification_escalates_to_next_model_then_merges(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    repo, spec = make_repo(tmp_path, [("Storage", "database", [], ["app/db.py"])])

    with FakeAnthropic(lazy_then_diligent) as fake:
        daemon = await daemon_factory.start_on_api(fake.base_url, API_KEY, config=CONFIG)
        async with daemon.client() as client:
            run = await client.call("run.submit", spec_path=str(spec), repo=str(repo),
                                    workers=1)
            await wait_run_event(daemon.socket, run["id"], timeout_s=90)
            info = await client.call("run.get", run_id=run["id"])
            costs = await client.call("costs.summary", run_id=run["id"], by="model")
            failed = await wait_run_event(daemon.socket, run["id"], ("verify.failed",),
                                          timeout_s=10)
        brctl = await anyio.run_process(
            [sys.executable, "-m", "brctl", "--socket", str(daemon.socket), "--json", "costs",
             "--run", run["id"], "--by", "model"], env=daemon.env, check=False)
        assert await daemon.stop() == 0

    assert info["state"] == "succeeded", (info, daemon.stderr()[-3000:])
    assert "app/db.py" in git(repo, "ls-tree", "-r", "--name-only", info["branch"]).splitlines()
    assert failed["data"]["fix_round"] == 0
    assert "does not exist" in failed["data"]["reason"], failed

    # Per batch with required files (the code batch; the tests batch only has suggested
    # files): the first try ran on the routed model, the fix-up round (every request carrying
    # the verifier's report) on the next model up the ladder, and nothing else ran.
    by_batch: dict[str, list[tuple[bool, str]]] = {}
    for req in fake.ok_requests():
        found = _BATCH.search(req.first_user_text())
        assert found is not None, req.first_user_text()[:500]
        by_batch.setdefault(found.group(1), []).append((in_fix_round(req), req.body["model"]))
    assert by_batch
    escalated = 0
    for batch, calls in by_batch.items():
        first = next(r for r in fake.ok_requests()
                     if (m := _BATCH.search(r.first_user_text())) and m.group(1) == batch)
        if not named_files(first):
            # Nothing required (the planner only suggests files for the tests task): the
            # lazy first try passes verification and nothing is escalated.
            assert calls == [(False, ROUTED)], (batch, calls)
            continue
        escalated += 1
        first_try = [model for fixing, model in calls if not fixing]
        fix_up = [model for fixing, model in calls if fixing]
        assert first_try == [ROUTED], (batch, calls)
        assert fix_up and set(fix_up) == {ESCALATED}, (batch, calls)
        assert calls == [(False, ROUTED)] + [(True, ESCALATED)] * len(fix_up), (batch, calls)
    assert escalated, by_batch

    # Both models billed, each with exactly the usage the API returned for it.
    assert brctl.returncode == 0, brctl.stderr.decode()
    cli_costs = json.loads(brctl.stdout)
    prices = CostTable(PricingConfig())
    expected: dict[str, dict[str, Any]] = {}
    for b in fake.billed:
        row = expected.setdefault(b.model, {"calls": 0, "input_tokens": 0, "output_tokens": 0,
                                            "cache_read_input_tokens": 0,
                                            "cache_creation_input_tokens": 0, "cost_usd": 0.0})
        row["calls"] += 1
        row["cost_usd"] += prices.cost_usd(b.model, b.usage)
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                    "cache_creation_input_tokens"):
            row[key] += b.usage.get(key, 0)
    assert set(expected) == {ROUTED, ESCALATED}
    for summary in (costs, cli_costs):
        rows = {row["key"]: row for row in summary["rows"]}
        assert set(rows) == {ROUTED, ESCALATED}, summary
        for model, want in expected.items():
            got = rows[model]
            for key, value in want.items():
                if key == "cost_usd":
                    assert got[key] == pytest.approx(value, rel=1e-9), (model, got, want)
                else:
                    assert got[key] == value, (model, key, got, want)
        assert summary["total_usd"] == pytest.approx(
            sum(w["cost_usd"] for w in expected.values()), rel=1e-9)
