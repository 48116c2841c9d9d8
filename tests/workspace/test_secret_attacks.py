"""Ways a batch could slip a credential past verification, each on a real worktree.

Every one of these got through when the scan read ``git diff`` of the added lines before the
tests ran, with the allowlist of the batch's start commit.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from buildrunnerd.workspace import (
    ALLOWLIST_FILENAME,
    RunRepo,
    VerificationReport,
    prepare_run_repo,
    verify,
)

from ._helpers import run_git, task

ANTHROPIC_KEY = "sk-ant-" + "api03-Xq9Lm2Nb7Vc4Kd8Rt1Yw6Hs3Pf5Gj0"
AWS_KEY = "AKIA" + "Z7Q4XK2M9PLW3JHV"


@pytest.fixture
async def run_repo(repo: Path) -> RunRepo:
    return await prepare_run_repo(repo, "r1")


@pytest.fixture
async def wt(run_repo: RunRepo, wt_root: Path) -> Path:
    return await run_repo.add_worktree(wt_root, "b1")


def secret_failures(report: VerificationReport) -> list[tuple[str | None, str]]:
    return [(c.file, c.message) for c in report.checks if c.name == "secrets" and not c.passed]


def assert_caught(report: VerificationReport, file: str, kind: str, secret: str) -> None:
    failures = secret_failures(report)
    assert [f for f, _ in failures] == [file], report.summary()
    assert f"possible {kind}" in failures[0][1]
    assert not report.passed
    assert secret not in json.dumps(report.to_dict())


async def test_secret_in_a_binary_file(wt: Path) -> None:
    (wt / "model.bin").write_bytes(b"\x00\x01\x02" * 50 + ANTHROPIC_KEY.encode() + b"\x00" * 50)
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + bytes(17) + b"\x00\x00\x00\x30tEXt"
    (wt / "logo.png").write_bytes(png + b"Comment\x00" + AWS_KEY.encode() + b"\xae\x42\x60\x82")
    report = await verify(wt, [], test_cmd="true")
    files = sorted(str(f) for f, _ in secret_failures(report))
    assert files == ["logo.png", "model.bin"], report.summary()


@pytest.mark.parametrize("attributes", ["* -diff\n", "*.py binary\n", "*.py diff=shown\n"])
async def test_gitattributes_cannot_turn_a_file_into_binary_files_differ(
        repo: Path, wt: Path, attributes: str) -> None:
    # A textconv driver of the user's (for PDFs, say) that a model's attribute points at.
    run_git(repo, "config", "diff.shown.textconv", "sed s/sk-ant-.*/nothing/")
    (wt / ".gitattributes").write_text(attributes)
    (wt / "settings.py").write_text(f"API_KEY = '{ANTHROPIC_KEY}'\n")
    report = await verify(wt, [], test_cmd="true")
    assert_caught(report, "settings.py", "anthropic api key", ANTHROPIC_KEY)


async def test_secret_split_across_lines(wt: Path) -> None:
    (wt / "client.py").write_text(
        "import os\n\n"
        f'key = ("{ANTHROPIC_KEY[:13]}"\n'
        f'       + "{ANTHROPIC_KEY[13:30]}"\n'
        f'       "{ANTHROPIC_KEY[30:]}")\n'
    )
    report = await verify(wt, [], test_cmd="true")
    assert_caught(report, "client.py", "anthropic api key", ANTHROPIC_KEY)
    [(_, message)] = secret_failures(report)
    assert message.startswith("client.py:3:")


async def test_encoded_secret(wt: Path) -> None:
    encoded = base64.b64encode(ANTHROPIC_KEY.encode()).decode()
    (wt / "config.py").write_text(f"import base64\nKEY = base64.b64decode('{encoded}')\n")
    report = await verify(wt, [], test_cmd="true")
    assert_caught(report, "config.py", "anthropic api key", ANTHROPIC_KEY)
    assert "base64-encoded" in secret_failures(report)[0][1]


async def test_secret_in_a_file_name(wt: Path) -> None:
    (wt / "cache").mkdir()
    (wt / "cache" / f"{ANTHROPIC_KEY}.json").write_text("{}\n")
    report = await verify(wt, [], test_cmd="true")
    [(file, message)] = secret_failures(report)
    assert file is not None and file.startswith("cache/")
    assert "in the file name" in message and ANTHROPIC_KEY not in message


def decoding(value: str) -> str:
    """Shell words that print ``value`` without holding it (the test command is in the
    report, and the test runs confined, without our environment)."""
    return f"printf %s {base64.b64encode(value.encode()).decode()} | base64 -d"


async def test_file_written_by_the_tests_is_scanned(wt: Path) -> None:
    # The tests write a credential into the tree after every earlier check ran.
    (wt / "app.py").write_text("VALUE = 1\n")
    command = f"{{ printf 'token='; {decoding(ANTHROPIC_KEY)}; }} > generated_settings.txt"
    report = await verify(wt, [], test_cmd=command)
    assert_caught(report, "generated_settings.txt", "anthropic api key", ANTHROPIC_KEY)


async def test_test_output_is_redacted_in_the_report(wt: Path) -> None:
    url = "postgres://app:" + "Zq8kLm2Vx9pR4tWn@db/app"
    command = (f"echo connecting with; {decoding(ANTHROPIC_KEY)}; echo; {decoding(url)}; "
               "echo; exit 1")
    report = await verify(wt, [], test_cmd=command)
    [tests] = [c for c in report.checks if c.name == "tests"]
    assert tests.output_tail is not None
    assert "[REDACTED:anthropic_api_key]" in tests.output_tail
    assert "postgres://app:[REDACTED:database_url]@db/app" in tests.output_tail
    assert ANTHROPIC_KEY not in json.dumps(report.to_dict())


async def test_allowlist_planted_by_an_earlier_batch_of_the_run_is_ignored(
        run_repo: RunRepo, wt_root: Path) -> None:
    # Batch 1 only writes an allowlist (no secret in it; its task names the file, so the scope
    # check lets it): it verifies and merges.
    first = await run_repo.add_worktree(wt_root, "b1")
    (first / ALLOWLIST_FILENAME).write_text("AKIA.*\npath:*\n")
    report = await verify(first, [task("T1", ALLOWLIST_FILENAME)], test_cmd="true",
                          run_base_commit=run_repo.base_commit)
    assert report.passed, report.summary()
    assert (await run_repo.commit_and_merge(first, "batch 1")).merged
    # Batch 2 starts from the run branch, which now holds that allowlist.
    second = await run_repo.add_worktree(wt_root, "b2")
    start = await run_repo.worktree_head(second)
    assert start != run_repo.base_commit
    assert (second / ALLOWLIST_FILENAME).exists()
    (second / "keys.py").write_text(f"K = '{AWS_KEY}'\n")
    report = await verify(second, [], base_commit=start, test_cmd="true",
                          run_base_commit=run_repo.base_commit)
    assert_caught(report, "keys.py", "aws access key", AWS_KEY)


async def test_allowlist_of_the_run_base_still_applies(repo: Path, wt_root: Path) -> None:
    (repo / ALLOWLIST_FILENAME).write_text("path:tests/fixtures/*\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "allow fixtures")
    run_repo = await prepare_run_repo(repo, "r2")
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "tests" / "fixtures").mkdir(parents=True)
    (wt / "tests" / "fixtures" / "key.bin").write_bytes(b"\0" + AWS_KEY.encode() + b"\0")
    report = await verify(wt, [], test_cmd="true", run_base_commit=run_repo.base_commit)
    assert report.passed, report.summary()
