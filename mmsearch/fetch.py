"""A query picture or sound given as an http(s) URL (``search --image URL``): fetched with a
timeout and a size cap, so a slow or huge answer is an error, never a hang or a full memory.
Only the command line fetches: the HTTP service takes uploads, and never fetches a URL a client
names (it could reach addresses the client cannot)."""

from __future__ import annotations

import urllib.error
import urllib.request

from mmsearch import __version__
from mmsearch.errors import BadInput


def is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def read_url(url: str, max_bytes: int, timeout: float) -> bytes:
    """The body at ``url``; BadInput with the reason when it cannot be had within the limits."""
    request = urllib.request.Request(url, headers={"User-Agent": f"mmsearch/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise BadInput(f"{url}: {int(declared):,} bytes, over the limit of {max_bytes:,} (max_upload_bytes)")
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise BadInput(f"{url}: the server answered {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise BadInput(f"{url}: cannot fetch it ({e.reason})") from None
    except TimeoutError:
        raise BadInput(f"{url}: no answer within {timeout:g} s (url_timeout)") from None
    except OSError as e:
        raise BadInput(f"{url}: cannot fetch it ({e})") from None
    if len(data) > max_bytes:
        raise BadInput(f"{url}: over the limit of {max_bytes:,} bytes (max_upload_bytes)")
    return data
