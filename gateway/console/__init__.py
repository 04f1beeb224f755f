"""The web console (`/console`, with `/` sending there) and its static files, including Swagger UI's for `/docs`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from gateway.console.pages import install_exception_handlers, root_router, router
from gateway.console.session import Sessions

STATIC = Path(__file__).parent / "static"


def install_console(app: FastAPI) -> None:
    app.state.console_sessions = Sessions(app.state.settings)
    install_exception_handlers(app)
    app.include_router(root_router)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")


def swagger_page(openapi_url: str, title: str) -> HTMLResponse:
    """Swagger UI from the bundled assets (swagger-ui-dist): /docs works with no network."""
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url="/console/static/swagger/swagger-ui-bundle.js",
        swagger_css_url="/console/static/swagger/swagger-ui.css",
        swagger_favicon_url="/console/static/favicon.svg",
    )
