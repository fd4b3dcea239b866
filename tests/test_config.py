"""Settings: defaults that work on one machine, and one clear line naming the variable when a value is bad."""

import dataclasses
import subprocess
import sys
import typing

import pytest

from wardrobe.config import _SETTING, Config, ConfigError, documented_settings


def test_defaults_work_on_one_machine(tmp_path):
    config = Config.from_env({"WARDROBE_DATA_DIR": str(tmp_path)})
    assert config.bind == "127.0.0.1:8000"
    assert (config.db_pool_size, config.db_pool_overflow) == (20, 10)
    assert config.max_upload_bytes == 10 * 1024 * 1024
    assert config.openai_api_keys == ()
    # A dev bot token is generated once and then reused, so `make token` and the API agree.
    assert (
        config.telegram_bot_token == Config.from_env({"WARDROBE_DATA_DIR": str(tmp_path)}).telegram_bot_token
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WARDROBE_DB_POOL_SIZE", "many"),
        ("WARDROBE_BIND", "8000"),
        ("WARDROBE_DB_POOL_SIZE", "0"),
        ("WARDROBE_RATE_LIMIT_UPLOAD", "x/y"),
        ("WARDROBE_REDIS_URL", "localhost"),
    ],
)
def test_bad_values_name_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({"WARDROBE_DATA_DIR": str(tmp_path), name: value})


def test_gunicorn_refuses_to_start_with_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py"],
        env={"WARDROBE_DATA_DIR": str(tmp_path), "WARDROBE_DB_POOL_SIZE": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "WARDROBE_DB_POOL_SIZE='lots' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_field_is_one_setting_whose_default_parses_to_its_type():
    # The field is a setting's only declaration: a field added without `setting(...)` would never be read
    # from the environment, a copied line would make two fields read one variable, and a default or parser
    # that does not fit the annotation would only show up at start-up.
    fields = dataclasses.fields(Config)
    assert [f.name for f in fields if _SETTING not in f.metadata] == []
    variables = [name for name, _ in documented_settings()]
    assert len(variables) == len(fields)
    assert sorted(name for name in set(variables) if variables.count(name) > 1) == []
    hints = typing.get_type_hints(Config)
    for field in fields:
        name, parse, default = field.metadata[_SETTING]
        expected = typing.get_origin(hints[field.name]) or hints[field.name]
        assert isinstance(parse(default), expected), f"{name}={default!r} does not parse to {expected}"


def test_blank_means_the_default_except_for_lists(tmp_path):
    config = Config.from_env(
        {"WARDROBE_DATA_DIR": str(tmp_path), "WARDROBE_BIND": " ", "WARDROBE_MEMCACHED_SERVERS": ""}
    )
    assert config.bind == "127.0.0.1:8000"
    assert config.memcached_servers == ()
    assert Config.from_env({"WARDROBE_DATA_DIR": str(tmp_path)}).memcached_servers == ("127.0.0.1:11211",)


def test_overrides_are_by_field_and_a_config_can_be_built_or_replaced_directly(tmp_path):
    config = Config.from_env({"WARDROBE_DATA_DIR": str(tmp_path)}, db_pool_size=3, telegram_bot_token="1:x")
    assert (config.db_pool_size, config.telegram_bot_token) == (3, "1:x")
    assert Config(**dataclasses.asdict(config)) == config
    assert dataclasses.replace(config, bind="0.0.0.0:9000").bind == "0.0.0.0:9000"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bind = "0.0.0.0:9000"
