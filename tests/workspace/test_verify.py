"""The verification engine on real worktrees: each check passing and failing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from buildrunnerd.config import VerifyConfig
from buildrunnerd.errors import WorkspaceError
from buildrunnerd.workspace import (
    ALLOWLIST_FILENAME,
    RunRepo,
    VerificationReport,
    detect_test_command,
    prepare_run_repo,
    verify,
)
from tests.projectenv import give_project_env

from ._helpers import run_git, task

# Assembled at run time so this file itself holds no credential-shaped string.
AWS_KEY = "AKIA" + "Z7Q4XK2M9PLW3JHV"
GITHUB_TOKEN = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z5A"
ANTHROPIC_KEY = "sk-ant-" + "api03-Xq9Lm2Nb7Vc4Kd8Rt1Yw6Hs3Pf5Gj0"


@pytest.fixture
async def run_repo(repo: Path) -> RunRepo:
    return await prepare_run_repo(repo, "r1")


@pytest.fixture
async def wt(run_repo: RunRepo, wt_root: Path) -> Path:
    return await run_repo.add_worktree(wt_root, "b1")


def by_name(report: VerificationReport, name: str) -> list[dict[str, object]]:
    return [c for c in report.to_dict()["checks"] if c["name"] == name]


async def test_all_checks_pass(wt: Path) -> None:
    (wt / "calc.py").write_text("def add(a: int, b: int) -> int:\n    return a + b\n")
    report = await verify(wt, [task("T1", "calc.py")], test_cmd="true")
    assert report.passed, report.summary()
    assert {c.name for c in report.checks} == {"files", "compile", "protected", "stubs",
                                               "scope", "tests", "secrets"}
    data = report.to_dict()
    assert data["passed"] is True
    json.dumps(data)  # plain data, ready for the store and a fix-up prompt
    assert report.summary() == "all checks passed"


async def test_missing_and_empty_files_fail_with_the_file(wt: Path) -> None:
    (wt / "empty.py").write_text("")
    tasks = [task("T1", "empty.py"), task("T2", "missing/mod.py", title="make the module"),
             task("T3", "../escape.py")]
    report = await verify(wt, tasks, test_cmd="true")
    assert not report.passed
    files = {c["file"]: c["message"] for c in by_name(report, "files")}
    assert "empty.py is empty; task T1" in str(files["empty.py"])
    assert "missing/mod.py does not exist; task T2 (make the module) must create it" in str(
        files["missing/mod.py"])
    assert "outside the repository" in str(files["../escape.py"])
    assert "files: empty.py: empty.py is empty" in report.summary()


async def test_compile_error_names_file_and_line(wt: Path) -> None:
    (wt / "good.py").write_text("X = 1\n")
    (wt / "broken.py").write_text("def f(:\n    pass\n")
    report = await verify(wt, [task("T1", "good.py", "broken.py")], test_cmd="true")
    assert not report.passed
    [failure] = [c for c in report.checks if c.name == "compile"]
    assert (failure.passed, failure.file, failure.line) == (False, "broken.py", 1)
    assert "broken.py:1: invalid syntax" in failure.message
    # compile() leaves no byte-code behind to be committed.
    assert not (wt / "__pycache__").exists()


async def test_only_changed_python_files_are_compiled(run_repo: RunRepo, repo: Path,
                                                      wt_root: Path) -> None:
    # A syntax error already on the branch is not this batch's fault.
    run_git(repo, "checkout", "-q", run_repo.branch)
    (repo / "legacy.py").write_text("print 'py2'\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "legacy")
    run_git(repo, "checkout", "-q", "main")
    wt = await run_repo.add_worktree(wt_root, "b2")
    (wt / "new.py").write_text("N = 1\n")
    report = await verify(wt, [task("T1", "new.py")], test_cmd="true")
    assert report.passed, report.summary()


async def test_import_check(wt: Path) -> None:
    (wt / "mypkg").mkdir()
    (wt / "mypkg" / "__init__.py").write_text("import does_not_exist_anywhere\n")
    config = VerifyConfig(import_check=f"{sys.executable} -c 'import mypkg'")
    report = await verify(wt, [task("T1", "mypkg/__init__.py")], test_cmd="true", config=config)
    [check] = by_name(report, "import")
    assert check["passed"] is False
    assert "does_not_exist_anywhere" in str(check["output_tail"])
    (wt / "mypkg" / "__init__.py").write_text("VALUE = 1\n")
    report = await verify(wt, [task("T1", "mypkg/__init__.py")], test_cmd="true", config=config)
    assert report.passed, report.summary()


async def test_failing_test_command_keeps_the_output_tail(wt: Path) -> None:
    (wt / "a.py").write_text("A = 1\n")
    cmd = ("i=0; while [ $i -lt 2000 ]; do echo noise-line-$i; i=$((i+1)); done; "
           "echo 'AssertionError: expected 3, got 4' >&2; exit 3")
    report = await verify(wt, [task("T1", "a.py")], test_cmd=cmd)
    [check] = by_name(report, "tests")
    assert check["passed"] is False
    assert "failed (exit 3)" in str(check["message"])
    tail = str(check["output_tail"])
    assert tail.rstrip().endswith("AssertionError: expected 3, got 4")
    assert len(tail.encode()) <= 4096 + 8
    assert "noise-line-0\n" not in tail  # the head was dropped, the tail kept
    assert report.test_command == cmd


async def test_test_command_timeout_kills_it(wt: Path) -> None:
    (wt / "a.py").write_text("A = 1\n")
    config = VerifyConfig(test_timeout_s=0.5)
    report = await verify(wt, [task("T1", "a.py")], test_cmd="echo started; sleep 60",
                          config=config)
    [check] = by_name(report, "tests")
    assert check["passed"] is False
    assert "did not finish within 0.5 s" in str(check["message"])
    assert "started" in str(check["output_tail"])


async def test_test_cmd_precedence(wt: Path) -> None:
    (wt / "a.py").write_text("A = 1\n")
    config = VerifyConfig(test_cmd="false")
    assert not (await verify(wt, [task("T1", "a.py")], config=config)).passed
    report = await verify(wt, [task("T1", "a.py")], test_cmd="true", config=config)
    assert report.passed and report.test_command == "true"


async def test_auto_detected_pytest_uses_the_project_env(
        wt: Path, repo: Path, project_env_root: Path) -> None:
    assert await detect_test_command(wt) is None
    report = await verify(wt, [], test_cmd=None)
    [check] = by_name(report, "tests")
    assert check["passed"] is True and "nothing to run" in str(check["message"])

    (wt / "tests").mkdir()
    (wt / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (wt / "tests" / "test_calc.py").write_text(
        "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    # No environment of the project's own: never the daemon's Python, and it says so.
    assert await detect_test_command(wt) is None
    report = await verify(wt, [task("T1", "calc.py")])
    [check] = by_name(report, "tests")
    assert check["passed"] is True
    assert "tests not run" in str(check["message"]) and ".venv" in str(check["message"])
    assert sys.executable not in str(check["message"])

    python = give_project_env(repo, project_env_root)
    cmd = await detect_test_command(wt)
    assert cmd == f"{python} -m pytest"
    report = await verify(wt, [task("T1", "calc.py")])
    [check] = by_name(report, "tests")
    assert check["passed"] is False
    assert "assert -1 == 3" in str(check["output_tail"])
    (wt / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    report = await verify(wt, [task("T1", "calc.py")])
    assert report.passed, report.summary()
    assert report.test_counts is not None and report.test_counts["passed"] == 1
    assert not (wt / ".pytest_cache").exists()
    assert "__pycache__" not in run_git(wt, "status", "--porcelain", "--ignored")


async def test_planted_aws_key_fails_with_file_and_line(wt: Path) -> None:
    (wt / "settings.py").write_text(
        "REGION = 'eu-west-1'\n"
        "BUCKET = 'assets'\n"
        f"AWS_ACCESS_KEY_ID = '{AWS_KEY}'\n"
    )
    report = await verify(wt, [task("T1", "settings.py")], test_cmd="true")
    assert not report.passed
    [finding] = by_name(report, "secrets")
    assert (finding["file"], finding["line"], finding["passed"]) == ("settings.py", 3, False)
    assert "aws access key" in str(finding["message"])
    assert "AKIA… (20 chars)" in str(finding["message"])
    # The report never carries the secret itself.
    assert AWS_KEY not in json.dumps(report.to_dict())


async def test_other_credentials_are_found(wt: Path) -> None:
    pem_header = "-----BEGIN " + "RSA PRIVATE KEY-----"
    (wt / "creds.py").write_text(
        f"GH = '{GITHUB_TOKEN}'\n"
        f"CLAUDE = '{ANTHROPIC_KEY}'\n"
        f"KEY = '''{pem_header}\nMIIEow...\n'''\n"
        "db_password = 'Zq8#kLm2Vx9!pR4tWn7'\n"
        "cache_key = 'user_profile_settings'\n"  # low entropy: a name, not a secret
    )
    report = await verify(wt, [task("T1", "creds.py")], test_cmd="true")
    found = {(c["line"], str(c["message"]).split("possible ")[1].split(" ")[0])
             for c in by_name(report, "secrets")}
    assert found == {(1, "github"), (2, "anthropic"), (3, "private"), (6, "high")}
    text = json.dumps(report.to_dict())
    assert GITHUB_TOKEN not in text and ANTHROPIC_KEY not in text


async def test_secret_already_on_the_branch_is_not_reported_again(
        repo: Path, wt_root: Path) -> None:
    # Only added lines count: a batch editing next to an old key is not blamed for it.
    (repo / "legacy.py").write_text(f"OLD = '{AWS_KEY}'\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "legacy key")
    run_repo = await prepare_run_repo(repo, "r1")
    wt = await run_repo.add_worktree(wt_root, "b1")
    (wt / "legacy.py").write_text(f"OLD = '{AWS_KEY}'\nNEW = 1\n")
    report = await verify(wt, [task("T1", "legacy.py")], test_cmd="true")
    assert report.passed, report.summary()
    (wt / "legacy.py").write_text(f"OLD = '{AWS_KEY}'\nNEW = '{AWS_KEY}'\n")
    report = await verify(wt, [task("T1", "legacy.py")], test_cmd="true")
    assert [(c["file"], c["line"]) for c in by_name(report, "secrets")] == [("legacy.py", 2)]


async def test_repository_allowlist_by_fingerprint_regex_and_path(
        repo: Path, tmp_path: Path) -> None:
    run_git(repo, "checkout", "-q", "-b", "allow")
    example = "AKIA" + "IOSFODNN7EXAMPLE"
    (repo / "fixture.py").write_text(f"K = '{AWS_KEY}'\n")
    run_repo = await prepare_run_repo(repo, "probe", allow_dirty=True)
    probe = await run_repo.add_worktree(tmp_path / "wts", "probe")
    (probe / "fixture.py").write_text(f"K = '{AWS_KEY}'\n")
    report = await verify(probe, [], test_cmd="true")
    [finding] = by_name(report, "secrets")
    fingerprint = str(finding["message"]).split("add `")[1].split("`")[0]
    assert fingerprint.startswith("sha256:")

    (repo / "fixture.py").unlink()
    (repo / ALLOWLIST_FILENAME).write_text(
        f"# accepted on review\n{fingerprint}\n{example}\npath:tests/fixtures/*\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "allowlist")
    run_repo = await prepare_run_repo(repo, "r2")
    wt = await run_repo.add_worktree(tmp_path / "wts", "b1")
    (wt / "tests" / "fixtures").mkdir(parents=True)
    (wt / "a.py").write_text(f"K = '{AWS_KEY}'\nDOC = '{example}'\n")
    (wt / "tests" / "fixtures" / "keys.txt").write_text(f"{GITHUB_TOKEN}\n")
    (wt / "b.py").write_text(f"T = '{GITHUB_TOKEN}'\n")
    report = await verify(wt, [], test_cmd="true")
    assert [(c["file"], c["line"]) for c in by_name(report, "secrets")] == [("b.py", 1)]


async def test_allowlist_written_by_the_agent_is_ignored(wt: Path) -> None:
    (wt / ALLOWLIST_FILENAME).write_text("AKIA.*\n")
    (wt / "a.py").write_text(f"K = '{AWS_KEY}'\n")
    report = await verify(wt, [], test_cmd="true")
    assert [c["file"] for c in by_name(report, "secrets")] == ["a.py"]


async def test_configured_allowlist_file(wt: Path, tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("Z7Q4XK2M9PLW3JHV\n")
    (wt / "a.py").write_text(f"K = '{AWS_KEY}'\n")
    report = await verify(wt, [], test_cmd="true",
                          config=VerifyConfig(secret_allowlist=str(allow)))
    assert report.passed, report.summary()


async def test_invalid_allowlist_line_is_an_error_naming_it(wt: Path, tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("# ok\n([unclosed\n")
    with pytest.raises(WorkspaceError, match=r"allow\.txt:2: invalid regular expression"):
        await verify(wt, [], test_cmd="true", config=VerifyConfig(secret_allowlist=str(allow)))


async def test_test_command_gets_no_model_key(wt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-not-for-generated-code")
    monkeypatch.setenv("PROJECT_SETTING", "kept")
    (wt / "a.py").write_text("A = 1\n")
    report = await verify(wt, [task("T1", "a.py")], test_cmd="env; test -z \"$ANTHROPIC_API_KEY\"")
    [check] = by_name(report, "tests")
    assert check["passed"] is True, check
    # An allowlist, not a blocklist: the daemon's other variables stay out too.
    assert "PATH=" in str(check["output_tail"])
    assert "PROJECT_SETTING" not in str(check["output_tail"])
    assert "PYTHONDONTWRITEBYTECODE=1" in str(check["output_tail"])


@pytest.mark.parametrize("name, content", [
    ('we"ird.py', b"def f(:\n"),  # a name the patch headers quote
    ("tab\there.py", b"def f(:\n"),
    ("binary.py", b"X = 1\n\0\0\0"),  # git's diff shows no text for it
])
async def test_every_changed_python_file_is_compiled_whatever_its_name(
        wt: Path, name: str, content: bytes) -> None:
    (wt / name).write_bytes(content)
    report = await verify(wt, [], test_cmd="true")
    failed = [c for c in by_name(report, "compile") if not c["passed"]]
    assert failed and failed[0]["file"] == name, report.summary()
