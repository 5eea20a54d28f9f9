"""The web chat page: ``GET /ui`` and its static files, shipped inside the package.

The page is plain HTML, CSS and JavaScript modules under ``static/`` (no build step, nothing fetched
from elsewhere). Every response carries a strict Content-Security-Policy (scripts and connections only
from this server, no inline script), so neither the page nor anything a model writes into it can
load or send anything beyond the server it came from. The files are open (no API key needed, see
``pollama.server.auth``); the API calls the page makes are not.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException

router = APIRouter(tags=["ui"], include_in_schema=False)

# The page's own address prefix (open without an API key) and what it may load.
PAGE_PATH = "/ui"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@cache
def static_files() -> dict[str, bytes]:
    """Every file of the page by name (read once from the installed package)."""
    folder = resources.files(__package__).joinpath("static")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.is_file()}


def _respond(name: str) -> Response:
    files = static_files()
    suffix = name[name.rfind(".") :] if "." in name else ""
    if name not in files or suffix not in _TYPES:
        raise HTTPException(404)
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Response(files[name], media_type=_TYPES[suffix], headers=headers)


@router.head(PAGE_PATH)
@router.get(PAGE_PATH)
async def page() -> Response:
    """The chat page."""
    return _respond("index.html")


@router.head(PAGE_PATH + "/{name}")
@router.get(PAGE_PATH + "/{name}")
async def static_file(name: str) -> Response:
    """One of the page's files (``app.js``, ``style.css``...); only names shipped in ``static/``."""
    return _respond(name)
