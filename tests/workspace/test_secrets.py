"""The secret scanner on blobs: patterns, entropy, added lines, every hiding place, redaction.

Every credential-shaped value is assembled at run time, so this file holds none itself.
"""

from __future__ import annotations

import base64
import gzip
import io
import urllib.parse
import zipfile
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildrunnerd.credentials import KINDS, find_credentials, redact_secrets
from buildrunnerd.workspace import Allowlist, SecretFinding, StagedChange, scan_commit
from buildrunnerd.workspace._secrets import MAX_FINDINGS, redact, scan_line

AWS_KEY = "AKIA" + "Z7Q4XK2M9PLW3JHV"
ANTHROPIC_KEY = "sk-ant-" + "api03-Xq9Lm2Nb7Vc4Kd8Rt1Yw6Hs3Pf5Gj0"
STRIPE_KEY = "sk_" + "live_4eC39HqLyjWDarjtT1zdp7dc"
STRIPE_RESTRICTED = "rk_" + "live_51HxQ2bC3dE4fG5hI6jK7lM8"
STRIPE_WEBHOOK = "whsec_" + "Mz4Lq8Vn2Rt6Yw1Pb5Hs9Kd3Fj7Gx0Cc"
SLACK_WEBHOOK = ("https://hooks.slack.com/services/" + "T024BE7LD/B08KQ2X1A7/"
                 + "x7Kd9Lm2Qp4Rs6Tv8Wy0Zb3N")
