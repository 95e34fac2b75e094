"""A stand-in for the third-party HTTP API that MCP tools call: httpbin's `/anything`, offline.

It answers like httpbin (the method, URL, headers and JSON body it received)
so a tool written against it also works against the real httpbin.org. Unlike
httpbin it checks the bearer token as a real API would, with a verifier the
module supplies, answers 401 to a token that is not for it, and reports
whom it believes it is serving in `caller`. It logs only a token's
fingerprint.

Modules run it in-process by default (`upstream_client`), so the
workshop needs no network; `--upstream-url` points them at a real one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx2
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.context import bearer_token

log = structlog.get_logger("upstream")

EMBEDDED_URL = "http://upstream.embedded"
EMBEDDED_ANYTHING = EMBEDDED_URL + "/anything"
HTTP_TIMEOUT = httpx2.Timeout(30, read=300)


@dataclass(frozen=True)
class Caller:
    """Whom a valid token speaks for, as the upstream sees it."""

    subject: str
    client_id: str


class Rejected(Exception):
    """The verifier's reason to refuse a token; it must not quote the token."""


Verifier = Callable[[str], Caller]


def build_upstream_app(verify: Verifier) -> Starlette:
    async def anything(request: Request) -> JSONResponse:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return JSONResponse({"error": "missing bearer token"}, status_code=401)
        try:
            caller = verify(token.reveal())
        except Rejected as exc:
            log.warning("upstream refused a token", reason=str(exc), credential=token.fingerprint())
            return JSONResponse({"error": f"invalid token: {exc}"}, status_code=401)
        body = await request.body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        log.info("upstream request", caller=caller.subject, client_id=caller.client_id, credential=token.fingerprint())
        return JSONResponse(
            {
                "method": request.method,
                "url": str(request.url),
                "args": dict(request.query_params),
                "headers": dict(request.headers),
                "data": body.decode(errors="replace"),
                "json": parsed,
                "caller": {"subject": caller.subject, "client_id": caller.client_id},
            }
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(
        routes=[
            Route("/anything", anything, methods=methods),
            Route("/anything/{rest:path}", anything, methods=methods),
        ]
    )


def upstream_client(url: str, embedded: Starlette) -> httpx2.AsyncClient:
    """An HTTP client for `url`: real HTTP over the network, or to the embedded app (without a socket)."""
    if url.startswith(EMBEDDED_URL):
        return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=embedded), timeout=HTTP_TIMEOUT)
    return httpx2.AsyncClient(timeout=HTTP_TIMEOUT)
