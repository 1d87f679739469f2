"""The reference in docs/ builds strictly, works offline, and stays true to the code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from functions.core.db.tables import ALL_TABLES
from functions.core.settings import Settings, env_name
from tests.support import process
from tests.support.process import REPO_ROOT

DOCS = REPO_ROOT / "docs"
CONFIG = REPO_ROOT / "mkdocs.yml"


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build`` as ``make docs`` runs it (strict: the config says so, and so do we)."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    command += ["--config-file", str(config), "--site-dir", str(site)]
    return process.run(command, capture_output=True, text=True, cwd=config.parent)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    built = build(CONFIG, site)
    assert built.returncode == 0, built.stderr
    return site


def anchor_exists(site: Path, target: str) -> bool:
    """Whether ``page.md#anchor`` (relative to docs/) is a built page with that anchor."""
    page, _, anchor = target.partition("#")
    html = site / Path(page).with_suffix(".html")
    if not page.endswith(".md") or not html.is_file():
        return False
    return not anchor or f'id="{anchor}"' in html.read_text(encoding="utf-8")


class Assets(HTMLParser):
    """Every URL a page loads by itself: scripts, stylesheets, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {"script": "src", "img": "src", "iframe": "src", "link": "href"}
        url = dict(attrs).get(names.get(tag, ""))
        if url is not None:
            self.loaded.append(url)


def test_every_page_is_built_and_loads_nothing_from_another_host(site: Path) -> None:
    pages = {page.stem for page in DOCS.glob("*.md")}
    assert pages <= {page.stem for page in site.glob("*.html")}
    for html in site.glob("*.html"):
        assets = Assets()
        assets.feed(html.read_text(encoding="utf-8"))
        assert assets.loaded, html.name
        remote = [url for url in assets.loaded if re.match(r"^([a-z]+:)?//", url)]
        assert remote == [], f"{html.name} loads {remote}"


def test_a_broken_link_or_anchor_fails_the_build(tmp_path: Path) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(CONFIG, tmp_path / "mkdocs.yml")
    with (tmp_path / "docs/api.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [the settings](settings.md#no-such-setting).\n")
    built = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "settings.md#no-such-setting" in built.stderr

    (tmp_path / "docs/api.md").write_text("# API\n\nSee [gone](gone.md).\n", encoding="utf-8")
    built = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "gone.md" in built.stderr


def test_every_setting_is_in_the_settings_page() -> None:
    documented = set(re.findall(r"`(SWITCHBOARD_[A-Z0-9_]+)`", (DOCS / "settings.md").read_text()))
    missing = [env_name(field) for field in Settings.__struct_fields__]
    missing = [name for name in missing if name not in documented]
    assert missing == [], f"settings missing from docs/settings.md: {missing}"


NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    " fifteen sixteen seventeen eighteen nineteen twenty"
)


def test_the_data_model_names_every_table_and_counts_them() -> None:
    page = (DOCS / "data-model.md").read_text()
    missing = [t._meta.tablename for t in ALL_TABLES if f"- `{t._meta.tablename}`:" not in page]
    assert missing == [], f"tables missing from docs/data-model.md: {missing}"
    count = NUMBERS.split()[len(ALL_TABLES)]
    assert re.search(rf"\b{count} tables\b", page, re.IGNORECASE), f"not '{count} tables'"


def test_every_alert_runbook_is_a_page_and_anchor_of_the_docs(site: Path) -> None:
    rules = yaml.safe_load((REPO_ROOT / "monitoring/prometheus/rules/switchboard.yml").read_text())
    runbooks = [
        rule["annotations"]["runbook"]
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert runbooks
    broken = [url for url in runbooks if not url.startswith("docs/")]
    broken += [url for url in runbooks if not anchor_exists(site, url.removeprefix("docs/"))]
    assert broken == [], f"runbooks that lead nowhere: {sorted(set(broken))}"
