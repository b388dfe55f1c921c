"""What every request passes before a route sees it: the Host it names (DNS rebinding), the
token (any address but loopback), where a POST or DELETE comes from (cross-site requests), its
content type and the size and pace of its body.

The checks are an ASGI middleware (:class:`Guard`) and one coroutine for bodies
(:func:`read_body`); every refusal is JSON ``{"error": "…"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "")
MAX_BODY = 16 << 20  # bytes of one request: a 2048² PNG as a data URL fits
BODY_SECONDS = 30.0  # the most a client may take to send its body
# headers on every answer: no sniffing, no framing by other sites, nothing cached
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


class Refused(Exception):
    """A request refused with an HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, self.status, headers=self.headers)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) is this machine only."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Policy:
    """Who may ask: the address and port served, the token (None: loopback only, no token)."""

    host: str
    port: int
    token: str | None = None

    @property
    def any_host(self) -> bool:
        """Listening on every address: the names it is reached by are unknown, so any Host is
        taken (the token guards it)."""
        return self.host in WILDCARDS

    def allowed_hosts(self) -> set[str]:
        """The Host header values that name this server."""
        names = {self.host if ":" not in self.host else f"[{self.host}]"}
        if is_loopback(self.host):
            names |= set(LOOPBACK_NAMES)
        return {f"{n}:{self.port}" for n in names} | (names if self.port == 80 else set())

    def check(self, scope: Scope) -> None:
        """Refuse a request that does not name this server, lacks the token, or is a POST or
        DELETE sent by a page of another origin."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.any_host and host.lower() not in self.allowed_hosts():
            raise Refused(403, f"Host {host!r} does not name this server (DNS rebinding?)")
        path = scope.get("path", "")
        if self.token is not None and path.startswith(("/api/", "/outputs/")):
            given = headers.get("authorization", "")
            expected = f"Bearer {self.token}"
            if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
                raise Refused(401, "this server needs its token: Authorization: Bearer TOKEN",
                              {"WWW-Authenticate": "Bearer"})
        if scope.get("method") in ("POST", "DELETE", "PUT", "PATCH"):
            origin = headers.get("origin")
            if origin is not None and origin.lower() != f"{scope.get('scheme', 'http')}://{host}".lower():
                raise Refused(403, f"a request from another origin ({origin}) is refused")
            if headers.get("sec-fetch-site") == "cross-site":
                raise Refused(403, "a cross-site request is refused")


class Guard:
    """ASGI middleware: :meth:`Policy.check` on every HTTP request, :data:`SAFE_HEADERS` on
    every answer."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.policy.check(scope)
        except Refused as refused:
            await refused.response()(scope, receive, send)
            return

        async def send_safe(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in SAFE_HEADERS.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_safe)


async def read_json(request: Request, cap: int = MAX_BODY, seconds: float = BODY_SECONDS
                    ) -> object:
    """The JSON body of a POST: application/json (415), at most ``cap`` bytes whether announced
    by Content-Length or streamed in chunks (413), sent within ``seconds`` (408), UTF-8 (400),
    JSON without NaN or Infinity and not nested past Python's recursion limit (400)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise Refused(415, f"the body must be application/json, not {kind or 'unnamed'}")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > cap):
        raise Refused(413, f"a request may hold at most {cap:,} bytes", {"Connection": "close"})
    try:
        body = await asyncio.wait_for(_read(request, cap), seconds)
    except TimeoutError:
        raise Refused(408, f"the body took longer than {seconds:g} s to arrive",
                      {"Connection": "close"}) from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Refused(400, f"the body is not UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise Refused(400, "the body is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, NaN/Infinity, an integer of > 4300 digits
        raise Refused(400, f"the body is not JSON: {err}") from None


async def _read(request: Request, cap: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise Refused(413, f"a request may hold at most {cap:,} bytes", {"Connection": "close"})
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")
