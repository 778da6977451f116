"""Errors a user can act on. Each face (CLI, HTTP, Python) maps them to its own form:
an exit code and a message, a 4xx with a reason, or the exception itself."""

from __future__ import annotations


class MMSearchError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ModelUnavailable(MMSearchError):
    """The weights for a model spec cannot be loaded (offline, missing file, bad tag)."""


class ModelMismatch(MMSearchError):
    """The catalog was built with another model than the one asked for."""


class BadInput(MMSearchError, ValueError):
    """A query, spec or file the engine cannot use (also a ValueError, as Python callers expect
    of a bad argument)."""


class NotFound(MMSearchError):
    """An item, file or catalog that does not exist."""


class CatalogDamaged(MMSearchError):
    """The catalog database is corrupt: restore a backup, or move the catalog away and index again."""
