"""Swagger UI at `/docs` and ReDoc at `/redoc`, from assets packaged with the service.

FastAPI's own pages load their JavaScript and CSS from a CDN (and ReDoc its fonts from
Google), so they are blank on a machine without internet access. These pages load the same
bundles from the pinned PyPI package `fastapi-offline` (only its static files are used),
served under `/docs-assets`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS_URL = "/docs-assets"


def assets_dir() -> Path:
    """The folder of Swagger UI's and ReDoc's bundles inside the installed `fastapi_offline` package."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the API docs assets are missing: pip install fastapi-offline==1.7.7")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


router = APIRouter()


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        swagger_ui_parameters={"persistAuthorization": True},
    )


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
