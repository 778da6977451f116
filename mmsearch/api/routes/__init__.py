"""The HTTP API, one module per resource, each an ``APIRouter``; ``create_app`` includes ``ROUTERS``.

Handlers only translate HTTP to the engine calls the CLI makes; they reach the shared ``Service``
through the ``ServiceDep`` dependency, and leave error statuses to ``mmsearch.api.errors``."""

from __future__ import annotations

from fastapi import APIRouter

from mmsearch.api.routes import atlas, duplicates, embed, items, jobs, search, service

ROUTERS: list[APIRouter] = [service.router, search.router, embed.router, items.router, duplicates.router, atlas.router,
                             jobs.router]

__all__ = ["ROUTERS"]
