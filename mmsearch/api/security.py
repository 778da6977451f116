"""Who may write, how much a request may send, and where the server may listen."""

from __future__ import annotations

import hmac
import ipaddress
import json
from http import HTTPStatus
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmsearch.errors import MMSearchError
from mmsearch.settings import Settings

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small form fields beside the file

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Needed for writes (indexing, deleting) when the server has a key.")
bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token (same as X-API-Key).")


class UnsafeBind(MMSearchError):
    """Writes open to the network with no key."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, settings: Settings, *, read_only: bool = False) -> None:
    """Refuse to serve unauthenticated writes beyond this machine."""
    if read_only or settings.api_key or is_loopback(host):
        return
    raise UnsafeBind(
        f"refusing to listen on {host} with writes (indexing, deleting) open to anyone: set an API key "
        "with --api-key or MMSEARCH_API_KEY, or pass --read-only, or listen on 127.0.0.1")


def require_writer(
    request: Request,
    key: Annotated[str | None, Security(api_key_header)] = None,
    token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> None:
    """Dependency of every write: read-only servers refuse, keyed servers check the key."""
    service = request.app.state.service
    if service.read_only:
        raise HTTPException(403, "this server is read-only (started with --read-only)")
    expected = service.settings.api_key
    if not expected:
        return
    given = key or (token.credentials if token else None)
    if not given:
        raise HTTPException(401, "this endpoint needs the API key, in an X-API-Key header",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode()):
        raise HTTPException(403, "wrong API key")


class PayloadTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes (max_upload_bytes)")


class BodyLimit:
    """Refuse bodies over the limit: at once from Content-Length, else while they stream in,
    before more than the limit is read (a chunked upload cannot slip past)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, PayloadTooLarge(self.limit).detail)
            return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self.limit)
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except PayloadTooLarge as e:  # raised outside a route, e.g. while a form streams in
            if not started:
                await _send_json(send, 413, e.detail)


class SecurityHeaders:
    """No sniffing, no framing; the page loads nothing from elsewhere."""

    CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                         (b"x-frame-options", b"DENY")]
                if scope["path"] not in ("/docs", "/redoc"):
                    extra.append((b"content-security-policy", self.CSP.encode()))
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


async def _send_json(send: Send, status: int, detail: str) -> None:
    """An RFC 9457 problem, as mmsearch.api.errors.problem writes it (outside any route here)."""
    body = json.dumps({"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                       "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
