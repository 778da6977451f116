"""What the route modules share: the app's ``Service`` as a dependency, and the item id parameter."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam

from mmsearch.api.schemas import MAX_ID
from mmsearch.api.service import Service
from mmsearch.errors import BadInput


async def get_service(request: Request) -> Service:
    """The one ``Service`` of the app serving this request (async, so no thread hop per request)."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
ItemIdPath = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Item id, from search results.")]


def require_audio(service: Service, what: str) -> None:
    """A 400 that says why, rather than a query that cannot run on a server started without CLAP."""
    engine = service.engine()
    if not engine.encoders.enabled("clap"):
        raise BadInput(f"{what} needs audio, which is off on this server: {service.audio_off}")
