"""Settings: defaults that work on one machine, and one clear line naming the variable when a value is bad."""

import subprocess
import sys

import pytest

from wardrobe.config import Config, ConfigError


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
