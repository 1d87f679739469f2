from __future__ import annotations

from pathlib import Path

import pytest

from functions.core.settings import (
    DEFAULT_DATABASE_URL,
    SettingsError,
    is_configured,
    load_settings,
)


def load(env: dict[str, str], dotenv: Path | None = None) -> object:
    return load_settings(env, dotenv=dotenv)


def test_defaults_need_no_environment() -> None:
    settings = load_settings({}, dotenv=None)
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.is_sqlite
    assert settings.llm_urls == ("http://127.0.0.1:8000/v1",)
    assert settings.log_level == "INFO"


def test_values_are_parsed_and_lists_split() -> None:
    settings = load_settings(
        {
            "SWITCHBOARD_DATABASE_URL": "postgresql://u@h:5432/db",
            "SWITCHBOARD_LLM_URLS": "http://a:8000/v1/, http://b:8000/v1",
            "SWITCHBOARD_LLM_API_KEY": "k",
            "SWITCHBOARD_LOG_FORMAT": "json",
            "SWITCHBOARD_LOG_LEVEL": "debug",
            "SWITCHBOARD_PORT": "9000",
            "PATH": "/usr/bin",
        },
        dotenv=None,
    )
    assert settings.llm_urls == ("http://a:8000/v1", "http://b:8000/v1")
    assert (settings.log_format, settings.log_level, settings.port) == ("json", "DEBUG", 9000)
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"SWITCHBOARD_DATABSE_URL": "x"},
            "SWITCHBOARD_DATABSE_URL (did you mean SWITCHBOARD_DATABASE_URL?)",
        ),
        ({"SWITCHBOARD_PORT": "eighty"}, "SWITCHBOARD_PORT"),
        ({"SWITCHBOARD_PORT": "70000"}, "SWITCHBOARD_PORT"),
        ({"SWITCHBOARD_LOG_FORMAT": "xml"}, "SWITCHBOARD_LOG_FORMAT"),
        ({"SWITCHBOARD_DATABASE_URL": "mysql://x"}, "SWITCHBOARD_DATABASE_URL"),
        ({"SWITCHBOARD_LLM_URLS": "localhost:8000"}, "SWITCHBOARD_LLM_URLS"),
        ({"SWITCHBOARD_LLM_TOTAL_TIMEOUT_S": "-1"}, "SWITCHBOARD_LLM_TOTAL_TIMEOUT_S"),
        ({"SWITCHBOARD_DATABASE_POOL_MODE": "statement"}, "SWITCHBOARD_DATABASE_POOL_MODE"),
        ({"SWITCHBOARD_DATABASE_POOL_MODE": "transaction"}, "not SQLite"),
        (
            {
                "SWITCHBOARD_DATABASE_URL": "postgresql://u@pgbouncer:6432/db",
                "SWITCHBOARD_DATABASE_LISTEN_URL": "sqlite:///x.sqlite",
            },
            "SWITCHBOARD_DATABASE_LISTEN_URL",
        ),
        ({"SWITCHBOARD_DATABASE_LISTEN_URL": "postgresql://u@h/db"}, "only for a PostgreSQL"),
    ],
)
def test_a_bad_or_unknown_variable_is_named_in_one_line(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env, dotenv=None)
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SWITCHBOARD_PORT=9001\nSWITCHBOARD_LOG_LEVEL=WARNING\n")
    settings = load_settings({"SWITCHBOARD_PORT": "9002"}, dotenv=dotenv)
    assert (settings.port, settings.log_level) == (9002, "WARNING")


def test_is_configured_sees_the_environment_and_the_dotenv_file(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    assert not is_configured("llm_urls", {}, dotenv=dotenv)
    assert is_configured("llm_urls", {"SWITCHBOARD_LLM_URLS": "http://a/v1"}, dotenv=dotenv)
    dotenv.write_text("SWITCHBOARD_LLM_URLS=http://b:8000/v1\n")
    assert is_configured("llm_urls", {}, dotenv=dotenv)


@pytest.mark.parametrize(
    "url",
    [
        "http://vllm:hunter2@gpu1:8000/v1",
        "https://token-hunter2@gpu1/v1",
        "http://127.0.0.1:8000/v1,http://a:hunter2@gpu2:8000/v1",
        "http://a:hunter2@[::1/v1",
        "http://gpu1:8000/v1?key=hunter2",
        "http://127.0.0.1:8000/v1,https://gpu2/v1?api_key=hunter2&x=1",
        "http://gpu1:8000/v1#hunter2",
    ],
)
def test_credentials_in_an_llm_url_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"SWITCHBOARD_LLM_URLS": url}, dotenv=None)
    message = str(info.value)
    assert "hunter2" not in message
    assert "\n" not in message
    assert message.startswith("invalid SWITCHBOARD_LLM_URLS entry ")
    assert "SWITCHBOARD_LLM_API_KEY" in message


@pytest.mark.parametrize(
    "url", ["ftp://gpu1/v1", "http://gpu1:99999/v1", "http://:8000/v1", "http://[::1/v1", "gpu1"]
)
def test_an_llm_url_that_cannot_be_used_is_refused_at_start(url: str) -> None:
    with pytest.raises(SettingsError, match="expected an http"):
        load_settings({"SWITCHBOARD_LLM_URLS": url}, dotenv=None)
