"""Destinations: a URL carrying a secret is refused before anything is stored or written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.db.sql import fetch
from functions.core.errors import InvalidInputError
from functions.core.exports.destinations import LocalDestination, open_destination
from functions.core.exports.schemas import ExportRequest
from functions.core.exports.service import export_history
from functions.core.settings import SettingsError, load_settings
from tests.core.exports.conftest import seed_history, writers_ended

SECRET_URLS = [
    "s3://AKIAEXAMPLE:hunter2@bucket/history",
    "s3://hunter2@bucket/history",
    "gcs://user:hunter2@bucket",
    "file://me:hunter2@/tmp/exports",
    "s3://bucket/history?X-Amz-Signature=hunter2",
    "s3://bucket/history?token=hunter2#x",
    "s3://bucket/history#hunter2",
    "s3://a:hunter2@[::1/history",
]


@pytest.mark.parametrize("url", SECRET_URLS)
async def test_a_destination_carrying_a_secret_is_refused_without_repeating_it(
    shared_db: Engine[Any], url: str, caplog: pytest.LogCaptureFixture
):
    await seed_history()
    await writers_ended()
    with pytest.raises(InvalidInputError) as refused:
        await export_history(ExportRequest(destination=url))
    message = str(refused.value)
    assert "hunter2" not in message
    assert message.startswith("invalid destination ")
    assert ("credentials" in message) or ("query or fragment" in message)
    assert refused.value.details == {"field": "destination"}
    assert refused.value.status_code == 400
    # Nothing stored (no series, so no URL in export_watermark), nothing logged with it.
    assert await fetch("SELECT destination FROM export_watermark") == []
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("url", SECRET_URLS)
def test_the_llm_url_and_the_export_destination_share_the_rule(url: str):
    """Both refuse the same URLs (the scheme aside), neither repeating the secret."""
    with pytest.raises(InvalidInputError) as destination:
        open_destination(url)
    llm_url = "http://" + url.split("://", 1)[1]
    with pytest.raises(SettingsError) as llm:
        load_settings({"SWITCHBOARD_LLM_URLS": llm_url}, dotenv=None)
    for refusal in (str(destination.value), str(llm.value)):
        assert "hunter2" not in refusal
    same_kind = "credentials" if "credentials" in str(destination.value) else "query or fragment"
    assert same_kind in str(llm.value)


def test_a_folder_path_may_hold_question_marks_and_hashes(tmp_path: Path):
    folder = tmp_path / "exports #1?"
    destination = open_destination(str(folder))
    assert isinstance(destination, LocalDestination)
    assert destination.url == str(folder)
