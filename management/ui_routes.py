"""The status page's routes: ``/ui`` (the page, or its login form), its static files, login and logout, and
``GET /ui/state``, the JSON the page polls.

The page's files ship in the package (``management/ui/``: HTML, JS and CSS, no build step, no CDN) and are
served only from that folder: a path that leads out of it, or to a kind of file the page does not use, is a
404. The page itself needs a session (``ui_session``) or the bearer header; its script and stylesheet do not,
so the login form can use them (they hold nothing but the page's code). The page's actions call the
management API itself with the session cookie and the CSRF header (``route_support.require_token``).

Not in the OpenAPI description: this is the page's own data feed, and its shape follows the page.
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from modelpool.deployments.errors import RequestError
from modelpool.management import ui_session
from modelpool.management.route_support import authorized, check_management_token, in_thread, limited_body, state

router = APIRouter(include_in_schema=False)

UI_DIR = Path(__file__).resolve().parent / "ui"
#: The kinds of file the page is made of, and their content types; anything else in the folder is not served.
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon", ".json": "application/json", ".woff2": "font/woff2"}
#: On the HTML answers: scripts only from this origin (an injected <script> does not run), no framing (the page
#: has buttons worth clickjacking), inline style attributes allowed (the progress bars' widths).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
LOGIN_FORM = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>modelpool status: log in</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/ui/static/style.css">
</head>
<body>
  <form class="login" method="post" action="/ui/login" data-testid="login-form">
    <h1>modelpool</h1>
    <p class="muted">The status page needs the management token (its file's path is printed by
      <code>modelpool start</code>).</p>
    {message}
    <label>Management token
      <input type="password" name="token" autocomplete="current-password" required autofocus data-testid="token">
    </label>
    <button type="submit" data-testid="login">Log in</button>
  </form>
</body>
</html>
"""


def login_form(message: str = "", status: int = 401) -> HTMLResponse:
    """The login form, with ``message`` (escaped) above the field; never the token someone typed."""
    shown = f'<p class="error" role="alert" data-testid="login-message">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(LOGIN_FORM.replace("{message}", shown), status_code=status, headers=PAGE_HEADERS)


def ui_file(relative: str) -> Optional[Path]:
    """The file of the page at ``relative`` below ``management/ui/``, or None: outside it (``..``, an absolute
    path, a symlink leading out), missing, or not a kind of file the page is made of."""
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    root = UI_DIR.resolve()
    try:
        candidate = (root / relative).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    if not candidate.is_relative_to(root) or candidate.suffix not in CONTENT_TYPES or not candidate.is_file():
        return None
    return candidate


def _signed_in(request: Request) -> tuple[bool, bool]:
    """(authenticated, had an expired or wrong session): the bearer header, else a valid session cookie."""
    header = request.headers.get("authorization")
    if header is not None:
        try:
            check_management_token(header)
            return True, False
        except RequestError:
            return False, False
    session = request.cookies.get(ui_session.SESSION_COOKIE)
    if session is None:
        return False, False
    valid = ui_session.session_valid(session, state.token, time.time())
    return valid, not valid


def _is_https(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


@router.get("/ui")
async def page(request: Request) -> Response:
    """The status page once signed in (``/ui/`` too: the trailing slash is dropped), else the login form (401)."""
    signed_in, expired = _signed_in(request)
    if not signed_in:
        return login_form("Your session has expired; log in again." if expired else "")
    index = ui_file("index.html")
    if index is None:
        raise RequestError("the status page's files are missing from this installation (management/ui/index.html); "
                           "reinstall modelpool", status=500, field="path")
    return FileResponse(index, media_type=CONTENT_TYPES[".html"], headers=PAGE_HEADERS)


@router.get("/ui/static")  # the folder itself (``/ui/static/`` too): without this route Starlette would answer
@router.get("/ui/static/{path:path}")  # /ui/static with a redirect to /ui/static/, which loses its slash again
async def static_file(path: str = "") -> Response:
    found = ui_file(path)
    if found is None:
        raise RequestError(f"no file '{path}' in the status page", status=404, field="path")
    return FileResponse(found, media_type=CONTENT_TYPES[found.suffix],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """The form's ``token`` field: the management token sets the session cookie and goes to ``/ui`` (303);
    anything else is the form again (401) with a message."""
    body = await limited_body(request)
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=16)
    except ValueError:
        return login_form("The form could not be read; send it again.", 400)
    presented = (fields.get("token") or [""])[0].strip()
    expected = state.token
    if not presented or not expected:
        return login_form("Enter the management token.")
    try:
        check_management_token(f"Bearer {presented}")
    except RequestError:
        return login_form("That is not the management token.")
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(ui_session.SESSION_COOKIE, ui_session.new_session(expected, time.time()),
                        max_age=ui_session.SESSION_TTL_S, path="/", httponly=True, samesite="strict",
                        secure=_is_https(request))
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    """Clear the session cookie and go back to the login form (303 to ``/ui``)."""
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(ui_session.SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=_is_https(request))
    return response


@router.get("/ui/state", dependencies=authorized)
async def ui_state(request: Request) -> JSONResponse:
    """The page's data (``status_page``), with the CSRF token of the caller's session (null without one)."""
    if state.status is None:
        from modelpool.management.status_sources import StatusSources

        state.status = StatusSources(state.manager)
    answer = dict(await in_thread(state.status.state))
    session = request.cookies.get(ui_session.SESSION_COOKIE) if "authorization" not in request.headers else None
    answer["csrfToken"] = ui_session.csrf_token(session, state.token) if session else None
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})
