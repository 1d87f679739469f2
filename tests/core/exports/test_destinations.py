"""Destinations: a URL carrying a secret is refused before anything is stored or written;
what an export writes in a folder is its owner's only."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.db.sql import fetch
from functions.core.errors import InvalidInputError
from functions.core.exports.destinations import INCOMPLETE, LocalDestination, open_destination
from functions.core.exports.schemas import ExportRequest
from functions.core.exports.service import export_history
from functions.core.settings import SettingsError, load_settings
from tests.core.exports.conftest import data_files, seed_history, writers_ended

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


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
async def test_export_files_are_the_owners_only_temporary_ones_too(
    shared_db: Engine[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: Any
):
    await seed_history()
    await writers_ended()
    root = tmp_path / "new" / "exports"  # neither folder exists yet
    seen: dict[str, int] = {}
    publish = LocalDestination.publish

    def publish_and_look(self: LocalDestination, temp: str, final: str) -> bool:
        # Before the rename: the temporary file and the folders holding it.
        seen[temp] = mode(self.root / temp)
        seen[INCOMPLETE] = mode(self.root / INCOMPLETE)
        seen["run folder"] = mode((self.root / temp).parent)
        return publish(self, temp, final)

    monkeypatch.setattr(LocalDestination, "publish", publish_and_look)
    result = await export_history(ExportRequest(destination=str(root), format=fmt))

    assert len(seen) == 4  # the data file, the manifest, two folders
    assert set(seen.values()) <= {0o600, 0o700}
    assert seen[INCOMPLETE] == seen["run folder"] == 0o700
    assert [mode(root.parent), mode(root)] == [0o700, 0o700]
    (data,) = data_files(root)
    assert mode(data) == mode(root / result.manifest_path) == 0o600


async def test_an_existing_folder_keeps_its_mode(shared_db: Engine[Any], tmp_path: Path):
    await seed_history()
    await writers_ended()
    tmp_path.chmod(0o755)  # noqa: ASYNC240 - the test's setup
    result = await export_history(ExportRequest(destination=str(tmp_path)))
    assert mode(tmp_path) == 0o755
    assert mode(tmp_path / result.manifest_path) == 0o600
