"""``/docs`` (Swagger UI) and ``/redoc`` from files shipped in the package, not from a CDN, so the
API documentation works on a machine without network access (see static/vendor/README.md)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

VENDOR = "/static/vendor"
VERSIONS = {"swagger-ui": "5.35.0", "redoc": "2.5.4"}  # in the URLs: the assets are cached for good


def add_docs(app: FastAPI) -> None:
    """Routes for the two documentation pages; the app is made with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"
    swagger, redoc = VERSIONS["swagger-ui"], VERSIONS["redoc"]

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} API",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js?v={swagger}",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css?v={swagger}",
            swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png?v={swagger}",
            oauth2_redirect_url=None)

    @app.get("/redoc", include_in_schema=False)
    def redoc_ui() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} API",
                              redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js?v={redoc}",
                              redoc_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png?v={swagger}",
                              with_google_fonts=False)
