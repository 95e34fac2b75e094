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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx2
import structlog
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.context import Secret, bearer_token

log = structlog.get_logger("upstream")

EMBEDDED_URL = "http://upstream.embedded"
EMBEDDED_ANYTHING = EMBEDDED_URL + "/anything"
HTTP_TIMEOUT = httpx2.Timeout(30, read=300)


@dataclass(frozen=True)
class Caller:
    """Whom a valid token speaks for, as the upstream sees it."""

    subject: str
    client_id: str
    actor: str | None = None  # RFC 8693 `act`: a service acting for the subject


class Rejected(Exception):
    """The verifier's reason to refuse a token; it must not quote the token."""


Verifier = Callable[[str], Awaitable[Caller]]


class UpstreamReply(BaseModel):
    """What the upstream API received, as it reported it back."""

    mode: str
    status: int
    credential_seen: str  # fingerprint of the bearer token that reached the upstream
    caller_seen: str  # whom the upstream believed it was serving
    message: str


def build_upstream_app(verify: Verifier) -> Starlette:
    async def anything(request: Request) -> JSONResponse:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return JSONResponse({"error": "missing bearer token"}, status_code=401)
        try:
            caller = await verify(token.reveal())
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
                "caller": {"subject": caller.subject, "client_id": caller.client_id, "actor": caller.actor},
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


async def send_message(url: str, embedded: Starlette, credential: Secret, message: str, mode: str) -> UpstreamReply:
    """POST a message to the upstream with `credential`, and report what the upstream saw (fingerprints only)."""
    async with upstream_client(url, embedded) as http:
        response = await http.post(
            url, json={"message": message}, headers={"Authorization": f"Bearer {credential.reveal()}"}
        )
    if response.status_code != 200:
        raise ToolError(f"The upstream refused the call (HTTP {response.status_code}): {response.text[:200]}")
    seen = response.json()
    caller = seen.get("caller") or {}
    actor = f", actor {caller['actor']}" if caller.get("actor") else ""
    who = f"{caller.get('subject', 'unknown')} (client {caller.get('client_id', 'unknown')}{actor})"
    return UpstreamReply(
        mode=mode,
        status=response.status_code,
        credential_seen=Secret(seen["headers"]["authorization"].removeprefix("Bearer ")).fingerprint(),
        caller_seen=who,
        message=(seen.get("json") or {}).get("message", ""),
    )
