"""Configuration loading: the shipped file, errors naming key and file, env overrides, reload."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import msgspec
import pytest

from buildrunnerd.config import (
    Config,
    check_config_main,
    describe_config,
    load_config,
    reloadable_diff,
)
from buildrunnerd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "buildrunner.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_shipped_file_loads_to_exactly_the_defaults() -> None:
    assert load_config(SHIPPED, env={}) == Config()


def test_shipped_file_documents_every_key() -> None:
    # Optional keys whose default is "not set" appear commented out ("# key = ..."); every
    # other key appears as a real assignment in its table.
    text = SHIPPED.read_text()
    data = msgspec.to_builtins(Config())

    def keys(node: dict[str, object], prefix: str = "") -> list[str]:
        out: list[str] = []
        for k, v in node.items():
            full = f"{prefix}{k}"
            out.extend(keys(v, full + ".") if isinstance(v, dict) else [full])
        return out

    for key in keys(data):
        leaf = key.rsplit(".", 1)[-1]
        assert f"\n{leaf} = " in text or f"\n# {leaf} = " in text, key


def test_no_file_means_defaults() -> None:
    assert load_config(None, env={}) == Config()


def test_unknown_key_names_key_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "[daemon]\nworkers = 2\nwrkers = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "daemon.wrkers" in message
    assert f"{path}:3" in message
    assert "unknown key" in message
    assert info.value.data["key"] == "daemon.wrkers"
    assert info.value.data["file"] == str(path)
    assert info.value.data["line"] == 3


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '# comment\n\n[agent]\nmax_turns = "many"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "agent.max_turns" in str(info.value)
    assert f"{path}:4" in str(info.value)
    assert "Expected `int`" in str(info.value)


def test_bad_choice_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[daemon]\nlog_format = "xml"\n')
    with pytest.raises(ConfigError, match=r"daemon\.log_format.*'xml'"):
        load_config(path, env={})


def test_price_table_error_names_the_model(tmp_path: Path) -> None:
    path = _write(tmp_path, '[pricing.models."claude-x"]\ninput_per_mtok = 1.0\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "pricing.models.claude-x" in str(info.value)
    assert "output_per_mtok" in str(info.value)


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "[daemon]\nworkers = 2\nlog_level = info\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert f"{path}:3" in str(info.value)
    assert "invalid TOML" in str(info.value)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found.*BUILDRUNNER_CONFIG"):
        load_config(tmp_path / "nope.toml", env={})


def test_values_out_of_range_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "[daemon]\nworkers = 0\n")
    with pytest.raises(ConfigError, match=r":2: daemon\.workers: must be greater than 0"):
        load_config(path, env={})


def test_model_without_price_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, '[models]\nmedium = "claude-unknown"\n')
    with pytest.raises(ConfigError, match=r"models\.medium.*claude-unknown.*no price"):
        load_config(path, env={})


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[daemon]\nworkers = 2\nlog_format = "console"\n')
    env = {
        "BUILDRUNNER_WORKERS": "7",
        "BUILDRUNNER_LOG_FORMAT": "json",
        "BUILDRUNNER_BACKEND": "simulated",
        "BUILDRUNNER_BUDGET_USD": "12.5",
        "BUILDRUNNER_TEST_CMD": "make test",
    }
    config = load_config(path, env=env)
    assert config.daemon.workers == 7
    assert config.daemon.log_format == "json"
    assert config.daemon.backend == "simulated"
    assert config.budget_usd == 12.5
    assert config.verify.test_cmd == "make test"
    # Untouched keys keep the file's or the default values.
    assert config.daemon.max_workers_per_run == 4


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"\$BUILDRUNNER_WORKERS='lots'.*daemon\.workers"):
        load_config(None, env={"BUILDRUNNER_WORKERS": "lots"})
    with pytest.raises(ConfigError, match=r"\$BUILDRUNNER_BACKEND \(sets daemon\.backend\)"):
        load_config(None, env={"BUILDRUNNER_BACKEND": "openai"})


def test_describe_config_round_trips(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'budget_usd = 3.5\n[daemon]\nworkers = 9\n[verify]\ntest_cmd = "pytest -q \\"x\\""\n'
        '[pricing.models."my model"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n'
        "cache_write_per_mtok = 1.5\ncache_read_per_mtok = 0.5\n",
    )
    config = load_config(path, env={})
    text = describe_config(config)
    assert msgspec.convert(tomllib.loads(text), Config) == config
    assert "# import_check = (not set)" in text


def test_reloadable_diff_separates_restart_keys() -> None:
    old = Config()
    new = msgspec.structs.replace(
        old,
        daemon=msgspec.structs.replace(old.daemon, log_level="debug", max_frame_bytes=1024),
        budget_usd=10.0,
    )
    applied, needs_restart = reloadable_diff(old, new)
    assert applied == ["budget_usd", "daemon.log_level"]
    assert needs_restart == ["daemon.max_frame_bytes"]
    assert reloadable_diff(old, old) == ([], [])


def test_check_config_main_prints_or_fails(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(SHIPPED, env={}, out=out, err=err) == 0
    assert f"# source: {SHIPPED}" in out.getvalue()
    assert "workers = 4" in out.getvalue()
    bad = _write(tmp_path, "[retention]\nevents_dayz = 3\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(bad, env={}, out=out, err=err) == 1
    assert "retention.events_dayz" in err.getvalue()
    assert out.getvalue() == ""


def test_check_config_main_finds_the_xdg_file(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "buildrunner").mkdir(parents=True)
    (xdg / "buildrunner" / "config.toml").write_text("[daemon]\nworkers = 3\n")
    out = io.StringIO()
    assert check_config_main(None, env={"XDG_CONFIG_HOME": str(xdg)}, out=out) == 0
    assert "workers = 3" in out.getvalue()


def test_configuration_doc_lists_every_key_and_variable() -> None:
    from buildrunnerd.config import ENV_OVERRIDES

    doc = (ROOT / "docs" / "configuration.md").read_text()
    data = msgspec.to_builtins(Config())
    for section, body in data.items():
        if not isinstance(body, dict):
            assert f"`{section}`" in doc, section
            continue
        for key in body:
            if section == "pricing" and key == "models":
                for field in ("input_per_mtok", "output_per_mtok", "cache_write_per_mtok",
                              "cache_read_per_mtok"):
                    assert f"`pricing.models.<model>.{field}`" in doc, field
                continue
            assert f"`{section}.{key}`" in doc, f"{section}.{key}"
    for var in ENV_OVERRIDES:
        assert f"`{var}`" in doc, var
