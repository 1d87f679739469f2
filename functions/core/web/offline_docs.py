"""The interactive API docs with every asset served by the app itself.

Litestar's render plugins load Scalar (at ``@latest``), Swagger UI, a stylesheet and a
favicon from CDNs: a blank page on a machine without internet, and whatever version the CDN
serves that day. Here each page references only pinned files shipped in this package
(``static/docs``, see its README for where they come from), served under
:data:`ASSETS_PATH` with a year-long cache (the version is in every path).
"""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import (
    OpenAPIRenderPlugin,
    ScalarRenderPlugin,
    SwaggerRenderPlugin,
)
from litestar.router import Router
from litestar.static_files import create_static_files_router

STATIC_DOCS = Path(__file__).parent / "static" / "docs"
ASSETS_PATH = "/schema/assets"
SWAGGER_UI = "swagger-ui-5.35.0"
SCALAR = "scalar-1.72.1"


def asset(name: str) -> str:
    """The URL path of one file of :data:`STATIC_DOCS`."""
    return f"{ASSETS_PATH}/{name}"


FAVICON = f"<link rel='icon' type='image/png' href='{asset(f'{SWAGGER_UI}/favicon-32x32.png')}'>"


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """Scalar at ``/schema``, Swagger UI at ``/schema/swagger``: local assets only."""
    return [
        SwaggerRenderPlugin(
            path="/swagger",
            js_url=asset(f"{SWAGGER_UI}/swagger-ui-bundle.js"),
            css_url=asset(f"{SWAGGER_UI}/swagger-ui.css"),
            standalone_preset_js_url=asset(f"{SWAGGER_UI}/swagger-ui-standalone-preset.js"),
            favicon=FAVICON,
        ),
        ScalarRenderPlugin(
            path="/",
            js_url=asset(f"{SCALAR}/standalone.js"),
            css_url=asset("scalar.css"),
            favicon=FAVICON,
            # Scalar's default fonts come from its own CDN; the system's are used instead.
            options={"withDefaultFonts": False},
        ),
    ]


def assets_router() -> Router:
    """The static route that serves :data:`STATIC_DOCS` (left out of the OpenAPI document)."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[STATIC_DOCS],
        name="docs-assets",
        cache_control=CacheControlHeader(max_age=365 * 24 * 3600, public=True),
        include_in_schema=False,
    )
