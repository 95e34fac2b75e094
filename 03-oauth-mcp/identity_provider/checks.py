"""What the authorization server checks in a request before the OAuth work starts, and how it says no.

Each endpoint of `endpoints.py` and `sign_in.py` runs some of these first:
parameters sent twice, credentials that do not even parse, too many attempts
from one address or for one client, and clients known by the URL of a
metadata document that cannot be used.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections import deque
from collections.abc import Sequence
from urllib.parse import unquote

import structlog
from starlette.responses import JSONResponse, Response

from identity_provider.client_metadata import ClientMetadataDocuments, ClientMetadataError, looks_like_metadata_url
from identity_provider.oauth_store import Store

log = structlog.get_logger("authorization-server")


class RateLimit:
    """At most `limit` events per key in any `window` seconds: enough for people, too few for a script.

    Keys whose events have all aged out are dropped, in a sweep whenever the
    table has doubled since the last one: a script that sends a new client_id
    each time must not grow it without end.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.events: dict[str, deque[float]] = {}
        self.sweep_at = 1024

    def count(self, key: str) -> int:
        events = self.events.get(key)
        if events is None:
            return 0
        now = time.monotonic()
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self.events[key]
        return len(events)

    def exceeded(self, key: str) -> bool:
        return self.count(key) >= self.limit

    def add(self, key: str) -> None:
        self.count(key)
        self.events.setdefault(key, deque()).append(time.monotonic())
        if len(self.events) >= self.sweep_at:
            for stale in list(self.events):
                self.count(stale)
            self.sweep_at = max(1024, 2 * len(self.events))


def too_many(window: float) -> JSONResponse:
    body = {"error": "slow_down", "error_description": "too many requests; try again later"}
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(int(window))})


def repeated_parameter(items: Sequence[tuple[str, object]]) -> str | None:
    """The first parameter sent twice: RFC 6749 §3.1 makes such a request invalid, whatever the values."""
    seen: set[str] = set()
    for key, _ in items:
        if key in seen:
            return key
        seen.add(key)
    return None


def invalid_request(description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": "invalid_request", "error_description": description}, status_code=status)


def same_text(expected: str, given: str) -> bool:
    """Constant-time comparison of any two strings (`hmac.compare_digest` refuses non-ASCII `str`)."""
    return hmac.compare_digest(expected.encode(), given.encode())


def basic_credentials(header: str) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1 Basic credentials, or `None` if the header is not Basic; `ValueError` if malformed."""
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip().encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error):
        raise ValueError("malformed Basic credentials") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise ValueError("malformed Basic credentials")
    return unquote(client_id), unquote(secret)


async def unusable_client_metadata(
    documents: ClientMetadataDocuments, store: Store, client_id: str | None
) -> Response | None:
    """Fetch and check the document of a client known by URL; an error page if it cannot be used.

    No redirect on failure: until the document is checked, its redirect
    URIs are not trusted.
    """
    if client_id is None or not looks_like_metadata_url(client_id) or store.get_client(client_id):
        return None
    try:
        await documents.resolve(client_id)
    except ClientMetadataError as exc:
        log.warning("client metadata document refused", reason=str(exc))
        return JSONResponse({"error": "invalid_client", "error_description": str(exc)}, status_code=400)
    except ValueError:  # a URL that does not parse (`[::1`), or a host IDNA refuses: not a URL at all
        log.warning("client metadata document refused", reason="client_id is not a URL")
        return JSONResponse({"error": "invalid_client", "error_description": "client_id is not a URL"}, 400)
    return None
