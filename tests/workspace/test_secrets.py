"""The secret scanner on text: patterns, entropy, diff line numbers, redaction."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from buildrunnerd.workspace import Allowlist, scan_diff
from buildrunnerd.workspace._secrets import parse_added_lines, redact, scan_line

AWS_KEY = "AKIA" + "Z7Q4XK2M9PLW3JHV"


def test_added_line_numbers_follow_the_hunks() -> None:
    diff = (
        "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n"
        "@@ -3,0 +4,2 @@\n+x = 1\n+y = 2\n"
        "@@ -10 +12 @@\n-old\n+new\n"
        "diff --git a/gone.py b/gone.py\n--- a/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-z\n"
        "diff --git a/n.txt b/n.txt\nnew file mode 100644\n--- /dev/null\n+++ b/n.txt\n"
        "@@ -0,0 +1 @@\n+hello\n"
    )
    assert list(parse_added_lines(diff)) == [
        ("a.py", 4, "x = 1"), ("a.py", 5, "y = 2"), ("a.py", 12, "new"), ("n.txt", 1, "hello")]


def test_key_inside_a_longer_token_is_not_an_aws_key() -> None:
    assert list(scan_line("digest = 'X" + AWS_KEY + "9'")) == []
    assert [k for k, _ in scan_line(f"id={AWS_KEY}")] == ["aws_access_key"]


def test_sk_words_are_not_keys() -> None:
    assert list(scan_line("pip install sk-learn-compatible-estimator-wrapper")) == []
    key = "sk-proj-" + "4fQ9xT2mK7vL1pZ8nR3wY6bH"
    assert [k for k, _ in scan_line(f"OPENAI = '{key}'")] == ["api_key"]


def test_entropy_rule_tells_random_values_from_words() -> None:
    assert [k for k, _ in scan_line("api_token = 'q7Vd9Lx2Rk4Tn8Wz1Pb6'")] == [
        "high_entropy_assignment"]
    assert list(scan_line("api_token = 'please-set-me-later'")) == []
    assert list(scan_line("password = os.environ['DB_PASSWORD']")) == []
    assert [k for k, _ in scan_line('"secret": "9f86d081884c7d659a2feaa0c55ad015"')] == [
        "high_entropy_assignment"]


def test_fingerprint_allowlist_accepts_a_prefix() -> None:
    diff = "+++ b/k.py\n@@ -0,0 +1 @@\n+K = '" + AWS_KEY + "'\n"
    [finding] = scan_diff(diff)
    prefix = finding.fingerprint[: len("sha256:") + 12]
    assert scan_diff(diff, Allowlist.parse(prefix, source="allow")) == []


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=",
               min_size=1, max_size=200))
def test_redaction_never_shows_more_than_four_characters(secret: str) -> None:
    shown = redact(secret)
    assert shown.startswith(secret[:4])
    assert f"({len(secret)} chars)" in shown
    if len(secret) > 4:
        assert secret not in shown
