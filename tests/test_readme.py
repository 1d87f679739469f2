"""The README is a newcomer's page: what Switchboard is, the two commands, a walk-through,
and links into docs/ (tests/test_docs.py checks the pages themselves)."""

from __future__ import annotations

import re
from pathlib import Path

from markdown.extensions.toc import slugify

from tests.support.process import REPO_ROOT

README = REPO_ROOT / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    return [url for url in LINK.findall(text) if not re.match(r"^[a-z]+:", url)]


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as MkDocs (and GitHub, for plain headings) make them."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {slugify(re.sub(r"[`*]", "", heading), "-") for heading in headings}


def test_every_relative_link_of_the_readme_resolves() -> None:
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = REPO_ROOT / path if path else README
        if not target.is_file() or (anchor and anchor not in anchors(target)):
            broken.append(link)
    assert broken == [], f"README links that lead nowhere: {broken}"


def test_the_readme_leads_to_every_page_of_the_docs() -> None:
    linked = {link.partition("#")[0] for link in relative_links(README.read_text())}
    pages = {f"docs/{page.name}" for page in (REPO_ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), "pages the README does not link to"
