"""The interactive docs work without internet: every page references only URLs the gateway
serves itself, each of those answers, and the files are the pinned ones, packaged."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from functions.core.web.offline_docs import STATIC_DOCS
from tests.support import process
from tests.support.gateway import GatewayProcess
from tests.support.process import HOST, REPO_ROOT, free_port

# sha256 of the files as the npm registry ships them (static/docs/README.md says which).
PINNED = {
    "swagger-ui-5.35.0/swagger-ui-bundle.js": (
        "e6a898692f2d768e807c3ba4626068a69a2c5dd960dd6c76f3e4d3a3de180af2"
    ),
    "swagger-ui-5.35.0/swagger-ui-standalone-preset.js": (
        "5243d492e14505e0cab87ac8b0195d0e615943e651743b2b698450a46eb470be"
    ),
    "swagger-ui-5.35.0/swagger-ui.css": (
        "5ed08757e53da3e026d6cbecc61fe5d43585c9560b302d534ad56692519a273d"
    ),
    "swagger-ui-5.35.0/favicon-32x32.png": (
        "3ed612f41e050ca5e7000cad6f1cbe7e7da39f65fca99c02e99e6591056e5837"
    ),
    "scalar-1.72.1/standalone.js": (
        "bf091006bdc3af6067af77c2f534812e3e633e94a94e87138069f570f33b762c"
    ),
}
# src="...", href='...': every URL a page makes the browser load.
_REFERENCES = re.compile(r"""(?:src|href|data-url)\s*=\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    url = f"sqlite:///{tmp_path_factory.mktemp('docs') / 'docs.sqlite'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    process.run(
        [sys.executable, "-m", "functions.cli", "db", "migrate"],
        cwd=REPO_ROOT,
        env={**env, "SWITCHBOARD_DATABASE_URL": url, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        check=True,
    )
    with GatewayProcess(url, [f"http://{HOST}:{free_port()}/v1"]) as app:
        yield app


@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
def test_a_docs_page_loads_nothing_from_elsewhere(gateway: GatewayProcess, page: str) -> None:
    with httpx.Client(base_url=gateway.root_url, timeout=10) as client:
        html = client.get(page)
        assert html.status_code == 200
        assert html.headers["content-type"].startswith("text/html")
        references = _REFERENCES.findall(html.text)
        assert len(references) >= 3, html.text
        for reference in references:
            assert reference.startswith("/"), reference
            assert not reference.startswith("//"), reference
        assert "http://" not in html.text
        assert "https://" not in html.text
        for reference in references:
            response = client.get(reference)
            assert response.status_code == 200, reference
            assert response.content, reference
        if page == "/schema":  # Scalar's fonts come from its CDN unless told otherwise
            assert '"withDefaultFonts":false' in html.text.replace(" ", "")


def test_assets_are_cached_for_a_year_and_unknown_ones_are_a_json_404(
    gateway: GatewayProcess,
) -> None:
    with httpx.Client(base_url=gateway.root_url, timeout=10) as client:
        js = client.get("/schema/assets/scalar-1.72.1/standalone.js")
        assert js.status_code == 200
        assert "javascript" in js.headers["content-type"]
        assert "max-age=31536000" in js.headers["cache-control"]
        for missing in ("/schema/assets/nothing.js", "/schema/redoc", "/schema/elements"):
            response = client.get(missing)
            assert response.status_code == 404, missing
            assert response.json()["error"]["code"] == "not_found", missing


def test_the_files_are_the_pinned_ones_with_their_licenses() -> None:
    for name, digest in PINNED.items():
        assert hashlib.sha256((STATIC_DOCS / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (STATIC_DOCS / "swagger-ui-5.35.0/LICENSE").read_text()
    assert "MIT License" in (STATIC_DOCS / "scalar-1.72.1/LICENSE").read_text()


def test_every_asset_is_package_data() -> None:
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["functions.core.web"]
    package = REPO_ROOT / "functions/core/web"
    packaged = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    shipped = {path for path in STATIC_DOCS.rglob("*") if path.is_file()}
    assert shipped
    assert shipped <= packaged, sorted(str(p) for p in shipped - packaged)
    assert all(isinstance(path, Path) for path in shipped)
