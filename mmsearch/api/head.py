"""HEAD on every GET route: monitors, link checkers and caches ask it of ``/healthz`` or
``/stats``, and RFC 9110 says a server should answer it wherever it answers GET. FastAPI's routes
answer only the methods they name, so a route without a HEAD of its own (the media and thumbnail
routes have one, which reads no file) is answered here as its GET, with the headers and no body."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """A HEAD the routes refuse (405) is asked again as GET; its body is dropped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        refused = False

        async def unless_refused(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 405:
                refused = True
            if not refused:
                await send(message)

        await self.app(scope, receive, unless_refused)
        if not refused:
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