DB_PASSWORD = "Zq8kLm2Vx9pR4tWn"
JWT = ("eyJ" + "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" + ".eyJ" + "zdWIiOiIxMjM0NTY3ODkwIn0"
       + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")


def change(path: str, new: bytes | str, old: bytes | str | None = None) -> StagedChange:
    def raw(value: bytes | str) -> bytes:
        return value.encode() if isinstance(value, str) else value
    return StagedChange(path=path, new=raw(new), old=None if old is None else raw(old))


def kinds(findings: list[SecretFinding]) -> list[str]:
    return [f.kind for f in findings]


def test_added_lines_are_numbered_as_in_the_file() -> None:
    old = "x = 1\ny = 2\n"
    new = f"x = 1\nK = '{AWS_KEY}'\ny = 2\n\x0cform feed\nT = '{ANTHROPIC_KEY}'\n"
    found = scan_commit([change("a.py", new, old)])
    assert [(f.file, f.line, f.kind) for f in found] == [
        ("a.py", 2, "aws_access_key"), ("a.py", 5, "anthropic_api_key")]


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


def test_new_patterns_stripe_slack_database_urls_and_jwts() -> None:
    lines = {
        "stripe_key": [f"STRIPE = '{STRIPE_KEY}'", f"k = {STRIPE_RESTRICTED}",
                       f"WEBHOOK_SECRET={STRIPE_WEBHOOK}"],
        "slack_webhook": [f"notify({SLACK_WEBHOOK!r})"],
        "database_url": [
            f"DATABASE_URL=postgres://app:{DB_PASSWORD}@db.internal:5432/app",
            f"url = 'postgresql+psycopg://app:{DB_PASSWORD}@db/app'",
            f"MYSQL = 'mysql://root:{DB_PASSWORD}@127.0.0.1/shop'",
            f"mongodb+srv://svc:{DB_PASSWORD}@cluster0.example.net/db?retryWrites=true",
            f"REDIS_URL=redis://:{DB_PASSWORD}@cache:6379/0",
        ],
        "jwt": [f"Authorization: Bearer {JWT}"],
    }
    for kind, texts in lines.items():
        for text in texts:
            assert [k for k, _ in scan_line(text)] == [kind], text
    [(_, secret)] = scan_line(lines["database_url"][0])
    assert secret == DB_PASSWORD  # only the password is the secret
    assert {"stripe_key", "slack_webhook", "database_url", "jwt"} <= set(KINDS)


@pytest.mark.parametrize("text", [
    "postgres://user:password@localhost/db",
    "postgres://user:${PASSWORD}@localhost/db",
    "mysql://root:<password>@db/shop",
    "redis://:***@cache:6379",
    "mongodb://app:%(pw)s@mongo/app",
    "postgresql://{user}:{password}@{host}/{db}",
    "postgres://app:$DB_PASS@db/app",
    "postgres://postgres:postgres@localhost:5432/test",
    "DATABASE_URL = 'postgres://localhost:5432/app'",  # no password at all
    "amqp://guest:guest@rabbit//",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",  # a test key: not a live credential
    "token = 'eyJhbGciOiJIUzI1NiJ9'",  # a JWT header alone
])
def test_placeholders_and_near_misses_are_not_findings(text: str) -> None:
    assert list(scan_line(text)) == []


def test_fingerprint_allowlist_accepts_a_prefix() -> None:
    changes = [change("k.py", f"K = '{AWS_KEY}'\n")]
    [finding] = scan_commit(changes)
    prefix = finding.fingerprint[: len("sha256:") + 12]
    assert scan_commit(changes, Allowlist.parse(prefix, source="allow")) == []


def test_secret_already_in_the_old_content_is_not_new() -> None:
    old = f"OLD = '{AWS_KEY}'\n"
    assert scan_commit([change("a.py", old + "NEW = 1\n", old)]) == []
    blob = b"\0\x01" + AWS_KEY.encode() + b"\0"
    assert scan_commit([change("a.bin", blob + b"more", blob)]) == []


# --- hiding places -------------------------------------------------------------------------

def test_secret_in_binary_content_between_nul_bytes() -> None:
    blob = b"\x00\x01\x02" * 100 + ANTHROPIC_KEY.encode() + b"\x00\xff" * 100
    [finding] = scan_commit([change("data.bin", blob)])
    assert finding.kind == "anthropic_api_key"
    assert (finding.line, "binary content" in finding.where) == (0, True)
    assert ANTHROPIC_KEY not in finding.message()


def test_secret_in_a_png_text_chunk_and_in_utf16() -> None:
    png = (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + bytes(17)
           + b"\x00\x00\x00\x40tEXtComment\x00" + AWS_KEY.encode() + b"\x12\x34\x56\x78")
    assert kinds(scan_commit([change("logo.png", png)])) == ["aws_access_key"]
    utf16 = "\ufeffkey=" + ANTHROPIC_KEY
    assert kinds(scan_commit([change("notes.txt", utf16.encode("utf-16-le"))])) == [
        "anthropic_api_key"]


def test_secret_in_compressed_binaries() -> None:
    payload = f"config\nkey = {STRIPE_KEY}\n".encode()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner/settings.txt", payload)
    for name, blob in [("a.gz", gzip.compress(payload)), ("a.zip", archive.getvalue()),
                       ("a.dat", b"\x00\x00hdr" + zlib.compress(payload) + b"\x00")]:
        assert kinds(scan_commit([change(name, blob)])) == ["stripe_key"], name


def test_secret_split_across_lines() -> None:
    head, tail = ANTHROPIC_KEY[:13], ANTHROPIC_KEY[13:]
    sources = {
        "plus.py": f'key = "{head}" \\\n    + "{tail}"\n',
        "implicit.py": f'KEY = (\n    "{head}"\n    "{tail}"\n)\n',
        "join.py": f'k = "".join([\n  "{head[:6]}", "{head[6:]}",\n  "{tail}",\n])\n',
        "vars.py": f'a = "{head}"\nb = "{tail}"\nclient = Client(a + b)\n',
        "wrapped.txt": f"token:\n{head}\n{tail}\n",
    }
    for name, text in sources.items():
        found = scan_commit([change(name, text)])
        assert kinds(found) == ["anthropic_api_key"], (name, found)
        assert found[0].fingerprint == scan_commit([change("x", ANTHROPIC_KEY)])[0].fingerprint


def test_encoded_secrets() -> None:
    key = ANTHROPIC_KEY.encode()
    encodings = {
        "base64": base64.b64encode(key).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(b"\xfb\xff" + key).decode(),
        "hex": key.hex(),
        "escaped hex": "".join(f"\\x{b:02x}" for b in key),
        "byte list": ", ".join(str(b) for b in key),
        "url-encoded": urllib.parse.quote(ANTHROPIC_KEY, safe=""),
        "base64 of hex": base64.b64encode(key.hex().encode()).decode(),
    }
    for how, encoded in encodings.items():
        found = scan_commit([change("enc.py", f"BLOB = '{encoded}'\n")])
        assert kinds(found) == ["anthropic_api_key"], how
        assert found[0].line == 1
    # A URL-encoded database password with the URL around it.
    url = f"postgres://app:{urllib.parse.quote(DB_PASSWORD + '/#', safe='')}@db/app"
    assert kinds(scan_commit([change("settings.py", f"DB = '{url}'\n")])) == ["database_url"]


def test_secret_in_a_file_name() -> None:
    found = scan_commit([change(f"keys/{ANTHROPIC_KEY}.txt", "harmless\n")])
    assert [(f.kind, f.line, f.where) for f in found] == [
        ("anthropic_api_key", 0, "in the file name")]
    encoded = base64.b64encode(AWS_KEY.encode()).decode().rstrip("=")
    assert kinds(scan_commit([change(f"cache/{encoded}", "x\n")])) == ["aws_access_key"]


def test_unreadable_large_file_is_a_finding_the_path_rule_can_accept() -> None:
    big = StagedChange(path="assets/video.bin", new=None, size_bytes=20_000_000)
    [finding] = scan_commit([big])
    assert finding.kind == "unscanned_file" and "20000000 bytes" in finding.message()
    assert scan_commit([big], Allowlist.parse("path:assets/*", source="allow")) == []


def test_findings_are_bounded() -> None:
    keys = "\n".join(f"K{i} = 'AKIA{i:016d}'" for i in range(MAX_FINDINGS * 3))
    assert len(scan_commit([change("many.py", keys)])) == MAX_FINDINGS


def test_ordinary_code_is_quiet() -> None:
    code = "\n".join([
        "import hashlib, base64",
        "DIGEST = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",
        "ICON = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA'",
        "def very_long_function_name_for_testing_things(): return 'sk-' + name",
        "url = f'postgres://{user}:{password}@{host}/{db}'",
        "headers = {'Authorization': f'Bearer {token}'}",
        "x = 'a' 'b' + 'c'",
        "COLORS = [255, 128, 0, 64, 32, 16, 8, 4, 2, 1, 0]",
        "UUID = '123e4567-e89b-12d3-a456-426614174000'",
    ])
    assert scan_commit([change("app.py", code)]) == []


def test_pathological_lines_stay_fast_enough_to_finish() -> None:
    # Quadratic regexes would not finish these in the test's timeout.
    long_name = "a" * 200_000 + " = '" + "b" * 20 + "'"
    assert scan_commit([change("x.py", long_name)]) == []
    assert scan_commit([change("y.py", "'" + "x' '" * 50_000 + "'")]) == []


# --- redaction -----------------------------------------------------------------------------

def test_redact_secrets_replaces_every_kind() -> None:
    pem = ("-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc+/=\n"
           + "-----END " + "RSA PRIVATE KEY-----")
    text = (f"aws {AWS_KEY} claude {ANTHROPIC_KEY} again {ANTHROPIC_KEY}\n"
            f"stripe {STRIPE_KEY} hook {SLACK_WEBHOOK} jwt {JWT}\n"
            f"db postgres://app:{DB_PASSWORD}@db.internal/app\n{pem}\nafter the key\n")
    redacted = redact_secrets(text)
    for secret in (AWS_KEY, ANTHROPIC_KEY, STRIPE_KEY, SLACK_WEBHOOK, JWT, DB_PASSWORD,
                   "MIIEowIBAAKCAQEA7"):
        assert secret not in redacted
    assert redacted.count("[REDACTED:anthropic_api_key]") == 2
    assert "postgres://app:[REDACTED:database_url]@db.internal/app" in redacted
    assert "[REDACTED:private_key]\nafter the key" in redacted
    for kind in ("aws_access_key", "stripe_key", "slack_webhook", "jwt"):
        assert f"[REDACTED:{kind}]" in redacted
    assert redact_secrets("nothing to see: postgres://u:password@h/db") == (
        "nothing to see: postgres://u:password@h/db")


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=",
               min_size=1, max_size=200))
def test_redaction_never_shows_more_than_four_characters(secret: str) -> None:
    shown = redact(secret)
    assert shown.startswith(secret[:4])
    assert f"({len(secret)} chars)" in shown
    if len(secret) > 4:
        assert secret not in shown


@given(st.text(max_size=300), st.text(max_size=300))
def test_redact_secrets_removes_any_key_in_any_text(before: str, after: str) -> None:
    text = f"{before} {ANTHROPIC_KEY} {after}"
    assert ANTHROPIC_KEY not in redact_secrets(text)
    assert [m.secret for m in find_credentials(redact_secrets(text))
            if m.secret == ANTHROPIC_KEY] == []
