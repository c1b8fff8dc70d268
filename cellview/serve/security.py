"""Who may connect, and what every response carries: an ASGI guard in front of the whole app.

- **Token.** When the server listens beyond this machine (or a token was given), every request must carry the
  access token: ``Authorization: Bearer TOKEN``, the ``X-CellView-Token`` header, the ``token`` query parameter
  (the printed link; ``GET /?token=…`` sets an HttpOnly, SameSite=Strict cookie and drops it from the
  address), or that cookie. Compared in constant time (``hmac.compare_digest``).
- **Host and origin.** On localhost the Host header must name this machine (a web page that rebinds its own
  domain to 127.0.0.1 cannot read the API); a state-changing request whose Origin is another site is refused.
- **Sessions.** A random HttpOnly cookie names the browser's session: the page lists that session's jobs only.
- **Headers.** A strict Content-Security-Policy (nothing but this server's own scripts, styles and images),
  no sniffing, no framing, no referrer (job links are capabilities), and nothing cached from the API.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

TOKEN_COOKIE = "cellview_token"
SESSION_COOKIE = "cellview_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}

OSD_STYLE_SHA256 = "9xTiqzfwFaL2SGb1rmr8gysEwVVjIvqWAgmZgqFqpEE="
"""The one inline stylesheet OpenSeadragon adds (its touch-screen focus rule), allowed by its hash and nothing else."""

CSP = ("default-src 'self'; script-src 'self'; "
       f"style-src 'self' 'sha256-{OSD_STYLE_SHA256}'; img-src 'self' data: blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

TOKEN_MESSAGE = ("This CellView server needs its access token: open the link it printed when it started "
                 "(…/?token=…), or send the header 'Authorization: Bearer TOKEN'.")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_matches(given: str | None, token: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def _hostname(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookies(raw: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header counts as none
        return {}
    return {k: m.value for k, m in jar.items()}


class Guard:
    """The ASGI middleware (see the module docstring); ``token`` None: no token (localhost only)."""

    def __init__(self, app: Any, token: str | None, local_only: bool) -> None:
        self.app = app
        self.token = token
        self.local_only = local_only

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        host = headers.get("host", "")
        if self.local_only and _hostname(host) not in LOCAL_NAMES:
            await _json(send, 400, {"error": "This server answers only requests addressed to this machine "
                                             "(localhost / 127.0.0.1)."})
            return
        origin = headers.get("origin")
        if method not in SAFE_METHODS and origin and origin != "null":
            if urlsplit(origin).netloc.lower() != host.lower():
                await _json(send, 403, {"error": "Requests from another site are refused."})
                return
        cookies = _cookies(headers.get("cookie", ""))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        set_cookies: list[str] = []
        if self.token is not None:
            auth = headers.get("authorization", "")
            bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            from_query = (query.get("token") or [None])[0]
            given = [bearer, headers.get("x-cellview-token"), from_query, cookies.get(TOKEN_COOKIE)]
            if not any(token_matches(g, self.token) for g in given):
                await _json(send, 401, {"error": TOKEN_MESSAGE}, [(b"www-authenticate", b'Bearer realm="cellview"')])
                return
            if token_matches(from_query, self.token) and method == "GET" and scope.get("path") == "/":
                rest = {k: v for k, v in query.items() if k != "token"}
                cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                location = "/" + (("?" + urlencode(rest, doseq=True)) if rest else "")
                await _redirect(send, location, [cookie])
                return
        session = cookies.get(SESSION_COOKIE, "")
        if not (16 <= len(session) <= 64 and session.replace("-", "").replace("_", "").isalnum()):
            session = secrets.token_urlsafe(16)
            set_cookies.append(f"{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/")
        scope.setdefault("state", {})["session"] = session
        api = scope.get("path", "").startswith("/api/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                         (b"cross-origin-resource-policy", b"same-origin")]
                names = {k.lower() for k, _ in message.get("headers", [])}
                if api and b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                extra += [(b"set-cookie", c.encode("latin-1")) for c in set_cookies]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _json(send: Any, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


async def _redirect(send: Any, location: str, cookies: list[str]) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
                            (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"),
                            *[(b"set-cookie", c.encode("latin-1")) for c in cookies]]})
    await send({"type": "http.response.body", "body": b""})
